"""The alerting rules in deploy/prometheus (issue 30), checked and unit-tested by the real
promtool (Debian: prometheus). Without promtool these tests fail, never skip."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = RULES_DIR / "unstract-watcher-rules.yml"
RULE_TESTS = RULES_DIR / "unstract-watcher-rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/run installs it)")
    return subprocess.run([found, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60)


def test_the_rules_are_valid() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_each_alert_fires_on_its_trouble_and_stays_quiet_on_healthy_series() -> None:
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_with_what_to_do() -> None:
    """promtool compares the annotations of every alert expected to fire, so an alert with a
    test that fires is checked for its summary, description and runbook too."""
    alerts = re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.MULTILINE)
    rules = RULES.read_text().split("- alert: ")[1:]
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n", RULE_TESTS.read_text()))
    assert len(alerts) >= 11 and set(alerts) <= firing
    for rule in rules:
        for annotation in ("summary:", "description:", "runbook:"):
            assert annotation in rule, f"{rule.splitlines()[0]} has no {annotation}"
        assert "$labels.pipeline" in rule or "$labels.instance" in rule, rule.splitlines()[0]


def test_the_rules_install_as_the_readme_says(tmp_path: Path) -> None:
    """A Prometheus config as the README gives it loads, rules file included, unchanged."""
    shutil.copy(RULES, tmp_path / RULES.name)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"rule_files: [{RULES.name}]\n"
        "scrape_configs:\n"
        "  - job_name: unstract-watcher\n"
        '    static_configs: [{targets: ["127.0.0.1:9464"]}]\n'
    )
    checked = promtool("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout, checked.stdout


def test_every_runbook_points_at_a_docs_section_that_exists() -> None:
    """A runbook names a page of docs/ and its headings in quotes, and after a colon the
    start of a bullet of 'What happens when...': renaming either breaks the pointer, and this
    test."""
    root = RULES_DIR.parent.parent
    runbooks = re.findall(r'runbook: "(.+)"$', RULES.read_text(), re.MULTILINE)
    assert len(runbooks) >= 11
    for runbook in runbooks:
        for pointer in runbook.split("; "):
            page, _, sections = pointer.removeprefix("exit codes: ").partition(", ")
            text = (root / page).read_text()
            headings = set(re.findall(r"^#+ (.+)$", text, re.MULTILINE))
            bullets = re.findall(r"^- \*\*(.+?)\*\*", text, re.MULTILINE)
            for section in re.findall(r"'([^']+)'", sections):
                assert section in headings, runbook
            case = sections.partition("': ")[2]
            assert not case or any(b.startswith(case) for b in bullets), runbook
