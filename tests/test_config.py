"""Config: the example file loads through the real loader, and bad configs name their key."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from watcher import check, config
from watcher.cli import EXIT_CONFIG, main
from watcher.emulator.whisper_options import OptionError, parse_pages
from watcher.llmwhisperer import wire_options

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"
KEY = "6f1c2a8e-3b7d-4c59-9e21-0d4b8a7f5c13"


def example(tmp_path: Path) -> dict[str, Any]:
    raw = tomllib.loads(EXAMPLE.read_text())
    (tmp_path / "drop").mkdir(exist_ok=True)
    raw["database"]["url"] = f"sqlite:///{tmp_path / 'state.db'}"
    raw["pipelines"][0]["watch_dir"] = str(tmp_path / "drop")
    return raw


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOICES_API_KEY", KEY)


def test_the_example_loads_and_documents_every_key(tmp_path: Path) -> None:
    settings = config.from_mapping(example(tmp_path))
    text = EXAMPLE.read_text()
    models = [
        config.DatabaseConfig,
        config.DaemonConfig,
        config.MetricsConfig,
        config.NotifyConfig,
        config.PipelineConfig,
        config.TableConfig,
        config.UnstractApiConfig,
        config.LLMWhispererApiConfig,
    ]
    for model in models:
        for name in model.model_fields:
            documented = f"\n{name} = " in text or f"\n# {name} = " in text
            assert documented or f"[pipelines.{name}]" in text, f"{name} is not documented"
    assert settings.pipelines[0].api.resolve_key().get_secret_value() == KEY


def test_environment_overrides_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNSTRACT_WATCHER_DAEMON__LOG_LEVEL", "debug")
    monkeypatch.setenv("UNSTRACT_WATCHER_DATABASE__URL", "postgresql+psycopg://u@h:5432/db")
    settings = config.from_mapping(example(tmp_path))
    assert settings.daemon.log_level == "debug"
    assert settings.database.url == "postgresql+psycopg://u@h:5432/db"
    assert settings.daemon.upload_workers == 4  # the file's other keys stay


def bad(tmp_path: Path, change: Any) -> str:
    raw = example(tmp_path)
    change(raw)
    with pytest.raises(config.ConfigError) as caught:
        config.from_mapping(raw)
    return str(caught.value)


def api(raw: dict[str, Any]) -> dict[str, Any]:
    return dict(raw["pipelines"][0]["api"])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda r: r["pipelines"][0]["api"].update(tags=["a", "b"]),
            'pipelines[0] ("invoices").api.tags: the server takes at most one tag',
        ),
        (
            lambda r: r["pipelines"][0]["api"].update(tags=["1abc"]),
            "pipelines[0] (\"invoices\").api.tags: tag '1abc'",
        ),
        (lambda r: r["pipelines"][0]["api"].update(tags=["a" * 51]), "at most 50 characters"),
        (
            lambda r: r["pipelines"][0]["api"].update(url="https://x.example/api/v1/foo"),
            'pipelines[0] ("invoices").api.url: must have the deployment shape',
        ),
        (
            lambda r: r["pipelines"][0]["api"].update(api_key="k"),
            "set exactly one of api_key_env, api_key_file or api_key",
        ),
        (
            lambda r: r["pipelines"][0]["api"].update(api_key_env="NO_SUCH_VARIABLE_X"),
            'pipelines[0] ("invoices").api.api_key_env: environment variable NO_SUCH_VARIABLE_X is empty or unset',
        ),
        (
            lambda r: r["pipelines"][0]["api"].update(kind="openai"),
            'pipelines[0] ("invoices").api.kind',
        ),
        (
            lambda r: r["pipelines"][0].update(watch_dir="/no/such/folder"),
            'pipelines[0] ("invoices").watch_dir: /no/such/folder does not exist',
        ),
        (
            lambda r: r["pipelines"][0].update(settle_secs=2),
            'pipelines[0] ("invoices").settle_secs: unknown key',
        ),
        (lambda r: r["daemon"].update(upload_workers=0), "daemon.upload_workers"),
        (lambda r: r["daemon"].update(log_format="xml"), "daemon.log_format"),
        (lambda r: r["database"].update(url="mysql://x"), "database.url"),
        (
            lambda r: r["pipelines"][0].update(after_success="move"),
            'pipelines[0] ("invoices").archive_dir: required',
        ),
        (lambda r: r.update(pipelines=[]), "pipelines"),
        (lambda r: r["pipelines"].append(dict(r["pipelines"][0])), "used twice"),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, change: Any, expected: str) -> None:
    assert expected in bad(tmp_path, change)


def test_output_inside_the_watched_tree_is_refused_unless_excluded(tmp_path: Path) -> None:
    inside = str(tmp_path / "drop" / "results")

    def output_inside(raw: dict[str, Any]) -> None:
        raw["pipelines"][0]["output_dir"] = inside

    assert 'pipelines[0] ("invoices").output_dir' in bad(tmp_path, output_inside)
    raw = example(tmp_path)
    output_inside(raw)
    raw["pipelines"][0]["exclude"] = ["results/*"]
    assert config.from_mapping(raw).pipelines[0].output_dir == Path(inside)


def test_key_file_under_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "invoices.key").write_text(KEY + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    raw = example(tmp_path)
    del raw["pipelines"][0]["api"]["api_key_env"]
    raw["pipelines"][0]["api"]["api_key_file"] = "invoices.key"
    settings = config.from_mapping(raw)
    assert settings.pipelines[0].api.resolve_key().get_secret_value() == KEY


def test_cli_exits_2_with_the_key_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(EXAMPLE.read_text().replace('log_level = "info"', 'log_level = "loud"'))
    assert main(["check-config", "--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "daemon.log_level" in err
    assert "Traceback" not in err


def test_cli_names_a_toml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[daemon\nlog_level = 1\n")
    assert main(["check-config", "--config", str(path)]) == EXIT_CONFIG
    assert "not valid TOML" in capsys.readouterr().err


def test_check_config_never_prints_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = EXAMPLE.read_text()
    path = tmp_path / "config.toml"
    (tmp_path / "drop").mkdir()
    raw = raw.replace("/srv/drop/invoices", str(tmp_path / "drop"))
    path.write_text(raw)
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr()
    assert "config OK" in out.out
    assert KEY not in out.out + out.err
    assert os.environ["INVOICES_API_KEY"] == KEY


def test_a_literal_key_in_a_readable_config_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "drop").mkdir()
    text = EXAMPLE.read_text().replace("/srv/drop/invoices", str(tmp_path / "drop"))
    text = text.replace('api_key_env = "INVOICES_API_KEY"', f'api_key = "{KEY}"')
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(0o644)
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert 'pipelines[0] ("invoices").api.api_key' in out and "readable by other users" in out
    assert KEY not in out
    path.chmod(0o600)
    assert main(["check-config", "--config", str(path)]) == 0
    assert "readable" not in capsys.readouterr().out


@pytest.mark.parametrize("bad_key", [f"{KEY}\nsecond line", f"\ufeff{KEY}é", f"{KEY} {KEY}"])
def test_a_key_a_header_cannot_carry_is_refused_without_showing_it(
    tmp_path: Path, bad_key: str
) -> None:
    (tmp_path / "key").write_text(bad_key)
    raw = example(tmp_path)
    del raw["pipelines"][0]["api"]["api_key_env"]
    raw["pipelines"][0]["api"]["api_key_file"] = str(tmp_path / "key")
    with pytest.raises(config.ConfigError) as caught:
        config.from_mapping(raw)
    assert "line breaks or non-ASCII" in str(caught.value) and KEY not in str(caught.value)


def test_a_byte_order_mark_is_not_part_of_the_key(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(f"\ufeff{KEY}\n")
    raw = example(tmp_path)
    del raw["pipelines"][0]["api"]["api_key_env"]
    raw["pipelines"][0]["api"]["api_key_file"] = str(tmp_path / "key")
    assert config.from_mapping(raw).pipelines[0].api.resolve_key().get_secret_value() == KEY


def commented_llmwhisperer_api() -> dict[str, Any]:
    """The example's commented LLMWhisperer API table, as it reads once uncommented."""
    text = EXAMPLE.read_text().split('# kind = "llmwhisperer"')[1]
    lines = [line[2:] for line in text.splitlines() if re.match(r"^# \w+ = ", line)]
    return tomllib.loads("\n".join(lines))


