"""The TOML config file: its schema, the checks that span fields, and the loader.

Every key has a description; `config.example.toml` documents them all (a test keeps the two in
step). Environment variables override keys of [database], [daemon] and [metrics]:
`UNSTRACT_WATCHER_DATABASE__URL`, `UNSTRACT_WATCHER_DAEMON__LOG_LEVEL`, ... (nested keys joined
by a double underscore). Pipelines are set in the file only.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
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

from watcher.filters import FileFilter

DEFAULT_CONFIG_PATH = Path("/etc/unstract-watcher/config.toml")
ENV_PREFIX = "UNSTRACT_WATCHER_"

# The server's tag rules (unstract-api-behaviour.md section 3).
TAG_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]*$")
TAG_MAX_LENGTH = 50
# `/deployment/api/<org>/<api>/`, trailing slash optional (behaviour sheet section 1).
DEPLOYMENT_PATH = re.compile(r"^/deployment/api/(?P<org>[\w-]+)/(?P<api>[\w-]+)/?$")
# One item of LLMWhisperer's pages_to_extract: N, N-M or N- (as the service and our emulator parse).
PAGE_RANGE = re.compile(r"^([0-9]+)(-([0-9]*))?$")
SQLITE_PREFIX = "sqlite:///"

DEFAULT_INCLUDE = [
    "*.pdf", "*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.bmp", "*.gif", "*.webp",
    "*.docx", "*.doc", "*.odt", "*.xlsx", "*.xls", "*.xlsm", "*.ods", "*.pptx", "*.ppt",
    "*.odp", "*.txt", "*.csv",
]  # fmt: skip


class ConfigError(Exception):
    """A config that cannot run; the message names the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Strict):
    url: str = Field(
        "sqlite:////var/lib/unstract-watcher/state.db",
        description="SQLAlchemy URL of the job table: sqlite:////ABSOLUTE/PATH (four slashes) "
        "or postgresql+psycopg://...",
    )
    busy_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="SQLite: how long a writer waits for the lock."
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


class TableConfig(_Strict):
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


class DaemonConfig(_Strict):
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


class MetricsConfig(_Strict):
    enabled: bool = Field(False, description="Serve Prometheus /metrics and /healthz.")
    host: str = Field("127.0.0.1", description="Listen address (loopback unless you mean it).")
    port: int = Field(9464, ge=0, le=65535, description="Listen port (0 = any free port).")


class NotifyConfig(_Strict):
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


class _ApiBase(_Strict):
    """What every API kind shares: the key, HTTP timeouts, polling and retry limits."""

    api_key_env: str = Field("", description="Name of the environment variable holding the key.")
    api_key_file: str = Field(
        "", description="File holding the key; relative paths are looked up in "
        "$CREDENTIALS_DIRECTORY (systemd LoadCredential)."
    )  # fmt: skip
    api_key: SecretStr = Field(SecretStr(""), description="The key itself (prefer the two above).")
    max_in_flight: int = Field(
        10, ge=1, le=100, description="Executions of this pipeline running at once."
    )
    connect_timeout_seconds: float = Field(10.0, gt=0, le=300, description="TCP/TLS connect.")
    read_timeout_seconds: float = Field(120.0, gt=0, le=3600, description="Waiting for a reply.")
    poll_initial_seconds: float = Field(
        0.25, gt=0, le=600, description="First status poll this long after the upload."
    )
    poll_max_seconds: float = Field(
        30.0, gt=0, le=3600, description="Longest gap between two status polls."
    )
    max_attempts: int = Field(
        5, ge=1, le=100, description="Uploads of one document before it is failed."
    )
    execution_deadline_seconds: float = Field(
        6 * 3600.0, gt=0, description="An execution running longer than this is given up."
    )
    on_unknown_outcome: Literal["resubmit", "hold"] = Field(
        "resubmit",
        description="An upload that may or may not have reached the server (connection lost "
        "after sending, a 500, a gateway's 504, a crash mid-upload): send it again (risking a "
        "second execution) or hold the job for an operator.",
    )

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        given = [bool(self.api_key_env), bool(self.api_key_file), bool(self.api_key)]
        if sum(given) != 1:
            raise ValueError("set exactly one of api_key_env, api_key_file or api_key")
        return self

    def resolve_key(self) -> SecretStr:
        """The API key, from wherever the config says; raises ConfigError naming the key."""
        if self.api_key:
            key = self.api_key.get_secret_value()
        elif self.api_key_env:
            key = os.environ.get(self.api_key_env, "")
            if not key:
                raise ConfigError(f"environment variable {self.api_key_env} is empty or unset")
        else:
            key = _read_key_file(self.api_key_file)
        key = key.strip().lstrip("\ufeff").strip()  # editors add a byte-order mark
        if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
            # An HTTP header cannot carry it, and httpx would quote it in its error.
            raise ConfigError("the API key has spaces, line breaks or non-ASCII characters")
        return SecretStr(key)


