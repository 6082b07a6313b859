"""The [pipelines.api] tables: which remote API a pipeline sends to, and its key.

Part of the config schema (`watcher.config` re-exports what callers need). The key is read
from where the config says (`resolve_key`); its errors name the key that holds it.
"""

from __future__ import annotations

import os
import re
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
    field_validator,
    model_validator,
)

# The server's tag rules (unstract-api-behaviour.md section 3).
TAG_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]*$")
TAG_MAX_LENGTH = 50
# `/deployment/api/<org>/<api>/`, trailing slash optional (behaviour sheet section 1).
DEPLOYMENT_PATH = re.compile(r"^/deployment/api/(?P<org>[\w-]+)/(?P<api>[\w-]+)/?$")
# One item of LLMWhisperer's pages_to_extract: N, N-M or N- (as the service and our emulator parse).
PAGE_RANGE = re.compile(r"^([0-9]+)(-([0-9]*))?$")


class ConfigError(Exception):
    """A config that cannot run; the message names the key and the fix."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiBase(Strict):
    """What every API kind shares: the key, HTTP timeouts, polling and retry limits."""

    api_key_env: str = Field("", description="Name of the environment variable holding the key.")
    api_key_file: str = Field(
        "",
        description="File holding the key; relative paths are looked up in "
        "$CREDENTIALS_DIRECTORY (systemd LoadCredential).",
    )
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
    outage_probe_max_seconds: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="While the API is unreachable, the longest pause between two probes "
        "(they start at 1 s and double); documents go on within this of its return.",
    )
    outage_grace_seconds: float = Field(
        180.0,
        ge=0,
        le=86400,
        description="How long the API may stay unreachable before it is a problem: then "
        "/healthz answers 503 with the reason, the log says so as an error, a "
        "pipeline_paused notice goes out, and `run --once` stops waiting and exits 75.",
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
                raise ConfigError(
                    f"api_key_env: environment variable {self.api_key_env} is empty or unset"
                )
        else:
            try:
                key = _read_key_file(self.api_key_file)
            except ConfigError as exc:
                raise ConfigError(f"api_key_file: {exc}") from None
        key = key.strip().lstrip("\ufeff").strip()  # editors add a byte-order mark
        if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
            # An HTTP header cannot carry it, and httpx would quote it in its error.
            raise ConfigError(
                f"{self.key_source()}: the API key has spaces, line breaks or non-ASCII characters"
            )
        return SecretStr(key)

    def key_source(self) -> str:
        """The config key the API key comes from: api_key, api_key_env or api_key_file."""
        if self.api_key:
            return "api_key"
        return "api_key_env" if self.api_key_env else "api_key_file"


class UnstractApiConfig(ApiBase):
    kind: Literal["unstract"] = Field("unstract", description="Which API: unstract.")
    url: str = Field(description="The API deployment URL: https://HOST/deployment/api/ORG/API/")
    tags: list[str] = Field(default_factory=list, description="At most one tag per execution.")
    include_metadata: bool = Field(False, description="Ask for LLM usage and cost metadata.")
    files_per_execution: int = Field(
        1,
        ge=1,
        le=32,
        description="Documents packed into one execution while a backlog waits (1: one each).",
    )

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


class LLMWhispererApiConfig(ApiBase):
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


def key_file_path(name: str) -> Path | None:
    """Where the key file is; None for a relative name where systemd has not set
    $CREDENTIALS_DIRECTORY (the service has it, a shell does not)."""
    path = Path(name)
    if path.is_absolute():
        return path
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(directory) / path if directory else None


def is_credential_elsewhere(api: ApiBase) -> bool:
    """A key file that systemd's LoadCredential= provides to the service only."""
    return bool(api.api_key_file) and key_file_path(api.api_key_file) is None


def _read_key_file(name: str) -> str:
    path = key_file_path(name)
    if path is None:
        raise ConfigError(
            f"{name!r} is relative, so it is looked up in $CREDENTIALS_DIRECTORY, "
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
