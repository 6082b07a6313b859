"""The TOML config file: its schema, the checks that span fields, and the loader.

Every key has a description; `config.example.toml` documents them all (a test keeps the two in
step). Environment variables override keys of [database], [daemon] and [metrics]:
`UNSTRACT_WATCHER_DATABASE__URL`, `UNSTRACT_WATCHER_DAEMON__LOG_LEVEL`, ... (nested keys joined
by a double underscore). Pipelines are set in the file only.
"""

from __future__ import annotations

import functools
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from watcher import setup_check
from watcher.api_config import ApiBase as ApiBase
from watcher.api_config import ApiConfig as ApiConfig
from watcher.api_config import ConfigError as ConfigError
from watcher.api_config import LLMWhispererApiConfig as LLMWhispererApiConfig
from watcher.api_config import Strict, is_credential_elsewhere
from watcher.api_config import UnstractApiConfig as UnstractApiConfig
from watcher.filters import FileFilter

DEFAULT_CONFIG_PATH = Path("/etc/unstract-watcher/config.toml")
ENV_PREFIX = "UNSTRACT_WATCHER_"

SQLITE_PREFIX = "sqlite:///"


@functools.cache
def _api_table() -> TypeAdapter[ApiConfig]:
    """An [pipelines.api] table validated on its own, for the checks of a pipeline that is not
    valid; built when first needed (its schema takes a while, and a valid config never asks)."""
    return TypeAdapter(ApiConfig)


DEFAULT_INCLUDE = [
    "*.pdf",
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.tif",
    "*.tiff",
    "*.bmp",
    "*.gif",
    "*.webp",
    "*.docx",
    "*.doc",
    "*.odt",
    "*.xlsx",
    "*.xls",
    "*.xlsm",
    "*.ods",
    "*.pptx",
    "*.ppt",
    "*.odp",
    "*.txt",
    "*.csv",
]


class DatabaseConfig(Strict):
    url: str = Field(
        "sqlite:////var/lib/unstract-watcher/state.db",
        description="SQLAlchemy URL of the job table: sqlite:////ABSOLUTE/PATH (four slashes) "
        "or postgresql+psycopg://...",
    )
    busy_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="SQLite: how long a writer waits for the lock."
    )
    keep_results_days: float = Field(
        7.0,
        ge=0,
        le=3650,
        description="Days the API's answer of a finished document stays in the database after "
        "its result file is written (0: drop it once the file is written); the file keeps it.",
    )

    @field_validator("url")
    @classmethod
    def _known_dialect(cls, url: str) -> str:
        return database_url(url)


def database_url(url: str) -> str:
    """A database URL the daemon can use, or a ValueError saying how to write one."""
    if url.startswith("postgresql+psycopg://"):
        return url
    if not url.startswith(SQLITE_PREFIX):
        raise ValueError("use sqlite:////PATH or postgresql+psycopg://USER@HOST:PORT/DB")
    database = url.removeprefix(SQLITE_PREFIX).partition("?")[0]
    if database != ":memory:" and not database.startswith("/"):
        # SQLAlchemy reads what follows the third slash as relative to the working
        # directory, which is / under systemd and anything in a shell.
        absolute = database or "var/lib/unstract-watcher/state.db"
        raise ValueError(
            f"{url} is a relative path; an absolute one takes four slashes: "
            f"{SQLITE_PREFIX}/{absolute}"
        )
    return url


# The daemon's own tables: a result table in its database may not take one of their names.
OWN_TABLES = frozenset({"jobs", "results", "pipeline_state", "outbox", "alembic_version"})


