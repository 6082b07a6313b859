"""Per-file results of an emulated execution and the include_* shaping (section 5).

Results are plain JSON values (dicts and lists), built once when the execution is created
and handed out at most once.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bodies import Upload

FAIL_MARKER = b"EMULATOR-FAIL"
# `EMULATOR-SECONDS=2.5` in a document's bytes: its execution runs that long (so that tests
# can make versions of one path finish in the order they choose).
SECONDS_MARKER = re.compile(rb"EMULATOR-SECONDS=([0-9]+(?:\.[0-9]+)?)")
ECHO_KEY = "emulator_output"  # see _echoed_output
# Only the start of a document is kept as its "extracted text", to bound memory.
EXTRACTED_TEXT_LIMIT = 65_536
LLM_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"

FileResult = dict[str, Any]


@dataclass(frozen=True)
class Shaping:
    """The include_* flags of one request."""

    include_metadata: bool = False
    include_metrics: bool = False
    include_extracted_text: bool = False


@dataclass(frozen=True)
class StagedFile:
    """What the emulator keeps of one uploaded file."""

    name: str
    size: int
    sha256: str
    word_count: int
    text: str
    failed: bool
    seconds: float | None = None  # its own run time (SECONDS_MARKER)


@dataclass(frozen=True)
class RunContext:
    """Execution-wide values copied into every file result."""

    organization_id: str
    workflow_id: str
    execution_id: str
    tags: tuple[str, ...]
    started_at: float
    elapsed: float


def stage_files(uploads: Iterable[Upload], fail_glob: str | None) -> list[StagedFile]:
    """Drop repeated content, then keep one file per name (section 3, duplicate handling).

    The real server appends same-name parts into one staged file; the emulator keeps the last.
    """
    seen: set[str] = set()
    by_name: dict[str, StagedFile] = {}
    for upload in uploads:
        digest = hashlib.sha256(upload.content).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        by_name[upload.name] = _stage(upload, digest, fail_glob)
    return list(by_name.values())


def _stage(upload: Upload, digest: str, fail_glob: str | None) -> StagedFile:
    text = upload.content.decode("utf-8", errors="replace")
    failed = FAIL_MARKER in upload.content or bool(
        fail_glob and fnmatch.fnmatchcase(upload.name, fail_glob)
    )
    return StagedFile(
        name=upload.name,
        size=len(upload.content),
        sha256=digest,
        word_count=len(text.split()),
        text=text[:EXTRACTED_TEXT_LIMIT],
        failed=failed,
        seconds=_own_seconds(upload.content),
    )


def _own_seconds(content: bytes) -> float | None:
    found = SECONDS_MARKER.search(content)
    return None if found is None else float(found.group(1))


def build_results(files: Sequence[StagedFile], run: RunContext) -> list[FileResult]:
    return [_file_result(staged, run) for staged in files]


def _file_result(staged: StagedFile, run: RunContext) -> FileResult:
    file_execution_id = str(uuid.uuid4())
    item: FileResult = {
        "file": staged.name,
        "file_execution_id": file_execution_id,
        "status": "Success",
        "result": None,
        "error": None,
        "metadata": _outer_metadata(staged, run, file_execution_id),
    }
    if staged.failed:
        item["status"] = "Failed"
        item["error"] = f"Error processing file '{staged.name}': emulated extraction failure"
    else:
        item["result"] = _tool_result(staged, file_execution_id, run.elapsed)
    return item


def _outer_metadata(staged: StagedFile, run: RunContext, file_execution_id: str) -> FileResult:
    return {
        "source_name": staged.name,
        "source_hash": staged.sha256,
        "organization_id": run.organization_id,
        "workflow_id": run.workflow_id,
        "execution_id": run.execution_id,
        "file_execution_id": file_execution_id,
        "total_elapsed_time": run.elapsed,
        "workflow_start_time": run.started_at,
        "tags": list(run.tags),
        "tool_metadata": [
            {"tool_name": "structure_tool", "elapsed_time": run.elapsed, "output_type": "JSON"}
        ],
    }


def _tool_result(staged: StagedFile, file_execution_id: str, elapsed: float) -> FileResult:
    input_tokens = staged.word_count + 120
    output_tokens = 40
    llm_cost = input_tokens * 0.15e-6 + output_tokens * 0.6e-6
    return {
        "output": _echoed_output(staged.text)
        or {
            "document": staged.name,
            "size_bytes": staged.size,
            "sha256": staged.sha256,
            "word_count": staged.word_count,
        },
        "metadata": {
            "file_name": staged.name,
            "run_id": file_execution_id,
            "extraction_llm": [
                {
                    "model_name": LLM_MODEL,
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                    "cost_in_dollars": f"{llm_cost:.8f}",
                }
            ],
            "embedding": [
                {
                    "model_name": EMBEDDING_MODEL,
                    "embedding_tokens": staged.word_count,
                    "cost_in_dollars": f"{staged.word_count * 0.02e-6:.8f}",
                }
            ],
            "extracted_text": staged.text,
        },
        "metrics": {"document": {"extraction_llm": {"time_taken(s)": elapsed}}},
    }


def _echoed_output(text: str) -> Any:
    """A document that is a JSON object with ECHO_KEY gets that value as its extraction, so
    tests can give results any shape (nested fields, odd names, lists)."""
    if not text.startswith("{"):
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document.get(ECHO_KEY) if isinstance(document, dict) else None


def shape_results(results: Sequence[FileResult], shaping: Shaping) -> list[FileResult]:
    """Apply the include_* flags (section 5.2) to copies of the items."""
    return [_shape_item(item, shaping) for item in results]


def _shape_item(item: FileResult, shaping: Shaping) -> FileResult:
    shaped = dict(item)
    result = shaped.get("result")
    if not isinstance(result, dict):
        return shaped
    result = shaped["result"] = dict(result)
    inner = result.get("metadata")
    if isinstance(inner, dict):
        inner = result["metadata"] = dict(inner)
        if shaping.include_extracted_text and "extracted_text" in inner:
            shaped["extracted_text"] = inner["extracted_text"]
        else:
            inner.pop("extracted_text", None)
        if shaping.include_metadata or shaping.include_metrics:
            shaped["metadata"] = {**shaped["metadata"], "usage": _usage(inner)}
    if not shaping.include_metadata:
        result.pop("metadata", None)
    if not shaping.include_metrics:
        result.pop("metrics", None)
    return shaped


def _usage(inner: dict[str, Any]) -> dict[str, Any]:
    """Aggregate the per-model cost arrays into the outer `usage` block."""
    llm = inner.get("extraction_llm", [])
    embedding = inner.get("embedding", [])
    prompt = sum(int(row["input_tokens"]) for row in llm)
    completion = sum(int(row["output_tokens"]) for row in llm)
    embedded = sum(int(row["embedding_tokens"]) for row in embedding)
    cost = sum(float(row["cost_in_dollars"]) for row in [*llm, *embedding])
    return {
        "embedding_tokens": embedded,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion + embedded,
        "cost_in_dollars": round(cost, 8),
    }
