"""The mode of result, error and side files: `result_file_mode`, as given, whatever the umask."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from harness import deployment_url, run_once, write_config
from test_output import job, placement

from watcher.cli import EXIT_CONFIG, main
from watcher.emulator import EmulatorServer
from watcher.llmwhisperer import LLMWhispererResults
from watcher.output import write_result


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("configured", "expected"), [(None, 0o640), ("0604", 0o604)], ids=["default", "0604"]
)
def test_result_and_error_files_get_the_configured_mode(
    tmp_path: Path, server: EmulatorServer, db_url: str, configured: str | None, expected: int
) -> None:
    keys = {} if configured is None else {"result_file_mode": configured}
    config = write_config(tmp_path, deployment_url(server), db_url, pipeline=keys)
    (tmp_path / "drop" / "a.txt").write_bytes(b"Invoice 1\n")
    (tmp_path / "drop" / "bad.txt").write_bytes(b"EMULATOR-FAIL")
    done = run_once(config, umask=0o077)  # would take every bit but the owner's
    assert done.returncode == 1, done.stderr  # bad.txt failed
    assert mode_of(tmp_path / "drop" / "a.txt.json") == expected
    assert mode_of(tmp_path / "drop" / "bad.txt.error.json") == expected


def test_side_files_get_the_mode_too(tmp_path: Path) -> None:
    body = {"result_text": "the text", "metadata": {}}
    written = write_result(
        job(result_body=body),
        placement(tmp_path, result_mode=0o604),
        LLMWhispererResults(write_text_file=True),
    )
    assert mode_of(written) == 0o604
    assert mode_of(written.with_name("a.pdf.txt")) == 0o604


@pytest.mark.parametrize("bad", ["640x", "0o640", "0800", "1777", "rw-r-----"])
def test_a_mode_that_is_not_octal_exits_2_naming_the_key(
    tmp_path: Path,
    server: EmulatorServer,
    sqlite_url: str,
    bad: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(
        tmp_path, deployment_url(server), sqlite_url, pipeline={"result_file_mode": bad}
    )
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert '("docs").result_file_mode' in err and "write it in octal" in err
