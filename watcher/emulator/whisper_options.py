"""The query options of `POST /api/v2/whisper`: defaults, parsing and validation.

Follows ../shared/api/llmwhisperer-v2.md section 1.2. Unknown keys are ignored and an empty
value (`key=`) means "not set", as the service does. The wording of the 400 messages is not
documented (section 1.4); the emulator's own wording names the parameter and the bad value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .responses import Request

MODES = (
    "native_text",
    "low_cost",
    "high_quality",
    "form",
    "table",
    "document_insights",
    "excel",
    "pdf_to_images",
)
OUTPUT_MODES = ("layout_preserving", "text", "line-printer", "dump-text")
LINE_SPLITTER_STRATEGIES = ("left-priority", "mid-priority", "right-priority")
ENUMS = {
    "mode": MODES,
    "output_mode": OUTPUT_MODES,
    "line_splitter_strategy": LINE_SPLITTER_STRATEGIES,
}
BOOLEANS = (
    "mark_vertical_lines",
    "mark_horizontal_lines",
    "add_line_nos",
    "include_line_confidence",
    "url_in_post",
    "allow_rotated_text",
    "ignore_vertical_text",
)
INTEGERS = ("median_filter_size",)
NUMBERS = (
    "gaussian_blur_radius",
    "line_splitter_tolerance",
    "horizontal_stretch_factor",
    "checkbox_confidence_threshold",
    "derotate_threshold",
    "watermark_angle_threshold",
    "min_table_width",
)
FRACTIONS = ("word_confidence_threshold",)  # numbers between 0 and 1
DEFAULT_SEPARATOR = "<<<"
_PAGE_RANGE = re.compile(r"^(\d+)(-(\d*))?$")

PageRange = tuple[int, int | None]  # first and last page, 1-based; None: to the last page


class OptionError(ValueError):
    """A rejected query option; `str()` is the message of the 400 answer."""


@dataclass(frozen=True)
class WhisperOptions:
    """The submit options that change what the emulator produces or reports."""

    mode: str = "form"
    output_mode: str = "layout_preserving"
    page_separator: str = DEFAULT_SEPARATOR
    pages: tuple[PageRange, ...] = ()  # empty: every page
    tag: str = "default"
    file_name: str = ""
    use_webhook: str = ""
    webhook_metadata: str = ""
    add_line_nos: bool = False
    url_in_post: bool = False
    url: str = ""


def parse_options(request: Request) -> WhisperOptions:
    """Validate every known option, then build the options; raises OptionError."""

    def value(name: str) -> str | None:
        return request.query_value(name) or None

    for name, choices in ENUMS.items():
        _check_choice(name, value(name), choices)
    for name in INTEGERS:
        _check_number(name, value(name), integer=True)
    for name in (*NUMBERS, *FRACTIONS):
        _check_number(name, value(name), fraction=name in FRACTIONS)
    flags = {name: parse_bool(name, value(name)) for name in BOOLEANS}
    return WhisperOptions(
        mode=value("mode") or "form",
        output_mode=value("output_mode") or "layout_preserving",
        # Section 1.2: newer services read the correct spelling first, then the misspelt one.
        page_separator=value("page_separator") or value("page_seperator") or DEFAULT_SEPARATOR,
        pages=parse_pages(value("pages_to_extract")),
        tag=value("tag") or "default",
        file_name=value("file_name") or "",
        use_webhook=value("use_webhook") or "",
        webhook_metadata=value("webhook_metadata") or "",
        add_line_nos=bool(flags["add_line_nos"]),
        url_in_post=bool(flags["url_in_post"]),
        url=value("url") or "",
    )


def parse_bool(name: str, raw: str | None, default: bool = False) -> bool:
    """`true`/`false` in any case (the Python client sends `True`, the JS client `true`)."""
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise OptionError(f"Invalid value for {name}: '{raw}'. Expected true or false")
    return lowered == "true"


def parse_pages(raw: str | None) -> tuple[PageRange, ...]:
    """`1-5,7,21-` into ranges; an open end (`21-`) runs to the last page."""
    if raw is None:
        return ()
    return tuple(_page_range(part.strip(), raw) for part in raw.split(","))


def _page_range(part: str, raw: str) -> PageRange:
    match = _PAGE_RANGE.match(part)
    if match is None:
        raise OptionError(_pages_message(raw))
    first = int(match[1])
    last: int | None = first
    if match[2] is not None:
        last = int(match[3]) if match[3] else None
    if first < 1 or (last is not None and last < first):
        raise OptionError(_pages_message(raw))
    return first, last


def _pages_message(raw: str) -> str:
    return f"Invalid value for pages_to_extract: '{raw}'. Expected pages like 1-5,7,21-"


def _check_choice(name: str, raw: str | None, choices: tuple[str, ...]) -> None:
    if raw is not None and raw not in choices:
        allowed = ", ".join(choices)
        raise OptionError(f"Invalid value for {name}: '{raw}'. Allowed values: {allowed}")


def _check_number(
    name: str, raw: str | None, integer: bool = False, fraction: bool = False
) -> None:
    if raw is None:
        return
    try:
        number = int(raw) if integer else float(raw)
        if not math.isfinite(number):
            raise ValueError(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise OptionError(f"Invalid value for {name}: '{raw}'. Expected {kind}") from None
    if fraction and not 0 <= number <= 1:
        raise OptionError(f"Invalid value for {name}: '{raw}'. Expected a number from 0 to 1")
