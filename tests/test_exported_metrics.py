"""Every metric the alerting rules and the Grafana dashboard use is exported by a running
daemon, with the labels (and label values) they select on (issue 30).

promtool cannot list the metrics of a rule, so a small PromQL tokenizer does: metric names,
the labels of their selectors and of the `by (...)` of every aggregation around them.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from harness import daemon_command, deployment_url, environment, wait_for, write_config
from receiver import Receiver

from watcher.emulator import EmulatorServer, demo_emulator
from watcher.metrics import PREFIX

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "unstract-watcher-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "unstract-watcher.json"
SCRAPE_LABELS = {"instance", "job"}  # added by Prometheus when it scrapes
NOT_OURS = {"up"}  # Prometheus's own series about the scrape
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[[^\]]*\]|[A-Za-z_:][\w:]*|=~|!=|!~|\S')
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset"}


@dataclass
class Use:
    """A metric as an expression uses it: the labels it must have, and values it selects."""

    metric: str
    labels: set[str] = field(default_factory=set)
    values: dict[str, set[str]] = field(default_factory=dict)


def metric_uses(expr: str) -> list[Use]:
    """Each metric an expression names, with the labels of its selector and of the `by`
    lists of the aggregations around it (`sum by (l) (...)`, the form the files use)."""
    tokens = TOKEN.findall(expr)
    uses: list[Use] = []
    frames: list[set[str]] = []  # the `by` labels of each open parenthesis
    pending: set[str] = set()  # a `by (...)` just read: it applies to the next parenthesis
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token in GROUPING:
            labels, index = _label_list(tokens, index + 1)
            pending = labels if token == "by" else set()
            continue
        if token == "(":
            frames.append(pending)
            pending = set()
        elif token == ")":
            frames.pop()
        elif _is_metric(token, following):
            use = Use(token, set().union(*frames) if frames else set())
            if following == "{":
                index = _selector(tokens, index + 2, use)
            uses.append(use)
        index += 1
    return uses


def _is_metric(token: str, following: str) -> bool:
    named = token.startswith(PREFIX) or token in NOT_OURS
    return named and following != "(" and token not in KEYWORDS


def _label_list(tokens: list[str], index: int) -> tuple[set[str], int]:
    """The labels of `(a, b)` starting at tokens[index]; returns them and the index after."""
    assert tokens[index] == "(", tokens[index:]
    end = tokens.index(")", index)
    return {t for t in tokens[index + 1 : end] if t != ","}, end + 1


def _selector(tokens: list[str], index: int, use: Use) -> int:
    """Read `label op "value", ...}` into `use`; returns the index of the closing brace."""
    while tokens[index] != "}":
        label, op, quoted = tokens[index : index + 3]
        use.labels.add(label)
        value = json.loads(quoted)
        if op == "=":
            use.values.setdefault(label, set()).add(value)
        elif op == "=~" and re.fullmatch(r"[\w|]+", value):  # a list of alternatives
            use.values.setdefault(label, set()).update(value.split("|"))
        index += 4 if tokens[index + 3] == "," else 3
    return index


def rule_expressions(text: str) -> list[str]:
    """The `expr:` of every rule in a rules file, folded (`>-`) or on one line."""
    exprs: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        found = re.match(r"(\s*)expr:\s*(.*)$", line)
        if found is None:
            continue
        indent, rest = len(found.group(1)), found.group(2)
        if rest not in (">-", ">", "|", "|-"):
            exprs.append(rest)
            continue
        body = []
        for following in lines[number + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following.strip())
        exprs.append(" ".join(body))
    return exprs


def dashboard_expressions(node: Any) -> Iterator[str]:
    """Every PromQL query of a dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from dashboard_expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_expressions(item)


def used() -> list[tuple[str, Use]]:
    """(where, use) for every metric use in the rules and the dashboard."""
    found = [("rules", use) for e in rule_expressions(RULES.read_text()) for use in metric_uses(e)]
    dashboard = json.loads(DASHBOARD.read_text())
    found += [("dashboard", u) for e in dashboard_expressions(dashboard) for u in metric_uses(e)]
    return found


def exported(page: str) -> dict[str, list[dict[str, str]]]:
    """A /metrics page: sample name -> the label sets of its samples."""
    samples: dict[str, list[dict[str, str]]] = {}
    for line in page.splitlines():
        found = re.match(r"([\w:]+)(?:\{(.*)\})? ", line)
        if found is None or line.startswith("#"):
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found.group(2) or ""))
        samples.setdefault(found.group(1), []).append(labels)
    return samples