class TableConfig(Strict):
    """A database table that gets one row per finished document of the pipeline."""

    url: SecretStr = Field(
        SecretStr(""),
        description="SQLAlchemy URL of the database (sqlite:////PATH or "
        "postgresql+psycopg://...); '' = the daemon's own database.",
    )
    name: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$",
        description="The table's name (created if missing): letters, digits, '_'.",
    )

    @field_validator("url")
    @classmethod
    def _usable_url(cls, url: SecretStr) -> SecretStr:
        text = url.get_secret_value()
        if text:
            try:
                database_url(text)
            except ValueError:  # without the URL, which may hold a password
                raise ValueError(
                    "use '' (the daemon's database), sqlite:////PATH or "
                    "postgresql+psycopg://USER@HOST:PORT/DB"
                ) from None
        return url

    @model_validator(mode="after")
    def _not_our_own(self) -> Self:
        if not self.url.get_secret_value() and self.name.lower() in OWN_TABLES:
            raise ValueError(f"name {self.name!r} is one of the daemon's own tables")
        return self


class DaemonConfig(Strict):
    upload_workers: int = Field(4, ge=1, le=64, description="Threads that upload documents.")
    poll_workers: int = Field(
        4, ge=1, le=64, description="Threads that poll executions and fetch their results."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level that is logged."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto",
        description="json: one JSON object per line; console: for people; "
        "auto: console on a terminal, json otherwise (journald, files).",
    )
    instance_id: str = Field(
        "", description="Name of this instance in leases; '' = hostname and process id."
    )
    drain_seconds: float = Field(
        20.0, ge=0, le=600, description="On SIGTERM, how long in-flight uploads may finish."
    )


class MetricsConfig(Strict):
    enabled: bool = Field(False, description="Serve Prometheus /metrics and /healthz.")
    host: str = Field("127.0.0.1", description="Listen address (loopback unless you mean it).")
    port: int = Field(9464, ge=0, le=65535, description="Listen port (0 = any free port).")


class NotifyConfig(Strict):
    """Webhook notices: failed documents, paused and resumed pipelines, optionally results."""

    webhook_url: SecretStr = Field(
        description="Where notices are POSTed (http or https); kept out of logs, since a "
        "Slack webhook URL is itself a credential."
    )
    secret: SecretStr = Field(
        SecretStr(""),
        description="If set, each POST carries X-Unstract-Watcher-Signature: "
        "sha256=HMAC-SHA256(secret, body) in hex.",
    )
    format: Literal["json", "slack"] = Field(
        "json", description="json: one JSON object per notice; slack: a Slack message."
    )
    on_success: bool = Field(False, description="Also a notice for every result written.")
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="One POST's timeout.")
    retry_max_seconds: float = Field(
        300.0, gt=0, le=86400, description="Longest wait between tries while the receiver is down."
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: SecretStr) -> SecretStr:
        parts = urlsplit(url.get_secret_value())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL")
        return url


class PipelineConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Unique pipeline name.")
    watch_dir: Path = Field(description="The drop folder.")
    recursive: bool = Field(True, description="Watch subfolders too.")
    settle_seconds: float = Field(
        2.0, ge=0, le=3600, description="A file is taken once size and mtime are this still."
    )
    close_wait_seconds: float = Field(
        600.0,
        ge=0,
        le=7 * 86400,
        description="observer = native: a file created in place waits for its writer's close "
        "(then settle_seconds); one held this long without a close settles like a listed "
        "one, unless the kernel says a writer still has it open.",
    )
    output_dir: Path | Literal[""] = Field(
        "", description="Where results go ('' = beside the source)."
    )
    after_success: Literal["keep", "move", "delete"] = Field(
        "keep", description="What happens to a source once its result file is written."
    )
    on_reused_name: Literal["keep", "replace"] = Field(
        "keep",
        description=(
            "When a different document's result would take an existing result file's name: "
            "keep the earlier one as NAME.<job id>.json, or replace it (error files are "
            "always replaced)."
        ),
    )
    archive_dir: Path | Literal[""] = Field(
        "", description="With after_success = move: sources go to processed/ and failed/ here."
    )
    result_file_mode: str = Field(
        "0640",
        description="Octal permissions of result, error and side files, as given (no umask).",
    )
    include: list[str] = Field(
        default_factory=lambda: list(DEFAULT_INCLUDE),
        description="Glob patterns of the files to take (matched on the relative path).",
    )
    exclude: list[str] = Field(
        default_factory=list, description="Glob patterns to leave alone (beyond the built-ins)."
    )
    max_file_bytes: int = Field(
        100 * 1024 * 1024, ge=1, description="Larger files get an error file instead."
    )
    observer: Literal["native", "polling"] = Field(
        "native", description="native = inotify; polling for NFS/SMB shares."
    )
    polling_interval_seconds: float = Field(
        5.0, gt=0, le=3600, description="With observer = polling: how often the tree is listed."
    )
    rescan_seconds: float = Field(
        300.0,
        gt=0,
        description="A rescan this often, as a safety net for lost events: it lists the "
        "folders whose mtime changed (the whole tree at start, after an inotify overflow "
        "and every 24 h).",
    )
    api: ApiConfig = Field(description="The remote API this pipeline sends documents to.")
    table: TableConfig | None = Field(
        None, description="A database table with one row per finished document; none if absent."
    )

    @field_validator("result_file_mode")
    @classmethod
    def _octal_mode(cls, mode: str) -> str:
        if re.fullmatch(r"0?[0-7]{3}", mode) is None:
            raise ValueError(f'{mode!r} is not a file mode; write it in octal, as "0640"')
        return mode

    def file_filter(self) -> FileFilter:
        return FileFilter(
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            results_beside_sources=self.output_dir == "",
            text_results=getattr(self.api, "write_text_file", False),
        )


class Settings(BaseSettings):
    """The whole config file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    database: DatabaseConfig = Field(default_factory=lambda: DatabaseConfig.model_validate({}))
    daemon: DaemonConfig = Field(default_factory=lambda: DaemonConfig.model_validate({}))
    metrics: MetricsConfig = Field(default_factory=lambda: MetricsConfig.model_validate({}))
    notify: NotifyConfig | None = Field(None, description="Webhook notices; none if absent.")
    pipelines: list[PipelineConfig] = Field(min_length=1, description="One per drop folder.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values come in as init arguments; the environment wins over them.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [p.name for p in self.pipelines]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"pipeline name {name!r} is used twice; names must be unique")
        return self


def load(
    path: Path, check_environment_too: bool = True, *, skip_systemd_credentials: bool = False
) -> Settings:
    """Read, validate and check the config; raise ConfigError with a message for people.

    skip_systemd_credentials: for check-config, which runs outside the service and so cannot
    see the key files that LoadCredential= hands it (see `credential_notes`)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return from_mapping(
        raw,
        source=str(path),
        check_environment_too=check_environment_too,
        skip_systemd_credentials=skip_systemd_credentials,
    )


def from_mapping(
    raw: dict[str, Any],
    source: str = "config",
    check_environment_too: bool = True,
    *,
    skip_systemd_credentials: bool = False,
) -> Settings:
    """Validate a parsed config, reporting every problem found in one message. The
    environment checks (folders exist, keys resolve) are skipped for the operator's
    commands, which need only the database URL."""
    _refuse_pipeline_variables()
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        problems = _explain(exc, raw)
        if check_environment_too:  # what can still be checked: a typo must not hide the rest
            problems += _unvalidated_problems(raw, skip_systemd_credentials)
        raise ConfigError(_report(source, problems)) from None
    except SettingsError as exc:
        raise ConfigError(_explain_variable(exc)) from None
    if check_environment_too:
        problems = environment_problems(settings, skip_systemd_credentials=skip_systemd_credentials)
        if problems:
            raise ConfigError(_report(source, problems))
    return settings


def pipeline_label(index: int, name: object) -> str:
    """How every message names a pipeline: `pipelines[1] ("scans")`."""
    if isinstance(name, str) and name:
        return f'pipelines[{index}] ("{name}")'
    return f"pipelines[{index}]"


