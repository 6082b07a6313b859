"""One result file as one table row: nested objects become dotted column names; pure.

`{"output": {"invoice": {"total": 12}}}` gives the column `output.invoice.total`. A key that
holds a dot or a backslash has it escaped with a backslash (`{"a.b": 1}` is `a\\.b`), so
every column names one place in the file. Lists (line items) stay whole: a JSON cell in CSV,
nested in JSONL. An empty object is kept as a value (`{}`) rather than dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

# The document's own columns, in this order, before the result's fields.
DOCUMENT_COLUMNS = (
    "pipeline",
    "source",
    "status",
    "backend",
    "execution_id",
    "finished_at",
    "cost_in_dollars",
    "error",
    "sha256",
    "size",
    "attempts",
    "result_file",
    "text_file",
    "low_confidence_words",
    "min_confidence",
)
# A result field whose top-level name is one of these goes under `result.` instead.
RESERVED = frozenset({*DOCUMENT_COLUMNS, "result"})


def escape(key: str) -> str:
    return key.replace("\\", "\\\\").replace(".", "\\.")


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Dotted column -> value for every leaf of `value`, found at column `prefix`."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    cells: dict[str, Any] = {}
    for key, item in value.items():
        cells.update(flatten(item, f"{prefix}.{escape(key)}"))
    return cells


def result_cells(result: Any, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The result object's fields as columns; top-level names that a document column has
    are moved under `result.`, and a result that is not an object is the column `result`."""
    if result is None:
        return {}
    if not isinstance(result, dict):
        return {"result": result}
    cells: dict[str, Any] = {}
    for key, item in result.items():
        if key in skip:
            continue
        name = escape(key)
        cells.update(flatten(item, f"result.{name}" if key in RESERVED else name))
    return cells


def cost_in_dollars(metadata: Any) -> float | None:
    """The LLM cost of a document (Unstract, with include_metadata), if the file has it."""
    usage = metadata.get("usage") if isinstance(metadata, dict) else None
    try:
        return float(usage["cost_in_dollars"]) if isinstance(usage, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


def column_order(columns: Iterable[str]) -> list[str]:
    """Document columns first in their fixed order, then the result's fields sorted: the
    same set of columns always comes out in the same order."""
    known = {name: index for index, name in enumerate(DOCUMENT_COLUMNS)}
    return sorted(columns, key=lambda c: (0, known[c], "") if c in known else (1, 0, c))


def cell_text(value: Any) -> str:
    """A value as CSV cell text: strings as they are, null empty, everything else as JSON
    (true/false, numbers as written, lists and objects as a JSON cell)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
