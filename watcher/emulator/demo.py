"""Ready-made emulators for the CLI and the README demo: one Unstract deployment, and an
LLMWhisperer v2 service accepting one key."""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterable

from .faults import Faults, WhisperFaults
from .llmwhisperer import CONTROL_PREFIX, LLMWhispererEmulator
from .results import FAIL_MARKER
from .unstract import Deployment, UnstractEmulator

DEMO_ORG = "org_demo"
DEMO_API = "invoices"
DEMO_KEY = "6f1c2a8e-3b7d-4c59-9e21-0d4b8a7f5c13"
LLMW_DEMO_KEY = "9c4e1b7a2f6d4e8ab3c5d7e9f1a2b4c6"


def demo_emulator(
    execution_seconds: float = 0.5,
    org_limit: int = 20,
    result_ttl_seconds: float = 10800,
    max_parallel_file_batches: int = 4,
) -> UnstractEmulator:
    """An emulator serving DEMO_ORG/DEMO_API, which accepts DEMO_KEY."""
    emulator = UnstractEmulator(
        org_limit=org_limit,
        result_ttl_seconds=result_ttl_seconds,
        max_parallel_file_batches=max_parallel_file_batches,
    )
    emulator.add_deployment(
        Deployment(
            org=DEMO_ORG,
            api=DEMO_API,
            keys=[DEMO_KEY],
            execution_seconds=execution_seconds,
        )
    )
    return emulator


def llmwhisperer_demo_emulator(
    processing_seconds: float = 0.5, status_generation: str = "current"
) -> LLMWhispererEmulator:
    """An LLMWhisperer v2 emulator which accepts LLMW_DEMO_KEY."""
    return LLMWhispererEmulator(
        keys=[LLMW_DEMO_KEY],
        processing_seconds=processing_seconds,
        status_generation=status_generation,
    )


def demo_help() -> str:
    """What `unstract-watcher emulator --help` tells beyond its options: the demo's URLs and
    keys, how to make a document fail, and the fault knobs (built from the code, so true)."""
    unstract_knobs = _wrapped(f.name for f in dataclasses.fields(Faults))
    whisper_knobs = _wrapped(f.name for f in dataclasses.fields(WhisperFaults))
    return f"""\
what it serves (one port, both APIs):
  Unstract API deployment  /deployment/api/{DEMO_ORG}/{DEMO_API}/  key {DEMO_KEY}
  LLMWhisperer v2          /api/v2  key {LLMW_DEMO_KEY}
  Any other key answers 401; any other deployment 404 "API not found".

outcomes:
  A document whose bytes contain {FAIL_MARKER.decode()} fails (the Unstract execution ends in
  ERROR, the whisper fails); any other document succeeds after --execution-seconds, or after
  N seconds if its bytes contain EMULATOR-SECONDS=N (Unstract).

faults, while it runs (POST a JSON object of knob values; GET shows them):
  /_emulator/faults (Unstract):
{unstract_knobs}
  {CONTROL_PREFIX}faults:
{whisper_knobs}
  Counts in /_emulator/stats and {CONTROL_PREFIX}stats.
"""


def _wrapped(names: Iterable[str]) -> str:
    return textwrap.fill(
        ", ".join(names), width=90, initial_indent="    ", subsequent_indent="    "
    )
