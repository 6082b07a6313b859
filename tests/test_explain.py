"""`check-config --explain PATH` tells which pipeline takes a file, or why none does (issue 24),
from the watcher's own filter and file checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import write_config

from watcher.cli import EXIT_NOT_FOUND, EXIT_OK, main

pytestmark = pytest.mark.usefixtures("api_keys")
UNUSED_API = "http://127.0.0.1:9/deployment/api/org/api/"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """Pipeline "docs" watches drop/ (drafts/ excluded); "flat" watches flat/ alone."""
    written = write_config(
        tmp_path, UNUSED_API, f"sqlite:///{tmp_path / 'state.db'}", {"exclude": ["drafts/"]}
    )
    (tmp_path / "flat" / "sub").mkdir(parents=True)
    flat = f'\n[[pipelines]]\nname = "flat"\nwatch_dir = "{tmp_path / "flat"}"\nrecursive = false\n'
    api = f'\n[pipelines.api]\nurl = "{UNUSED_API}"\napi_key = "k"\n'
    written.write_text(written.read_text() + flat + api)
    drop = tmp_path / "drop"
    (drop / "drafts").mkdir()
    for name in ("a.pdf", "notes.xml", "drafts/b.pdf", "~$c.docx"):
        (drop / name).write_bytes(b"x")
    (drop / "link.pdf").symlink_to(tmp_path / "state.db")
    os.mkfifo(drop / "pipe.pdf")
    (tmp_path / "flat" / "sub" / "d.pdf").write_bytes(b"x")
    written.chmod(0o600)
    return written


@pytest.mark.parametrize(
    ("path", "docs", "flat"),
    [
        ("drop/a.pdf", "takes it", "not taken: outside its watch_dir"),
        ("drop/notes.xml", "not taken: not matched by any include pattern", "not taken: outside"),
        (
            "drop/drafts/b.pdf",
            "not taken: in the folder 'drafts': excluded by pattern 'drafts/'",
            "",
        ),
        ("drop/~$c.docx", "not taken: a hidden, temporary or system file (built-in rule)", ""),
        ("drop/link.pdf", "not taken: symlink that leads out of watch_dir", ""),
        ("drop/pipe.pdf", "not taken: not a regular file", ""),
        ("drop/gone.pdf", "not taken: no such file", ""),
        (
            "flat/sub/d.pdf",
            "not taken: outside its watch_dir",
            "not taken: in a subfolder, and recursive = false",
        ),
    ],
)
def test_explain_says_which_pipeline_takes_a_file_or_why_none_does(
    config: Path, capsys: pytest.CaptureFixture[str], path: str, docs: str, flat: str
) -> None:
    target = config.parent / path
    code = main(["check-config", "--config", str(config), "--explain", str(target)])
    out = capsys.readouterr().out.splitlines()
    at = out.index(f"{target}:")
    assert out[at + 1].startswith(f'  pipelines[0] ("docs"): {docs}'), out
    assert out[at + 2].startswith(f'  pipelines[1] ("flat"): {flat}'), out
    assert code == (EXIT_OK if docs == "takes it" else EXIT_NOT_FOUND)