class UnstractApiConfig(_ApiBase):
    kind: Literal["unstract"] = Field("unstract", description="Which API: unstract.")
    url: str = Field(description="The API deployment URL: https://HOST/deployment/api/ORG/API/")
    tags: list[str] = Field(default_factory=list, description="At most one tag per execution.")
    include_metadata: bool = Field(False, description="Ask for LLM usage and cost metadata.")

    @field_validator("tags")
    @classmethod
    def _tags_follow_server_rules(cls, tags: list[str]) -> list[str]:
        if len(tags) > 1:
            raise ValueError("the server takes at most one tag per execution")
        for tag in tags:
            if len(tag) > TAG_MAX_LENGTH or not TAG_PATTERN.match(tag):
                raise ValueError(
                    f"tag {tag!r}: start with a letter, then letters, digits, _ or -; "
                    f"at most {TAG_MAX_LENGTH} characters"
                )
        return tags

    @field_validator("url")
    @classmethod
    def _deployment_shape(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL, e.g. https://HOST/deployment/api/ORG/API/")
        if not DEPLOYMENT_PATH.match(parts.path) or parts.query:
            raise ValueError(
                "must have the deployment shape https://HOST/deployment/api/ORG/API/ "
                "(copy it from the API deployment page)"
            )
        return url if url.endswith("/") else url + "/"


class LLMWhispererApiConfig(_ApiBase):
    """LLMWhisperer v2 text extraction; option names and defaults are the service's own."""

    kind: Literal["llmwhisperer"] = Field(description="Which API: llmwhisperer.")
    url: str = Field(
        "https://llmwhisperer-api.us-central.unstract.com/api/v2",
        description="The v2 base URL (…/api/v2); eu-west and self-hosted servers have their own.",
    )
    mode: Literal[
        "native_text", "low_cost", "high_quality", "form", "table", "document_insights", "excel"
    ] = Field("form", description="Extraction mode (billed per page per mode).")
    output_mode: Literal["layout_preserving", "text"] = Field(
        "layout_preserving", description="Keep the page layout, or plain text."
    )
    page_separator: str = Field("<<<", description="Put between pages in the text.")
    pages_to_extract: str = Field("", description="Pages like '1-5,7,21-'; '' = all.")
    tag: str = Field("default", max_length=100, description="Usage tag for auditing.")
    lang: str = Field("eng", description="Language hint.")
    median_filter_size: int = Field(0, ge=0, description="Denoise (low_cost mode only).")
    gaussian_blur_radius: float = Field(0.0, ge=0, description="Denoise (low_cost mode only).")
    line_splitter_tolerance: float = Field(0.4, ge=0, description="Line split, x char height.")
    line_splitter_strategy: Literal["left-priority", "mid-priority", "right-priority"] = Field(
        "left-priority", description="How lines are split."
    )
    horizontal_stretch_factor: float = Field(1.0, gt=0, description=">1 separates columns.")
    mark_vertical_lines: bool = Field(False, description="Reproduce vertical lines.")
    mark_horizontal_lines: bool = Field(False, description="Reproduce horizontal lines.")
    add_line_nos: bool = Field(False, description="Number the lines (and keep line metadata).")
    write_text_file: bool = Field(
        False, description="Also write <name>.txt with the extracted text beside the JSON."
    )

    @field_validator("pages_to_extract")
    @classmethod
    def _page_ranges(cls, pages: str) -> str:
        if pages and not all(_is_page_range(item.strip()) for item in pages.split(",")):
            raise ValueError(
                f"{pages!r}: give comma-separated pages N, ranges N-M (N <= M) or N- (to the "
                "last page), counted from 1, like '1-5,7,21-'; '' = all pages"
            )
        return pages

    @field_validator("url")
    @classmethod
    def _base_shape(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.path.rstrip("/").endswith("/api/v2"):
            raise ValueError("must be the v2 base URL, e.g. https://HOST/api/v2")
        return url.rstrip("/")

    def options(self) -> dict[str, str]:
        """The query options to send: the ones that differ from the service's defaults."""
        skip = {"kind", "url", "write_text_file", *_ApiBase.model_fields}
        sent = {"mode": self.mode, "output_mode": self.output_mode, "tag": self.tag}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if name not in skip and value != field.default:
                sent[name] = str(value).lower() if isinstance(value, bool) else str(value)
        if "page_separator" in sent:
            sent["page_seperator"] = sent["page_separator"]  # older services read only this
        return sent


def _is_page_range(item: str) -> bool:
    match = PAGE_RANGE.match(item)
    if match is None:
        return False
    first, last = int(match[1]), match[3]
    return first >= 1 and (not last or int(last) >= first)


def _api_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "unstract"))
    return str(getattr(value, "kind", "unstract"))


