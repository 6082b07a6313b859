"""A set-up that cannot work is refused at once, naming the key (issue 24): check-config and
`run` are run as an unprivileged user (root would be let through by any file mode)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import KEY_ENV, api_key, deployment_url, write_config

from watcher.cli import EXIT_CONFIG
from watcher.emulator import EmulatorServer

NOBODY = 65534
UNUSED_API = "http://127.0.0.1:9/deployment/api/org/api/"


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A folder the unprivileged user can reach (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="uw-setup-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:  # modes taken away by a test, back
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(folder)


def as_nobody(*args: str, unprivileged: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI as user nobody, without capabilities (as is when we are not root)."""
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    prefix = [*drop, "--inh-caps=-all"] if unprivileged and os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "watcher.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, KEY_ENV: api_key()},
        cwd="/",
    )


def nobody_config(shared: Path, url: str = UNUSED_API, **pipeline: object) -> Path:
    """A config in `shared` whose folders and database belong to nobody; tests take away
    what they test."""
    (shared / "db").mkdir()
    folders = {key: str(value) for key, value in pipeline.items() if isinstance(value, Path)}
    config = write_config(
        shared, url, f"sqlite:///{shared / 'db' / 'state.db'}", {**pipeline, **folders}
    )
    for path in [shared / "drop", shared / "db", *map(Path, folders.values())]:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, NOBODY, NOBODY)
    return config


def test_check_config_names_each_key_the_daemons_user_could_not_use(shared: Path) -> None:
    config = nobody_config(shared, output_dir=shared / "out")
    (shared / "drop").chmod(0o300)  # writable, not listable
    (shared / "out").chmod(0o500)
    (shared / "db").chmod(0o500)
    done = as_nobody("check-config", "--config", str(config))
    assert done.returncode == EXIT_CONFIG, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    expected = {
        'pipelines[0] ("docs").watch_dir:': f"{shared / 'drop'} cannot be listed by",
        'pipelines[0] ("docs").output_dir:': f"{shared / 'out'} cannot be written by",
        "database.url:": f"the database's folder {shared / 'db'} cannot be written by",
    }
    for key, text in expected.items():
        assert any(key in line and text in line for line in lines), (key, done.stderr)


def test_results_beside_unwritable_sources_name_output_dir(shared: Path) -> None:
    config = nobody_config(shared)
    (shared / "drop").chmod(0o555)
    done = as_nobody("check-config", "--config", str(config))
    assert done.returncode == EXIT_CONFIG
    assert "output_dir: '' writes results beside the sources" in done.stderr


def test_a_folder_to_create_is_said_and_one_that_cannot_be_is_refused(shared: Path) -> None:
    config = nobody_config(shared, archive_dir=shared / "archive", after_success="move")
    config.write_text(
        config.read_text().replace(
            "[pipelines.api]", f'output_dir = "{shared}/results/a"\n\n[pipelines.api]'
        )
    )
    (shared / "results").mkdir()
    os.chown(shared / "results", NOBODY, NOBODY)
    done = as_nobody("check-config", "--config", str(config))
    assert done.returncode == 0, done.stderr
    note = f'note: pipelines[0] ("docs").output_dir: {shared}/results/a does not exist; the daemon will create it'
    assert note in done.stdout.splitlines()
    (shared / "results").chmod(0o500)
    (shared / "archive" / "failed").mkdir()  # root's: sources that failed cannot go there
    done = as_nobody("check-config", "--config", str(config))
    assert done.returncode == EXIT_CONFIG
    assert (
        f"output_dir: {shared}/results/a cannot be created: {shared}/results cannot be"
        in done.stderr
    )
    assert f"archive_dir: {shared}/archive/failed cannot be written by" in done.stderr


def test_run_refuses_a_database_folder_it_cannot_write_naming_the_key(shared: Path) -> None:
    config = nobody_config(shared, output_dir=shared / "out")
    (shared / "db").chmod(0o500)
    done = as_nobody("run", "--once", "--config", str(config))
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "database.url: the database's folder" in done.stderr
    assert "database unavailable" not in done.stderr


def test_the_daemon_says_which_folder_it_creates(tmp_path: Path, server: EmulatorServer) -> None:
    output = tmp_path / "reslts"  # misspelt
    config = write_config(
        tmp_path,
        deployment_url(server),
        f"sqlite:///{tmp_path / 'state.db'}",
        pipeline={"output_dir": str(output)},
    )
    done = as_nobody("run", "--once", "--config", str(config), unprivileged=False)
    assert done.returncode == 0, done.stderr
    created = [line for line in done.stderr.splitlines() if "folder created" in line]
    assert len(created) == 1 and 'pipelines[0] (\\"docs\\").output_dir' in created[0], done.stderr
    assert str(output) in created[0] and output.is_dir()


def test_a_watch_dir_behind_a_closed_folder_is_named_without_a_traceback(shared: Path) -> None:
    config = nobody_config(shared)
    closed = shared / "closed"
    (closed / "drop").mkdir(parents=True)
    closed.chmod(0o700)
    config.write_text(config.read_text().replace(str(shared / "drop"), str(closed / "drop")))
    done = as_nobody("check-config", "--config", str(config))
    assert done.returncode == EXIT_CONFIG
    assert "Traceback" not in done.stderr
    assert f'("docs").watch_dir: {closed / "drop"} cannot be reached by user' in done.stderr
