"""What an emulated whisper extracts: the uploaded bytes laid out as the retrieve body.

Follows ../shared/api/llmwhisperer-v2.md section 3.2. The "document" is the body decoded as
UTF-8 (errors replaced); a form feed separates its pages, as in pdftotext output. Every page,
the last one included, is followed by a line holding the page separator: that is the layout of
the service's own outputs (the official client's expected texts for its live tests).
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .results import EXTRACTED_TEXT_LIMIT, FAIL_MARKER
from .whisper_options import PageRange, WhisperOptions

WhisperResult = dict[str, Any]
# Pixel geometry reported in line_metadata: [page, base_y, height, page_height].
LINE_HEIGHT = 50
PAGE_HEIGHT = 3168
_COLLAPSING_MODES = ("text", "dump-text")


@dataclass(frozen=True)
class StagedDocument:
    """What the emulator keeps of one submitted document."""

    sha256: str
    size: int
    total_pages: int
    requested_pages: int
    failed: bool
    result: WhisperResult | None  # None when the whisper will fail


def stage_document(
    content: bytes, options: WhisperOptions, fail_glob: str | None
) -> StagedDocument:
    """Split, select and lay out the pages once, at submit time."""
    pages = split_pages(content[:EXTRACTED_TEXT_LIMIT].decode("utf-8", errors="replace"))
    chosen = select_pages(len(pages), options.pages)
    failed = FAIL_MARKER in content or bool(
        fail_glob and fnmatch.fnmatchcase(options.file_name, fail_glob)
    )
    result = None if failed else build_result([(i, pages[i]) for i in chosen], options)
    return StagedDocument(
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        total_pages=len(pages),
        requested_pages=len(chosen),
        failed=failed,
        result=result,
    )


def split_pages(text: str) -> list[str]:
    pages = text.replace("\r\n", "\n").split("\f")
    if len(pages) > 1 and not pages[-1].strip():
        pages.pop()  # a form feed after the last page ends it; it starts no new page
    return pages


def select_pages(count: int, ranges: Sequence[PageRange]) -> list[int]:
    """0-based indices of the requested pages in document order; pages past the end are dropped."""
    if not ranges:
        return list(range(count))
    wanted: set[int] = set()
    for first, last in ranges:
        end = count if last is None else min(last, count)
        wanted.update(range(first - 1, end))
    return sorted(wanted)


def build_result(pages: Sequence[tuple[int, str]], options: WhisperOptions) -> WhisperResult:
    """The `whisper-retrieve` body (text_only=false) for the given (index, text) pages."""
    lines: list[str] = []
    line_metadata: list[list[int]] = []
    for index, page in pages:
        page_lines = layout_page(page, options.output_mode)
        lines.extend([*page_lines, options.page_separator])
        line_metadata.extend(
            [index, (row + 1) * LINE_HEIGHT, LINE_HEIGHT, PAGE_HEIGHT]
            for row in range(len(page_lines))
        )
        line_metadata.append([index, 0, 0, 0])  # the separator line is not on the page
    return {
        "result_text": "".join(f"{line}\n" for line in lines),
        # One entry per line, listing its words under 0.9 confidence: none, for typed text.
        "confidence_metadata": [[] for _ in lines],
        "line_metadata": line_metadata if options.add_line_nos else [],
        "metadata": {},
        "webhook_metadata": options.webhook_metadata,
    }


def layout_page(page: str, output_mode: str) -> list[str]:
    """`layout_preserving` keeps indentation; `text` collapses runs of blanks."""
    lines = page.split("\n")
    if lines[-1] == "":
        lines.pop()  # the page's final newline
    if output_mode in _COLLAPSING_MODES:
        return [" ".join(line.split()) for line in lines]
    return [line.rstrip() for line in lines]