def test_the_example_shows_every_default() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    pipeline = raw["pipelines"][0]
    tables = [
        (config.DatabaseConfig, raw["database"]),
        (config.DaemonConfig, raw["daemon"]),
        (config.MetricsConfig, raw["metrics"]),
        (config.PipelineConfig, pipeline),
        (config.UnstractApiConfig, pipeline["api"]),
        (config.LLMWhispererApiConfig, commented_llmwhisperer_api()),
    ]
    for model, table in tables:
        for name, value in table.items():
            field = model.model_fields[name]
            if field.is_required() or name == "api_key_env":  # marked as examples in the file
                continue
            assert value == field.get_default(call_default_factory=True), name
    assert len(commented_llmwhisperer_api()) > 10


@pytest.mark.parametrize("sub", ["processed", "failed"])
def test_an_archive_whose_subfolder_is_watched_is_refused(tmp_path: Path, sub: str) -> None:
    def archive_above(raw: dict[str, Any]) -> None:
        (tmp_path / sub).mkdir()
        raw["pipelines"][0].update(
            watch_dir=str(tmp_path / sub), after_success="move", archive_dir=str(tmp_path)
        )

    message = bad(tmp_path, archive_above)
    assert (
        f'pipelines[0] ("invoices").archive_dir: {tmp_path / sub} is inside the watched folder'
        in message
    )


