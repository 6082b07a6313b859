"""What a new operator meets first: config messages, check-config, the demo's hint, the CLI's
words for a refused connection and a refused key (issue 15)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from harness import KEY_ENV, api_key, deployment_url, running_daemon, write_config
from pydantic import SecretStr

from watcher.backend import Upload
from watcher.cli import EXIT_CONFIG, main
from watcher.commands import ERROR_WIDTH
from watcher.emulator import (
    DEMO_API,
    DEMO_KEY,
    DEMO_ORG,
    LLMW_DEMO_KEY,
    EmulatorServer,
    UnstractEmulator,
    llmwhisperer_demo_emulator,
    llmwhisperer_url,
    mount_llmwhisperer,
)
from watcher.emulator.results import FAIL_MARKER
from watcher.llmwhisperer import LLMWhispererClient
from watcher.unstract import UnstractClient


def two_pipelines(tmp_path: Path, scans_api: str) -> Path:
    """A config with pipelines "docs" (Unstract, key from KEY_ENV) and "scans" (its api table
    given as TOML lines)."""
    config = write_config(
        tmp_path, "http://127.0.0.1:9/deployment/api/org/api/", f"sqlite:///{tmp_path / 'state.db'}"
    )
    (tmp_path / "scans").mkdir(exist_ok=True)
    config.write_text(
        config.read_text()
        + f"""
[[pipelines]]
name = "scans"
watch_dir = "{tmp_path / "scans"}"

