"""Bad input: every odd file gets an error file or a log line, and the daemon serves the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from harness import (
    deployment_url,
    mounted_tmpfs,
    results_under,
    running_daemon,
    sha256,
    wait_for,
    write_config,
)

from watcher import watch
from watcher.emulator import EmulatorServer, UnstractEmulator
from watcher.jobs import JobState

pytestmark = pytest.mark.usefixtures("api_keys")


def test_odd_files_and_names(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"private, outside the drop folder")
    # Rescans come often, so a warning given once per path would show up again if it repeated.
    config = write_config(
        tmp_path,
        deployment_url(server),
        db_url,
        pipeline={"max_file_bytes": 1000, "rescan_seconds": 0.2},
    )
    drop = tmp_path / "drop"
    (drop / "a").mkdir()
    (drop / "b").mkdir()
    (drop / "empty.pdf").write_bytes(b"")
    (drop / "huge.txt").write_bytes(b"x" * 1001)
    (drop / "name with spaces.txt").write_bytes(b"spaces")
    (drop / "facture-été.txt").write_bytes(b"unicode")
    (drop / "a" / "same.txt").write_bytes(b"first of two")
    (drop / "b" / "same.txt").write_bytes(b"second of two")
    bad_name = os.fsencode(drop) + b"/latin1-\xe9t\xe9.txt"
    with open(bad_name, "wb") as handle:
        handle.write(b"a name that is not UTF-8")
    os.mkfifo(drop / "pipe.pdf")
    (drop / "folder.pdf").mkdir()
    (drop / "broken.txt").symlink_to(drop / "gone.txt")
    (drop / "escape.txt").symlink_to(outside)
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 7, what="seven documents")
    found = results_under(drop)
    assert "empty" in found["empty.pdf.error.json"]["error"]
    assert "max_file_bytes = 1000" in found["huge.txt.error.json"]["error"]
    assert found["name with spaces.txt.json"]["status"] == "success"
    assert found["facture-été.txt.json"]["source"] == "facture-été.txt"
    assert found["a/same.txt.json"]["sha256"] == sha256(drop / "a" / "same.txt")
    assert found["b/same.txt.json"]["sha256"] == sha256(drop / "b" / "same.txt")
    raw_result = bad_name + b".json"
    assert os.path.exists(raw_result)  # named after the source's own bytes
    raw_document = json.loads(Path(os.fsdecode(raw_result)).read_text())
    assert raw_document["source"] == "latin1-\\xe9t\\xe9.txt"  # shown with its bytes escaped
    assert raw_document["status"] == "success"
    assert len(found) == 7  # nothing for the fifo, the folder or the symlinks
    assert sha256(outside) not in emulator.stats().posts_by_sha256
    out = capsys.readouterr().out.splitlines()
    assert "symlink that leads out of watch_dir" in "\n".join(out)
    for message, name in [
        ("not a regular file; ignored", "pipe.pdf"),
        ("broken symlink; ignored", "broken.txt"),
    ]:
        assert len([line for line in out if message in line and name in line]) == 1, name
    assert "folder.pdf" not in "\n".join(out)  # a folder in a recursive tree is walked


def test_unreadable_file_is_logged_and_retried_later(
    tmp_path: Path,
    server: EmulatorServer,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As root (CI) no permission bit stops a read, so the refusal is faked at the one call.
    real_sha256_of = watch.sha256_of
    refuse = {"locked.txt"}

    def sha256_of(path: Path) -> tuple[str, int]:
        if path.name in refuse:
            raise PermissionError(13, "Permission denied")
        return real_sha256_of(path)

    monkeypatch.setattr(watch, "sha256_of", sha256_of)
    config = write_config(
        tmp_path, deployment_url(server), db_url, pipeline={"rescan_seconds": 0.5}
    )
    (tmp_path / "drop" / "locked.txt").write_bytes(b"locked")
    (tmp_path / "drop" / "open.txt").write_bytes(b"open")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 1, what="the readable file")
        assert "cannot read file" in capsys.readouterr().out
        refuse.clear()  # the operator fixes the permissions
        wait_for(lambda: daemon.progress().finished == 2, what="the file once readable")
    assert set(results_under(tmp_path / "drop")) == {"locked.txt.json", "open.txt.json"}


@pytest.mark.parametrize("change", ["vanish", "rewrite"])
def test_a_file_that_changes_before_upload_is_not_sent(
    tmp_path: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    db_url: str,
    change: str,
) -> None:
    config = write_config(tmp_path, deployment_url(server), db_url, daemon={"upload_workers": 1})
    source = tmp_path / "drop" / "a.txt"
    source.write_bytes(b"as it was hashed")
    with running_daemon(config, watch_events=False) as daemon:
        daemon.stop()  # keep the job queued: nothing claims it once the loops have stopped
        wait_for(lambda: not daemon.supervisor.running(), what="the loops to stop")
        daemon.store.enqueue("docs", "b.txt", "0" * 64, 3, 1)  # hashed content that is gone
        (tmp_path / "drop" / "b.txt").write_bytes(b"new")
        if change == "vanish":
            (tmp_path / "drop" / "b.txt").unlink()
        from watcher.submit import Uploader

        uploader = Uploader(daemon.live)
        job = daemon.store.claim_for_upload("test", {"docs": 5})
        while job is not None and job.relative_path != "b.txt":
            job = daemon.store.claim_for_upload("test", {"docs": 5})
        assert job is not None
        uploader.upload(job, daemon.pipelines["docs"])
        row = next(j for j in daemon.store.list_jobs() if j.relative_path == "b.txt")
    assert row.state is JobState.SKIPPED
    assert ("removed" if change == "vanish" else "changed") in row.last_error
    assert emulator.stats().posts == 0


@pytest.mark.usefixtures("quick_write_retries")
def test_a_full_disk_delays_the_result_file_and_loses_nothing(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    with mounted_tmpfs(tmp_path / "results", "size=64k") as results:
        filler = results / "filler"
        with filler.open("wb", buffering=0) as handle:  # fill the disk to the last byte
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:
                pass
        config = write_config(
            tmp_path, deployment_url(server), db_url, pipeline={"output_dir": str(results)}
        )
        (tmp_path / "drop" / "a.txt").write_bytes(b"result needs room")
        with running_daemon(config) as daemon:
            wait_for(
                lambda: any(j.state is JobState.RESULT_STORED for j in daemon.store.list_jobs()),
                what="the stored result",
            )
            wait_for(
                lambda: (
                    daemon.finisher.outcomes.total() == 0 and not (results / "a.txt.json").exists()
                ),
                what="a failed write",
            )
            filler.unlink()  # the operator frees space
            wait_for(lambda: daemon.progress().finished == 1, what="the result once there is room")
        assert results_under(results)["a.txt.json"]["status"] == "success"
        assert not [p for p in results.iterdir() if p.name.startswith(".")]
