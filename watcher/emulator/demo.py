"""A ready-made emulator with one deployment, for the CLI and the README demo."""

from __future__ import annotations

from .unstract import Deployment, UnstractEmulator

DEMO_ORG = "org_demo"
DEMO_API = "invoices"
DEMO_KEY = "6f1c2a8e-3b7d-4c59-9e21-0d4b8a7f5c13"


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