[pipelines.api]
{scans_api}
"""
    )
    return config


def check_config(config: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = main(["check-config", "--config", str(config), *flags])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.usefixtures("api_keys")
def test_an_unreadable_key_file_names_the_key_and_the_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "folder.key").mkdir()
    config = two_pipelines(
        tmp_path,
        f'kind = "llmwhisperer"\nurl = "http://127.0.0.1:9/api/v2"\n'
        f'api_key_file = "{tmp_path / "folder.key"}"',
    )
    code, out = check_config(config, capsys)
    assert code == EXIT_CONFIG
    assert (
        f'pipelines[1] ("scans").api.api_key_file: cannot read the key file '
        f"{tmp_path / 'folder.key'}: Is a directory"
    ) in out
    assert "Traceback" not in out


def test_check_config_reports_every_problem_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    config = two_pipelines(
        tmp_path,
        'kind = "llmwhisperer"\nurl = "http://127.0.0.1:9/api/v2"\n'
        'api_key_env = "NO_SUCH_KEY_VARIABLE"\nmod = "form"',
    )
    text = config.read_text().replace(str(tmp_path / "drop"), str(tmp_path / "no-such-folder"))
    config.write_text(text.replace("settle_seconds", "settle_secs"))
    code, out = check_config(config, capsys)
    assert code == EXIT_CONFIG
    assert 'pipelines[0] ("docs").settle_secs: unknown key' in out  # a typo ...
    assert f'pipelines[0] ("docs").watch_dir: {tmp_path / "no-such-folder"} does not exist' in out
    assert 'pipelines[1] ("scans").api.mod: unknown key' in out  # ... hides nothing else
    assert 'pipelines[0] ("docs").api.api_key_env: environment variable' in out
    config.write_text(text.replace("mod =", "mode ="))  # only the environment is wrong now
    code, out = check_config(config, capsys)
    assert code == EXIT_CONFIG and "does not exist" in out
    assert 'pipelines[0] ("docs").api.api_key_env: environment variable TEST_UNSTRACT' in out
    assert 'pipelines[1] ("scans").api.api_key_env: environment variable NO_SUCH_KEY' in out


def closed_port() -> int:
    """A loopback port where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_is_logged_as_such(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/deployment/api/org_demo/invoices/"
    config = write_config(
        tmp_path,
        url,
        f"sqlite:///{tmp_path / 'state.db'}",
        api={"max_attempts": 1, "outage_grace_seconds": 1.0},
    )
    (tmp_path / "drop" / "a.txt").write_bytes(b"never reaches the API")
    done = subprocess.run(
        [sys.executable, "-m", "watcher.cli", "run", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, KEY_ENV: api_key()},
    )
    assert done.returncode == 75, done.stderr  # an outage: the document waits for the API
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    said = [line for line in lines if line.get("pipeline") == "docs" and "reason" in line]
    assert said and all("refused by the API" not in line["event"] for line in said)
    assert said[0]["reason"] == "could not reach the API: connection refused"
    assert "pipeline docs paused: the API is unreachable since" in done.stderr
    assert "ConnectError" not in done.stderr
    assert not (tmp_path / "drop" / "a.txt.error.json").exists()  # not the document's fault
    (row,) = json.loads(cli(config, "jobs", "list", "--json").stdout)
    assert (row["state"], row["attempts"]) == ("queued", 0)


def test_emulator_help_tells_the_demo_keys_and_how_to_make_a_document_fail(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["emulator", "--help"])
    shown = capsys.readouterr().out
    assert DEMO_KEY in shown and LLMW_DEMO_KEY in shown
    assert f"/deployment/api/{DEMO_ORG}/{DEMO_API}/" in shown and "/api/v2" in shown
    assert "EMULATOR-FAIL" in shown and "/_emulator/faults" in shown


def test_a_refused_key_reads_the_same_for_both_apis(server: EmulatorServer) -> None:
    mount_llmwhisperer(server, llmwhisperer_demo_emulator())
    wrong = SecretStr("00000000-0000-4000-8000-000000000000")
    timeouts = {"connect_timeout": 5.0, "read_timeout": 5.0, "max_connections": 1}
    unstract = UnstractClient(
        deployment_url(server), wrong, tags=[], include_metadata=False, **timeouts
    )
    whisperer = LLMWhispererClient(llmwhisperer_url(server), wrong, options={}, **timeouts)
    upload = Upload("a.txt", b"text", "text/plain")
    reasons = [client.submit(upload).error for client in (unstract, whisperer)]
    reasons += [client.poll(str(uuid.uuid4()), "a.txt").error for client in (unstract, whisperer)]
    unstract.close()
    whisperer.close()
    assert all(reason.startswith("the API key was refused (HTTP 401") for reason in reasons), (
        reasons
    )


def online_config(tmp_path: Path, apis: dict[str, str]) -> Path:
    """One pipeline per entry: its name, and the TOML lines of its api table."""
    lines = [f'[database]\nurl = "sqlite:///{tmp_path / "state.db"}"']
    for name, api in apis.items():
        (tmp_path / name).mkdir(exist_ok=True)
        lines.append(
            f'[[pipelines]]\nname = "{name}"\nwatch_dir = "{tmp_path / name}"\n'
            f"[pipelines.api]\nconnect_timeout_seconds = 5\n{api}"
        )
    path = tmp_path / "config.toml"
    path.write_text("\n\n".join(lines) + "\n")
    return path


def test_check_config_online_proves_each_url_and_key_without_spending_anything(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whisperer = llmwhisperer_demo_emulator()
    mount_llmwhisperer(server, whisperer)
    monkeypatch.setenv("GOOD_KEY", DEMO_KEY)
    monkeypatch.setenv("WRONG_KEY", "00000000-0000-4000-8000-000000000000")
    monkeypatch.setenv("GOOD_LLMW_KEY", LLMW_DEMO_KEY)
    good_url = deployment_url(server)
    unreachable = f"http://127.0.0.1:{closed_port()}/deployment/api/{DEMO_ORG}/{DEMO_API}/"
    llmw = f'kind = "llmwhisperer"\nurl = "{llmwhisperer_url(server)}"'
    apis = {
        "good": f'url = "{good_url}"\napi_key_env = "GOOD_KEY"',
        "wrong-key": f'url = "{good_url}"\napi_key_env = "WRONG_KEY"',
        "wrong-deployment": f'url = "{server.deployment_url(DEMO_ORG, "nope")}"\napi_key_env = "GOOD_KEY"',
        "unreachable": f'url = "{unreachable}"\napi_key_env = "GOOD_KEY"',
        "scans": f'{llmw}\napi_key_env = "GOOD_LLMW_KEY"',
        "scans-wrong-key": f'{llmw}\napi_key_env = "WRONG_KEY"',
    }
    code, out = check_config(online_config(tmp_path, apis), capsys, "--online")
    assert code == EXIT_CONFIG
    said = {
        line.split('"')[1]: line
        for line in out.splitlines()
        if line.startswith("pipelines[") and " at http" in line
    }
    assert ": OK: the deployment answered and accepted the key" in said["good"]
    assert ": FAILED: the API key was refused (HTTP 401: Unauthorized)" in said["wrong-key"]
    assert ": FAILED: no API at this URL" in said["wrong-deployment"]
    assert "(HTTP 404: API not found)" in said["wrong-deployment"]
    assert ": FAILED: could not reach the API: connection refused" in said["unreachable"]
    assert ": OK: the service accepted the key (plan emulator" in said["scans"]
    assert ": FAILED: the API key was refused (HTTP 401" in said["scans-wrong-key"]
    assert DEMO_KEY not in out and LLMW_DEMO_KEY not in out
    assert emulator.stats().executions_created == 0 and emulator.stats().posts == 0
    assert whisperer.stats().posts == 0

    good = {name: apis[name] for name in ("good", "scans")}
    code, out = check_config(online_config(tmp_path, good), capsys, "--online")
    assert code == 0, out
    assert out.count(": OK: ") == 2


def test_the_demo_config_runs_as_its_first_lines_say(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    serving = subprocess.Popen(
        [sys.executable, "-m", "watcher.cli", "demo", "--serve", "--port", "0", "--dir", str(demo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert serving.stdout is not None
        said = ""
        while "Ctrl-C stops the emulator" not in said and serving.poll() is None:
            said += serving.stdout.readline()  # until the emulator is announced
        hint = (demo / "config.toml").read_text().splitlines()[:4]
        assert hint[0].startswith("# Written by `unstract-watcher demo`")
        assert "demo --serve --dir" in hint[1] and "--port" not in hint[1]
        run_line = hint[3].removeprefix("#   ")
        assert run_line in said  # the same line both places
        (demo / "inbox" / "new-invoice.txt").write_text("INVOICE 0003\nTotal: 7.00 EUR\n")
        env = {key: value for key, value in os.environ.items() if not key.startswith("DEMO_")}
        again = subprocess.run(
            ["bash", "-c", run_line], capture_output=True, text=True, timeout=60, env=env
        )
        assert again.returncode == 0, again.stderr[-2000:]
        result = json.loads((demo / "results" / "new-invoice.txt.json").read_text())
        assert result["status"] == "success"
    finally:
        serving.send_signal(signal.SIGINT)
        serving.communicate(timeout=30)
    assert serving.returncode == 0


def status_of(config: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "watcher.cli", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, KEY_ENV: api_key()},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.usefixtures("api_keys")
def test_status_labels_its_columns_and_says_whether_a_daemon_runs(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), db_url)
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    shown = status_of(config)
    header, row = shown.splitlines()[:2]
    assert header.split()[-1] == "paused" and row.split()[-1] == "no"
    assert "oldest queued (UTC)" in header and "running" not in row
    if db_url.startswith("sqlite"):  # a PostgreSQL database is shared with other tests' daemons
        assert "daemon: none is running on this database now" in shown
    with running_daemon(config):
        assert "running on this database now" in status_of(config)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, KEY_ENV: api_key()},
    )


def test_jobs_list_shows_whole_errors_on_request_and_no_upload_for_an_empty_file(
    tmp_path: Path, server: EmulatorServer
) -> None:
    config = write_config(tmp_path, deployment_url(server), f"sqlite:///{tmp_path / 'state.db'}")
    (tmp_path / "drop" / "an-invoice-of-march.txt").write_bytes(
        FAIL_MARKER + b": a document its execution fails"
    )
    (tmp_path / "drop" / "empty.txt").write_bytes(b"")
    assert cli(config, "run", "--once").returncode == 1
    whole = json.loads((tmp_path / "drop" / "an-invoice-of-march.txt.error.json").read_text())[
        "error"
    ]
    assert len(whole) > ERROR_WIDTH  # the list cuts it
    listed = cli(config, "jobs", "list").stdout
    assert whole not in listed and "--full shows them whole" in listed
    rows = {line.split()[6]: line.split() for line in listed.splitlines()[1:3]}
    assert (
        rows["empty.txt"][3] == "0" and rows["an-invoice-of-march.txt"][3] == "1"
    )  # the uploads column
    assert whole in cli(config, "jobs", "list", "--full").stdout
    empty = json.loads(cli(config, "jobs", "list", "--json").stdout)
    assert [(job["path"], job["attempts"]) for job in empty if job["size"] == 0] == [
        ("empty.txt", 0)
    ]
    assert json.loads((tmp_path / "drop" / "empty.txt.error.json").read_text())["attempts"] == 0


def test_run_once_progress_counts_the_folders_at_the_start_and_logs_go_above_it(
    tmp_path: Path, server: EmulatorServer
) -> None:
    config = write_config(
        tmp_path,
        deployment_url(server),
        f"sqlite:///{tmp_path / 'state.db'}",
        api={"max_in_flight": 2},
    )
    for index in range(12):
        (tmp_path / "drop" / f"{index}.txt").write_bytes(f"document {index}".encode())
    inner = f"{sys.executable} -m watcher.cli run --once --config {config} 2>&1"
    # `script` gives the command a pseudo-terminal, as an operator's shell would.
    done = subprocess.run(
        ["script", "-qec", inner, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, KEY_ENV: api_key()},
    )
    assert done.returncode == 0, done.stdout[-2000:]
    segments = [s for s in re.split(r"[\r\n]", done.stdout) if s.strip()]
    figures = [
        tuple(map(int, m.groups()))
        for s in segments
        if (m := re.search(r"documents:.*?\| *(\d+)/(\d+)", s))
    ]
    assert figures and {total for _, total in figures} == {12}  # the total from the start on
    counts = [count for count, _ in figures]
    assert counts == sorted(counts) and counts[-1] == 12  # never backwards
    logged = [s for s in segments if '{"' in s]
    assert any('"event": "submitted"' in s for s in logged)
    assert all(s.startswith("{") for s in logged), [s for s in logged if not s.startswith("{")][:3]