def _report(source: str, problems: list[str]) -> str:
    return "\n  ".join([f"{source}: invalid configuration", *problems])


def _refuse_pipeline_variables() -> None:
    # pydantic-settings would replace the whole list of pipelines with what the variables hold.
    for name in sorted(os.environ):
        if name.upper().startswith(f"{ENV_PREFIX}PIPELINES"):
            raise ConfigError(
                f"environment variable {name}: pipelines cannot be set from the environment; "
                "set pipeline keys in the config file, and API keys through api_key_env or "
                "api_key_file"
            )


def _explain_variable(exc: SettingsError) -> str:
    """A variable pydantic-settings could not parse: a whole table ([daemon]) that is not JSON."""
    match = re.search(r'field "(\w+)"', str(exc))
    if match is None:
        return f"environment variables {ENV_PREFIX}*: {exc}"
    wanted = f"{ENV_PREFIX}{match[1].upper()}"
    name = next((n for n in os.environ if n.upper() == wanted), wanted)
    return (
        f"environment variable {name}: a variable for a whole table must hold a JSON object; "
        f"to override one key, use {wanted}__KEY (e.g. {ENV_PREFIX}DAEMON__LOG_LEVEL=debug)"
    )


UNKNOWN_KEY = "unknown key (misspelt?); see config.example.toml"
# Keys of one API kind given to another: say why instead of "unknown key".
OTHER_KIND_KEYS = {
    "files_per_execution": 'only for kind = "unstract": LLMWhisperer takes one document '
    "per request",
}