ApiConfig = Annotated[
    Annotated[UnstractApiConfig, Tag("unstract")]
    | Annotated[LLMWhispererApiConfig, Tag("llmwhisperer")],
    Discriminator(_api_kind),
]


def _key_file_path(name: str) -> Path | None:
    """Where the key file is; None for a relative name where systemd has not set
    $CREDENTIALS_DIRECTORY (the service has it, a shell does not)."""
    path = Path(name)
    if path.is_absolute():
        return path
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(directory) / path if directory else None


def is_credential_elsewhere(api: _ApiBase) -> bool:
    """A key file that systemd's LoadCredential= provides to the service only."""
    return bool(api.api_key_file) and _key_file_path(api.api_key_file) is None


def _read_key_file(name: str) -> str:
    path = _key_file_path(name)
    if path is None:
        raise ConfigError(
            f"api_key_file {name!r} is relative, so it is looked up in $CREDENTIALS_DIRECTORY, "
            "which is not set: systemd sets it for the service from LoadCredential=; "
            "elsewhere give an absolute path"
        )
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}") from None
    if not text:
        raise ConfigError(f"the key file {path} is empty")
    return text


class PipelineConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Unique pipeline name.")
    watch_dir: Path = Field(description="The drop folder.")
    recursive: bool = Field(True, description="Watch subfolders too.")
    settle_seconds: float = Field(
        2.0, ge=0, le=3600, description="A file is taken once size and mtime are this still."
    )
    output_dir: Path | Literal[""] = Field(
        "", description="Where results go ('' = beside the source)."
    )
    after_success: Literal["keep", "move", "delete"] = Field(
        "keep", description="What happens to a source once its result file is written."
    )
    archive_dir: Path | Literal[""] = Field(
        "", description="With after_success = move: sources go to processed/ and failed/ here."
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
        300.0, gt=0, description="Full listing of the tree as a safety net for lost events."
    )
    api: ApiConfig = Field(description="The remote API this pipeline sends documents to.")
    table: TableConfig | None = Field(
        None, description="A database table with one row per finished document; none if absent."
    )

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
    """Validate a parsed config. The environment checks (folders exist, keys resolve) are
    skipped for the operator's commands, which need only the database URL."""
    _refuse_pipeline_variables()
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None
    except SettingsError as exc:
        raise ConfigError(_explain_variable(exc)) from None
    if check_environment_too:
        check_environment(settings, skip_systemd_credentials=skip_systemd_credentials)
    return settings


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


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for error in exc.errors():
        # The union's tags ("unstract", "llmwhisperer") are not keys of the file: drop them.
        loc = [p for p in error["loc"] if p not in ("unstract", "llmwhisperer")]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (misspelt?); see config.example.toml"
        elif error["type"] == "union_tag_invalid":
            key, message = f"{key}.kind", "must be 'unstract' or 'llmwhisperer'"
        elif error["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  {key.lstrip('.') or '(top level)'}: {message}")
    return "\n".join(lines)


