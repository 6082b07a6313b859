"""Result files: names, contents, atomic replacement, and what happens to the source."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from watcher import output as output_module
from watcher.jobs import Job, JobState
from watcher.output import (
    TEMP_SUFFIX,
    Placement,
    dispose_source,
    remove_stale_temps,
    result_document,
    write_atomically,
    write_result,
)
from watcher.unstract import UnstractResults

UNSTRACT = UnstractResults()

BODY = {
    "status": "COMPLETED",
    "message": [
        {
            "file": "a.pdf",
            "status": "Success",
            "result": {"output": {"total": 5}},
            "metadata": {"source_name": "a.pdf"},
            "error": None,
        }
    ],
}


def job(**changes: Any) -> Job:
    values: dict[str, Any] = dict(
        id=7,
        pipeline="p",
        relative_path="sub/a.pdf",
        sha256="f" * 64,
        size=4,
        mtime_ns=1,
        state=JobState.RESULT_STORED,
        attempts=1,
        execution_id="e-1",
        poll_count=2,
        outcome="success",
        result_body=BODY,
        last_http_status=200,
        last_error="",
        lease_owner=None,
        created_at=0.0,
        submitted_at=0.0,
        updated_at=0.0,
    )
    values.update(changes)
    return Job(**values)


def placement(tmp_path: Path, **changes: Any) -> Placement:
    values: dict[str, Any] = dict(
        watch_dir=tmp_path / "drop", output_dir=None, after_success="keep", archive_dir=None
    )
    values.update(changes)
    return Placement(**values)


def test_the_result_document_carries_the_api_item_as_returned() -> None:
    document = result_document(job(), UNSTRACT)
    assert document == {
        "source": "sub/a.pdf",
        "sha256": "f" * 64,
        "size": 4,
        "status": "success",
        "backend": "unstract",
        "execution_id": "e-1",
        "result": {"output": {"total": 5}},
        "metadata": {"source_name": "a.pdf"},
        "error": None,
        "attempts": 1,
    }


def test_a_failure_document_says_why() -> None:
    document = result_document(job(outcome="failed", last_error="bad scan"), UNSTRACT)
    assert document["status"] == "failed" and document["error"] == "bad scan"


def test_results_go_beside_the_source_or_under_output_dir(tmp_path: Path) -> None:
    assert write_result(job(), placement(tmp_path), UNSTRACT) == tmp_path / "drop/sub/a.pdf.json"
    elsewhere = placement(tmp_path, output_dir=tmp_path / "out")
    failed = job(outcome="failed", last_error="x")
    assert write_result(failed, elsewhere, UNSTRACT) == tmp_path / "out/sub/a.pdf.error.json"


def test_a_result_file_is_indented_json_with_its_text_as_written(tmp_path: Path) -> None:
    body = json.loads(json.dumps(BODY))
    body["message"][0]["result"] = {
        "vendor": "Müller GmbH, Köln \u2013 Nord",
        "lines": [1, 2.5, None],
    }
    path = write_result(job(result_body=body), placement(tmp_path), UNSTRACT)
    text = path.read_text(encoding="utf-8")
    document = result_document(job(result_body=body), UNSTRACT)
    assert text == json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def test_an_integer_past_64_bits_is_written_all_the_same(tmp_path: Path) -> None:
    body = json.loads(json.dumps(BODY))
    body["message"][0]["result"] = {"id": 2**70}
    path = write_result(job(result_body=body), placement(tmp_path), UNSTRACT)
    assert json.loads(path.read_text())["result"] == {"id": 2**70}


def test_a_success_removes_an_older_error_file(tmp_path: Path) -> None:
    where = placement(tmp_path)
    error_file = write_result(job(outcome="failed", last_error="x"), where, UNSTRACT)
    assert error_file.exists()
    write_result(job(), where, UNSTRACT)
    assert not error_file.exists()
    assert json.loads((tmp_path / "drop/sub/a.pdf.json").read_text())["status"] == "success"


def test_an_interrupted_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "r.json"
    target.write_bytes(b"old")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_stale_temps_are_swept_and_nothing_else(tmp_path: Path) -> None:
    ours = tmp_path / f".uw.1a2b3c4d-0123456789ab{TEMP_SUFFIX}"
    theirs = tmp_path / ".editor.tmp"
    ours.write_bytes(b"x")
    theirs.write_bytes(b"y")
    assert remove_stale_temps(tmp_path, 60.0, now=ours.stat().st_mtime + 61) == 1
    assert not ours.exists() and theirs.exists()


def make_source(tmp_path: Path) -> Job:
    source = tmp_path / "drop" / "sub" / "a.pdf"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"%PDF")
    stat = source.stat()
    return job(size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def test_move_puts_sources_in_processed_and_failed(tmp_path: Path) -> None:
    where = placement(tmp_path, after_success="move", archive_dir=tmp_path / "archive")
    done = make_source(tmp_path)
    assert "moved" in dispose_source(done, where)
    assert (tmp_path / "archive/processed/sub/a.pdf").read_bytes() == b"%PDF"
    (tmp_path / "drop/sub/a.pdf").write_bytes(b"%PDF")  # same name again, another job
    again = job(id=8, size=4, mtime_ns=(tmp_path / "drop/sub/a.pdf").stat().st_mtime_ns)
    dispose_source(again, where)
    assert (tmp_path / "archive/processed/sub/a.8.pdf").exists()  # the first copy is kept


def test_a_source_changed_since_it_was_read_is_left_alone(tmp_path: Path) -> None:
    where = placement(tmp_path, after_success="delete")
    done = make_source(tmp_path)
    (tmp_path / "drop/sub/a.pdf").write_bytes(b"%PDF new version")
    assert dispose_source(done, where) == "kept"
    assert (tmp_path / "drop/sub/a.pdf").exists()


def test_delete_never_removes_a_failed_source(tmp_path: Path) -> None:
    where = placement(tmp_path, after_success="delete")
    failed = make_source(tmp_path)
    failed = job(outcome="failed", size=failed.size, mtime_ns=failed.mtime_ns)
    assert dispose_source(failed, where) == "kept"
    assert (tmp_path / "drop/sub/a.pdf").exists()


def test_a_restart_sweeps_its_own_young_temps_but_not_other_instances(tmp_path: Path) -> None:
    mine = tmp_path / f".uw.aaaa1111-1a2b3c4d{TEMP_SUFFIX}"
    other = tmp_path / f".uw.bbbb2222-1a2b3c4d{TEMP_SUFFIX}"
    for temp in (mine, other):
        temp.write_bytes(b"x")
    assert remove_stale_temps(tmp_path, 300.0, now=mine.stat().st_mtime, own_tag="aaaa1111") == 1
    assert not mine.exists() and other.exists()  # another instance may be writing it now


def test_a_source_name_near_the_limit_still_gets_its_result(tmp_path: Path) -> None:
    long_name = "é" * 122 + ".pdf"  # 248 bytes: + ".error.json" would pass the 255-byte limit
    failed = job(relative_path=long_name, outcome="failed", last_error="x")
    target = write_result(failed, placement(tmp_path), UNSTRACT)
    assert target.exists() and target.name.endswith(f"~{failed.id}.error.json")
    assert json.loads(target.read_text())["source"] == long_name


def test_a_move_onto_another_file_system_never_leaves_half_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = placement(tmp_path, after_success="move", archive_dir=tmp_path / "archive")
    done = make_source(tmp_path)

    def cross_device(source: Any, target: Any) -> None:  # rename(2) across mounts: EXDEV
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def copy_cut_off(source: Any, target: Any) -> None:
        Path(target).write_bytes(b"%P")  # the process dies halfway through the copy
        raise KeyboardInterrupt

    monkeypatch.setattr(output_module.os, "rename", cross_device)
    monkeypatch.setattr(output_module.shutil, "copy2", copy_cut_off)
    with pytest.raises(KeyboardInterrupt):
        dispose_source(done, where)
    processed = tmp_path / "archive/processed/sub"
    assert not (processed / "a.pdf").exists() and list(processed.iterdir()) == []
    assert (tmp_path / "drop/sub/a.pdf").read_bytes() == b"%PDF"  # the source is untouched
    monkeypatch.undo()
    monkeypatch.setattr(output_module.os, "rename", cross_device)
    assert "moved" in dispose_source(done, where)
    assert (processed / "a.pdf").read_bytes() == b"%PDF"
    assert not (tmp_path / "drop/sub/a.pdf").exists()


def test_a_source_reached_through_an_inner_symlink_is_disposed_of(tmp_path: Path) -> None:
    where = placement(tmp_path, after_success="delete")
    real = make_source(tmp_path)
    link = tmp_path / "drop/sub/link.pdf"
    link.symlink_to(tmp_path / "drop/sub/a.pdf")
    seen = link.stat()  # what the watcher recorded: the target's size and mtime
    linked = job(relative_path="sub/link.pdf", size=seen.st_size, mtime_ns=seen.st_mtime_ns)
    assert dispose_source(linked, where) == "deleted"
    assert not os.path.lexists(link)  # the link went; what it pointed to stays
    assert (tmp_path / "drop/sub/a.pdf").stat().st_size == real.size