def _explain(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    lines = []
    for error in exc.errors():
        key = _key_name(error["loc"], raw)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = OTHER_KIND_KEYS.get(key.rsplit(".", 1)[-1], UNKNOWN_KEY)
        elif error["type"] == "union_tag_invalid":
            key, message = f"{key}.kind", "must be 'unstract' or 'llmwhisperer'"
        elif error["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{key or '(top level)'}: {message}")
    return lines


def _key_name(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """`pipelines[1] ("scans").api.url` for a pydantic error location."""
    # The union's tags ("unstract", "llmwhisperer") are not keys of the file: drop them.
    parts = [p for p in loc if p not in ("unstract", "llmwhisperer")]
    head = ""
    if len(parts) >= 2 and parts[0] == "pipelines" and isinstance(parts[1], int):
        head, parts = pipeline_label(parts[1], _raw_name(raw, parts[1])), parts[2:]
    key = head + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
    return key.lstrip(".")


def _raw_name(raw: dict[str, Any], index: int) -> object:
    pipelines = raw.get("pipelines")
    if (
        isinstance(pipelines, list)
        and index < len(pipelines)
        and isinstance(pipelines[index], dict)
    ):
        return pipelines[index].get("name")
    return None


def environment_problems(
    settings: Settings, *, skip_systemd_credentials: bool = False
) -> list[str]:
    """Checks that need the filesystem and the environment: every problem found."""
    problems = []
    for label, pipeline in labelled_pipelines(settings):
        problems += _pipeline_problems(label, pipeline, skip_systemd_credentials)
    problems += setup_check.database_problems(sqlite_path(settings.database.url))
    return problems + _overlaps(settings)


def labelled_pipelines(settings: Settings) -> list[tuple[str, PipelineConfig]]:
    """Each pipeline with the label that messages name it by."""
    return [(pipeline_label(i, p.name), p) for i, p in enumerate(settings.pipelines)]


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for PostgreSQL and an in-memory database."""
    if not url.startswith(SQLITE_PREFIX):
        return None
    database = url.removeprefix(SQLITE_PREFIX).partition("?")[0]
    return None if database in ("", ":memory:") else Path(database)


def _pipeline_problems(label: str, pipeline: PipelineConfig, skip_credentials: bool) -> list[str]:
    # Its folders, as the daemon's user may use them.
    problems = setup_check.pipeline_problems(label, pipeline)
    if pipeline.after_success == "move" and pipeline.archive_dir == "":
        problems.append(f"{label}.archive_dir: required when after_success = 'move'")
    if not (skip_credentials and is_credential_elsewhere(pipeline.api)):
        problems += _key_problems(label, pipeline.api)
    return problems


def _no_watch_dir(label: str, watch_dir: Path) -> str:
    return f"{label}.watch_dir: {watch_dir} does not exist or is not a folder"


def _unvalidated_problems(raw: dict[str, Any], skip_credentials: bool) -> list[str]:
    """In a file that does not validate: the checks of each pipeline that does on its own,
    and the watch_dir of each that does not."""
    pipelines = raw.get("pipelines")
    problems: list[str] = []
    for index, item in enumerate(pipelines if isinstance(pipelines, list) else []):
        if not isinstance(item, dict):
            continue
        label = pipeline_label(index, item.get("name"))
        try:
            pipeline = PipelineConfig.model_validate(item)
        except ValidationError:
            problems += _invalid_pipeline_problems(label, item, skip_credentials)
            continue
        problems += _pipeline_problems(label, pipeline, skip_credentials)
    return problems


def _invalid_pipeline_problems(
    label: str, item: dict[str, Any], skip_credentials: bool
) -> list[str]:
    """A pipeline that does not validate: its folder, and its key if its api table is valid."""
    problems = []
    folder = item.get("watch_dir")
    if isinstance(folder, str) and not os.path.isdir(folder):
        problems.append(_no_watch_dir(label, Path(folder)))
    try:
        api: ApiBase = _api_table().validate_python(item.get("api"))
    except ValidationError:
        return problems
    if not (skip_credentials and is_credential_elsewhere(api)):
        problems += _key_problems(label, api)
    return problems


def _key_problems(label: str, api: ApiBase) -> list[str]:
    try:
        api.resolve_key()
    except ConfigError as exc:
        return [f"{label}.api.{exc}"]
    return []


def _overlaps(settings: Settings) -> list[str]:
    """Output and archive folders must not be watched, and watched trees must not nest."""
    problems = []
    watched = [(p, p.watch_dir.resolve()) for p in settings.pipelines]
    for index, pipeline in enumerate(settings.pipelines):
        for field, folder in _written_folders(pipeline):
            for other, root in watched:
                if _is_watched(folder.resolve(), other, root):
                    problems.append(
                        f"{pipeline_label(index, pipeline.name)}.{field}: {folder} is inside the "
                        f"watched folder of pipeline {other.name!r}; move it out or add it to "
                        "that pipeline's exclude"
                    )
    for (a, root_a), (b, root_b) in _pairs(watched):
        if root_a == root_b or root_a.is_relative_to(root_b) or root_b.is_relative_to(root_a):
            problems.append(
                f"pipelines: the watch_dir of {a.name!r} and {b.name!r} overlap; "
                "give each pipeline its own folder"
            )
    return problems


def _written_folders(pipeline: PipelineConfig) -> list[tuple[str, Path]]:
    """The folders the daemon writes into, by config key: results, and moved sources."""
    folders = []
    if pipeline.output_dir != "":
        folders.append(("output_dir", Path(pipeline.output_dir)))
    if pipeline.archive_dir != "":
        archive = Path(pipeline.archive_dir)
        folders += [("archive_dir", archive / sub) for sub in ("", "processed", "failed")]
    return folders


def _is_watched(folder: Path, pipeline: PipelineConfig, root: Path) -> bool:
    if folder == root:
        return True
    if not folder.is_relative_to(root):
        return False
    relative = folder.relative_to(root).as_posix()
    if not pipeline.recursive:
        return False
    return not pipeline.file_filter().excludes_dir(relative)


def _pairs(items: list[Any]) -> list[tuple[Any, Any]]:
    return [(a, b) for i, a in enumerate(items) for b in items[i + 1 :]]