def check_environment(settings: Settings, *, skip_systemd_credentials: bool = False) -> None:
    """Checks that need the filesystem and the environment; raise ConfigError on the first."""
    for index, pipeline in enumerate(settings.pipelines):
        key = f"pipelines[{index}]"
        watch_dir = pipeline.watch_dir
        if not watch_dir.is_dir():
            raise ConfigError(f"{key}.watch_dir: {watch_dir} does not exist or is not a folder")
        if pipeline.after_success == "move" and pipeline.archive_dir == "":
            raise ConfigError(f"{key}.archive_dir: required when after_success = 'move'")
        if skip_systemd_credentials and is_credential_elsewhere(pipeline.api):
            continue
        try:
            pipeline.api.resolve_key()
        except ConfigError as exc:
            raise ConfigError(f"{key}.api: {exc}") from None
    _check_no_overlap(settings)


def credential_notes(settings: Settings) -> list[str]:
    """The key files check-config leaves to the service: systemd provides them at its start."""
    return [
        f"pipelines[{index}].api.api_key_file: {pipeline.api.api_key_file} is provided by "
        "systemd LoadCredential= when the service starts; not checked here"
        for index, pipeline in enumerate(settings.pipelines)
        if is_credential_elsewhere(pipeline.api)
    ]


def secret_warnings(settings: Settings, config_path: Path | None) -> list[str]:
    """Keys that people other than the daemon's user can read: worth a warning, not a refusal."""
    warnings = []
    for index, pipeline in enumerate(settings.pipelines):
        api = pipeline.api
        if api.api_key and config_path is not None and _readable_by_others(config_path):
            warnings.append(
                f"pipelines[{index}].api.api_key: {config_path} holds a literal API key and is "
                "readable by other users; chmod 600 it or use api_key_env / api_key_file"
            )
        key_file = _key_file_path(api.api_key_file) if api.api_key_file else None
        if key_file is not None and _readable_by_others(key_file):
            warnings.append(
                f"pipelines[{index}].api.api_key_file: the key file is readable by other "
                "users; chmod 600 it"
            )
    return warnings


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def _check_no_overlap(settings: Settings) -> None:
    """Output and archive folders must not be watched, and watched trees must not nest."""
    watched = [(p, p.watch_dir.resolve()) for p in settings.pipelines]
    for index, pipeline in enumerate(settings.pipelines):
        for field, folder in _written_folders(pipeline):
            for other, root in watched:
                if _is_watched(folder.resolve(), other, root):
                    raise ConfigError(
                        f"pipelines[{index}].{field}: {folder} is inside the watched folder of "
                        f"pipeline {other.name!r}; move it out or add it to that pipeline's exclude"
                    )
    for (a, root_a), (b, root_b) in _pairs(watched):
        if root_a == root_b or root_a.is_relative_to(root_b) or root_b.is_relative_to(root_a):
            raise ConfigError(
                f"pipelines: the watch_dir of {a.name!r} and {b.name!r} overlap; "
                "give each pipeline its own folder"
            )


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