def test_an_archive_inside_the_watched_tree_needs_an_exclude(tmp_path: Path) -> None:
    raw = example(tmp_path)
    raw["pipelines"][0].update(after_success="move", archive_dir=str(tmp_path / "drop" / "old"))
    with pytest.raises(config.ConfigError, match=r'pipelines\[0\] \("invoices"\)\.archive_dir'):
        config.from_mapping(raw)
    raw["pipelines"][0]["exclude"] = ["old/processed/*"]  # the archive itself is still watched
    with pytest.raises(config.ConfigError, match=r'pipelines\[0\] \("invoices"\)\.archive_dir'):
        config.from_mapping(raw)
    for exclude in ("old", "old/", "old/*"):
        raw["pipelines"][0]["exclude"] = [exclude]
        assert config.from_mapping(raw).pipelines[0].exclude == [exclude]


def test_a_table_variable_that_is_not_json_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UNSTRACT_WATCHER_DAEMON", "x")
    message = bad(tmp_path, lambda raw: None)
    assert "environment variable UNSTRACT_WATCHER_DAEMON:" in message
    assert "UNSTRACT_WATCHER_DAEMON__LOG_LEVEL" in message
    path = tmp_path / "config.toml"
    path.write_text(EXAMPLE.read_text().replace("/srv/drop/invoices", str(tmp_path / "drop")))
    assert main(["check-config", "--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "UNSTRACT_WATCHER_DAEMON" in err and "Traceback" not in err
    monkeypatch.setenv("UNSTRACT_WATCHER_DAEMON", '{"log_level": "debug"}')  # JSON works
    assert config.from_mapping(example(tmp_path)).daemon.log_level == "debug"


@pytest.mark.parametrize(
    "variable",
    [
        "UNSTRACT_WATCHER_PIPELINES",
        "UNSTRACT_WATCHER_PIPELINES__0__NAME",
        "unstract_watcher_pipelines__0__api__api_key",
    ],
)
def test_pipeline_variables_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "x")
    message = bad(tmp_path, lambda raw: None)
    assert f"environment variable {variable}: pipelines cannot be set" in message
    assert "in the config file" in message and "api_key_env or api_key_file" in message


def test_the_default_sqlite_path_is_absolute() -> None:
    url = config.DatabaseConfig.model_validate({}).url
    assert url == "sqlite:////var/lib/unstract-watcher/state.db"
    assert make_url(url).database == "/var/lib/unstract-watcher/state.db"


@pytest.mark.parametrize(
    "url", ["sqlite:///var/lib/x/state.db", "sqlite:///state.db", "sqlite:///"]
)
def test_a_relative_sqlite_path_is_refused(tmp_path: Path, url: str) -> None:
    message = bad(tmp_path, lambda raw: raw["database"].update(url=url))
    assert "database.url:" in message and "relative path" in message
    four = message.split("four slashes: ")[1]
    assert four.startswith("sqlite:////") and (make_url(four).database or "").startswith("/")


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite:////tmp/state.db?timeout=5"])
def test_absolute_and_in_memory_sqlite_urls_load(tmp_path: Path, url: str) -> None:
    raw = example(tmp_path)
    raw["database"]["url"] = url
    assert config.from_mapping(raw).database.url == url


def whisper_pages(tmp_path: Path, pages: str) -> dict[str, Any]:
    raw = example(tmp_path)
    raw["pipelines"][0]["api"] = {
        "kind": "llmwhisperer",
        "api_key_env": "INVOICES_API_KEY",
        "pages_to_extract": pages,
    }
    return raw


@pytest.mark.parametrize("pages", ["", "1", "1-5", "1-5,7,21-", "3-3", " 1-2 , 4", "007"])
def test_page_ranges_the_emulator_takes_are_valid(tmp_path: Path, pages: str) -> None:
    settings = config.from_mapping(whisper_pages(tmp_path, pages))
    api = settings.pipelines[0].api
    assert isinstance(api, config.LLMWhispererApiConfig)
    parse_pages(wire_options(api).get("pages_to_extract") or None)  # the emulator accepts it


@pytest.mark.parametrize(
    "pages", ["-", "1--2", "5-1", "1-5,", "0", "0-3", ",", "1,,2", " ", "a", "-5", "1-2-3", "1 - 2"]
)
def test_page_ranges_the_emulator_refuses_are_refused(tmp_path: Path, pages: str) -> None:
    message = bad(tmp_path, lambda raw: raw.update(whisper_pages(tmp_path, pages)))
    assert (
        'pipelines[0] ("invoices").api.pages_to_extract:' in message and "counted from 1" in message
    )
    with pytest.raises(OptionError):
        parse_pages(pages)


def test_page_numbers_are_ascii_digits(tmp_path: Path) -> None:
    message = bad(tmp_path, lambda raw: raw.update(whisper_pages(tmp_path, "\u0663")))
    assert 'pipelines[0] ("invoices").api.pages_to_extract:' in message


def relative_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    raw = example(tmp_path)
    del raw["pipelines"][0]["api"]["api_key_env"]
    raw["pipelines"][0]["api"]["api_key_file"] = "invoices.key"
    return raw


def test_a_systemd_credential_is_refused_outside_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = relative_key_file(tmp_path, monkeypatch)
    with pytest.raises(config.ConfigError) as caught:
        config.from_mapping(raw)
    assert "pipelines[0] (\"invoices\").api.api_key_file: 'invoices.key' is relative" in str(
        caught.value
    )
    assert "$CREDENTIALS_DIRECTORY, which is not set" in str(caught.value)


def test_check_config_notes_a_systemd_credential_instead_of_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = relative_key_file(tmp_path, monkeypatch)
    settings = config.from_mapping(raw, skip_systemd_credentials=True)
    assert check.credential_notes(settings) == [
        'pipelines[0] ("invoices").api.api_key_file: invoices.key is provided by systemd '
        "LoadCredential= "
        "when the service starts; not checked here"
    ]
    assert check.secret_warnings(settings, None) == []
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # under the service: checked
    with pytest.raises(config.ConfigError, match="cannot read the key file"):
        config.from_mapping(raw, skip_systemd_credentials=True)
    (tmp_path / "invoices.key").write_text(KEY)
    settings = config.from_mapping(raw, skip_systemd_credentials=True)
    assert check.credential_notes(settings) == []


def test_check_config_as_the_readme_runs_it_for_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    (tmp_path / "drop").mkdir()
    text = EXAMPLE.read_text().replace("/srv/drop/invoices", str(tmp_path / "drop"))
    text = text.replace('api_key_env = "INVOICES_API_KEY"', 'api_key_file = "invoices.key"')
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert 'note: pipelines[0] ("invoices").api.api_key_file: invoices.key is provided' in out
    assert "config OK" in out
    assert main(["run", "--once", "--config", str(path)]) == EXIT_CONFIG  # not the service
    assert "CREDENTIALS_DIRECTORY" in capsys.readouterr().err


def test_files_per_execution_is_bounded_and_unstract_only(tmp_path: Path) -> None:
    raw = example(tmp_path)
    raw["pipelines"][0]["api"]["files_per_execution"] = 4
    api = config.from_mapping(raw).pipelines[0].api
    assert isinstance(api, config.UnstractApiConfig) and api.files_per_execution == 4
    for wrong in (0, 33):
        raw["pipelines"][0]["api"]["files_per_execution"] = wrong
        with pytest.raises(config.ConfigError) as caught:
            config.from_mapping(raw)
        assert 'pipelines[0] ("invoices").api.files_per_execution:' in str(caught.value)

    def on_llmwhisperer(r: dict[str, Any]) -> None:
        r.update(whisper_pages(tmp_path, ""))
        r["pipelines"][0]["api"]["files_per_execution"] = 4

    message = bad(tmp_path, on_llmwhisperer)
    assert (
        'pipelines[0] ("invoices").api.files_per_execution: only for kind = "unstract": '
        "LLMWhisperer takes one document per request" in message
    )