def missing(uses: list[tuple[str, Use]], page: str) -> list[str]:
    """What the page lacks of the uses: a metric, a label, or a label value selected on."""
    samples = exported(page)
    lacking = []
    for where, use in uses:
        if use.metric in NOT_OURS:
            continue
        label_sets = samples.get(use.metric, [])
        wanted = use.labels - SCRAPE_LABELS
        if not any(wanted <= set(labels) for labels in label_sets):
            lacking.append(f"{where}: {use.metric} with labels {sorted(wanted)}")
        for label, values in use.values.items():
            if label in SCRAPE_LABELS:
                continue
            seen = {labels.get(label) for labels in label_sets}
            lacking += [f"{where}: {use.metric}{{{label}={v!r}}}" for v in values - seen]
    return sorted(set(lacking))


def notices(page: str) -> str:
    return "\n".join(line for line in page.splitlines() if "notices_total{" in line)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_tokenizer_finds_metrics_with_their_selectors_and_groupings() -> None:
    expr = (
        'sum by (pipeline) (max by (pipeline, state) (unstract_watcher_documents{state=~"a|b"}))'
        " > 0 unless on (pipeline) sum by (pipeline) (increase(unstract_watcher_results_total"
        '{outcome="failed", pipeline=~"$pipeline"}[30m])) > 0 and up{job="x"} == 0'
    )
    found = [(u.metric, u.labels, u.values) for u in metric_uses(expr)]
    assert found == [
        (
            "unstract_watcher_documents",
            {"pipeline", "state"},
            {"state": {"a", "b"}},
        ),
        (
            "unstract_watcher_results_total",
            {"pipeline", "outcome"},
            {"outcome": {"failed"}},
        ),
        ("up", {"job"}, {"job": {"x"}}),
    ]
    assert [u.metric for u in metric_uses("label_values(unstract_watcher_paused, pipeline)")] == [
        "unstract_watcher_paused"
    ]


def test_the_rules_and_the_dashboard_use_many_metrics() -> None:
    """A guard on the parsing itself: were it to find nothing, nothing would be checked."""
    names = {use.metric for where, use in used() if where == "rules"}
    assert len(names) >= 10, names
    names = {use.metric for where, use in used() if where == "dashboard"}
    assert len(names) >= 18, names


def test_every_metric_of_the_rules_and_the_dashboard_is_exported(tmp_path: Path) -> None:
    """A real daemon (its own process) against the emulator over loopback: documents that
    succeed, one that fails, an upload and a poll answered 500 (retries), more executions
    than the API allows at once (429s), notices to a receiver that is down, then up; its
    /metrics must hold every metric, label and selected label value the rules and the
    dashboard use."""
    emulator = demo_emulator(execution_seconds=0.3, org_limit=2)
    emulator.set_faults(post_error_before_create=1, get_error=1)
    receiver = Receiver()  # down at first: the notices' first tries fail
    port = free_port()
    with EmulatorServer(emulator, host="127.0.0.1", port=0) as server:
        config = write_config(
            tmp_path,
            deployment_url(server),
            f"sqlite:///{tmp_path / 'state.db'}",
            api={"include_metadata": True, "max_in_flight": 6},
        )
        config.write_text(
            config.read_text()
            + f'\n[metrics]\nenabled = true\nport = {port}\n\n[notify]\nwebhook_url = "{receiver.url}"\n'
        )
        for index in range(6):
            (tmp_path / "drop" / f"{index}.txt").write_bytes(b"document %d" % index)
        (tmp_path / "drop" / "bad.txt").write_bytes(b"EMULATOR-FAIL")
        log = tmp_path / "daemon.log"  # a file, not a pipe nobody reads while we wait
        with log.open("w") as stderr:
            process = subprocess.Popen(
                daemon_command(config, once=False), env=environment(), stderr=stderr
            )
        uses, page, up = used(), [""], []

        def all_exported() -> bool:
            try:
                page[0] = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            except httpx.TransportError:  # not listening yet
                return process.poll() is not None
            if 'outcome="failed"' in notices(page[0]) and not up:
                receiver.up()  # and now they are sent
                up.append(True)
            return not missing(uses, page[0])

        try:
            wait_for(all_exported, timeout=60, what="every metric the rules and panels use")
        except AssertionError:
            pass  # the assertion below says what is missing
        finally:
            process.terminate()
            process.wait(timeout=30)
    receiver.down()
    lacking = missing(uses, page[0])
    assert not lacking, "not exported:\n" + "\n".join(lacking) + "\n" + log.read_text()[-1500:]
    assert process.returncode == 0, log.read_text()[-3000:]
