"""A set-up that cannot work is refused at once, naming the key (issue 24): check-config and
`run` are run as an unprivileged user (root would be let through by any file mode)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import KEY_ENV, api_key, deployment_url, mounted_tmpfs, write_config

from watcher import config as config_module
from watcher.cli import EXIT_CANT_WRITE, EXIT_CONFIG, EXIT_NO_INPUT, exit_code
from watcher.daemon import Daemon
from watcher.emulator import EmulatorServer, UnstractEmulator
from watcher.store import Store

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


def nobody_config(
    shared: Path, url: str = UNUSED_API, database: str = "", **pipeline: object
) -> Path:
    """A config in `shared` whose folders and database (SQLite there, unless `database`
    names one) belong to nobody; tests take away what they test."""
    (shared / "db").mkdir()
    database = database or f"sqlite:///{shared / 'db' / 'state.db'}"
    folders = {key: str(value) for key, value in pipeline.items() if isinstance(value, Path)}
    config = write_config(shared, url, database, {**pipeline, **folders})
    for path in [shared / "drop", shared / "db", *map(Path, folders.values())]:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, NOBODY, NOBODY)
    # The schema made here: its upgrade runs Python anew, which nobody may not reach (pyenv's
    # interpreter under /root).
    store = Store(database)
    store.upgrade()
    store.close()
    for path in (shared / "db").iterdir():
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


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_run_once_ends_naming_a_folder_it_cannot_write_and_the_next_run_writes_it(
    shared: Path,
    server: EmulatorServer,
    emulator: UnstractEmulator,
    database: str,
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue("postgres_url") if database == "postgres" else ""
    config = nobody_config(
        shared, url=deployment_url(server), database=url, output_dir=shared / "out"
    )
    (shared / "drop" / "sub").mkdir()
    (shared / "drop" / "sub" / "a.txt").write_bytes(b"a's result has nowhere to go")
    (shared / "drop" / "b.txt").write_bytes(b"b's result is written")
    (shared / "out" / "sub").mkdir()  # root's: nobody cannot write a.txt's result there
    done = as_nobody("run", "--once", "--config", str(config))
    assert done.returncode == EXIT_CANT_WRITE, done.stderr[-3000:]
    problem = f"results cannot be written: {shared}/out/sub: Permission denied"
    assert f"unstract-watcher: {problem}; the results stay stored" in done.stderr
    logged = [line for line in done.stderr.splitlines() if line.startswith("{")]
    assert len([line for line in logged if problem in line]) == 1, done.stderr[-3000:]
    assert not [line for line in logged if "answer was lost" in line]
    assert (shared / "out" / "b.txt.json").exists()
    assert emulator.stats().executions_created == 2
    os.chown(shared / "out" / "sub", NOBODY, NOBODY)  # the operator fixes it
    again = as_nobody("run", "--once", "--config", str(config))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((shared / "out" / "sub" / "a.txt.json").read_text())["status"] == "success"
    assert emulator.stats().executions_created == 2  # written from the table, not sent again


def test_run_once_exits_non_zero_when_a_watched_folder_cannot_be_listed(
    shared: Path, server: EmulatorServer
) -> None:
    config = nobody_config(shared, url=deployment_url(server))
    closed = shared / "drop" / "closed"
    closed.mkdir(mode=0o700)  # root's
    (closed / "a.txt").write_bytes(b"never seen")
    done = as_nobody("run", "--once", "--config", str(config))
    assert done.returncode == EXIT_NO_INPUT, done.stderr[-3000:]
    assert f"unstract-watcher: cannot list {closed}: Permission denied" in done.stderr


@pytest.mark.usefixtures("api_keys")
def test_run_once_exits_non_zero_when_its_watch_dir_is_gone(tmp_path: Path) -> None:
    config = write_config(tmp_path, UNUSED_API, f"sqlite:///{tmp_path / 'state.db'}")
    settings = config_module.load(config)
    (tmp_path / "drop").rmdir()  # unmounted after the start's check
    store = Store(settings.database.url)
    store.upgrade()
    try:
        outcome = Daemon(settings, store).run(once=True)
    finally:
        store.close()
    assert outcome.unlisted == (f"{tmp_path / 'drop'}: No such file or directory",)
    assert exit_code(outcome, once=True) == EXIT_NO_INPUT


def test_check_config_names_a_read_only_mount(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "results", "ro,size=64k") as results:
        config = write_config(
            tmp_path, UNUSED_API, f"sqlite:///{tmp_path / 'state.db'}", {"output_dir": str(results)}
        )
        done = as_nobody("check-config", "--config", str(config), unprivileged=False)
    assert done.returncode == EXIT_CONFIG
    assert f'("docs").output_dir: {results} is on a read-only file system' in done.stderr
