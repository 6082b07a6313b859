"""Ready-made emulators for the CLI and the README demo: one Unstract deployment, and an
LLMWhisperer v2 service accepting one key."""

from __future__ import annotations

from .llmwhisperer import LLMWhispererEmulator
from .unstract import Deployment, UnstractEmulator

DEMO_ORG = "org_demo"
DEMO_API = "invoices"
DEMO_KEY = "6f1c2a8e-3b7d-4c59-9e21-0d4b8a7f5c13"
LLMW_DEMO_KEY = "9c4e1b7a2f6d4e8ab3c5d7e9f1a2b4c6"


def demo_emulator(
    execution_seconds: float = 0.5,
    org_limit: int = 20,
    result_ttl_seconds: float = 10800,
) -> UnstractEmulator:
    """An emulator serving DEMO_ORG/DEMO_API, which accepts DEMO_KEY."""
    emulator = UnstractEmulator(org_limit=org_limit, result_ttl_seconds=result_ttl_seconds)
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
