"""Every API kind this watcher speaks, in one list: how its client is built from its config
section, and how its stored answers read (for files whose pipeline's config is not at hand)."""

from __future__ import annotations

from typing import Any

from watcher import llmwhisperer, unstract
from watcher.api_config import LLMWhispererApiConfig, UnstractApiConfig
from watcher.backend import Backend, ResultFormat
from watcher.flatten import cost_in_dollars
from watcher.jobs import Job

RESULT_FORMATS: dict[str, ResultFormat] = {
    found.kind: found for found in (unstract.UnstractResults(), llmwhisperer.LLMWhispererResults())
}


def build_backend(api: UnstractApiConfig | LLMWhispererApiConfig) -> Backend:
    """The API client of a pipeline's `[pipelines.api]` section."""
    match api:
        case LLMWhispererApiConfig():
            return llmwhisperer.build(api)
        case UnstractApiConfig():
            return unstract.build(api)


def result_format(kind: Any) -> ResultFormat | None:
    """The format of a result file's `"backend"`; None for a kind this watcher does not know."""
    return RESULT_FORMATS.get(kind) if isinstance(kind, str) else None


def stored_usage(body: Any, file_name: str) -> Any:
    """The usage metadata in a stored answer of any kind: each kind finds only its own."""
    for found in RESULT_FORMATS.values():
        usage = found.usage(body, file_name)
        if usage is not None:
            return usage
    return None


def stored_cost(job: Job) -> float | None:
    """The LLM cost a job's stored answer reports (with include_metadata), if any."""
    return cost_in_dollars(stored_usage(job.result_body, job.upload_name))
