"""A faithful in-process emulator of the Unstract API deployment and LLMWhisperer v2 endpoints.

Used by the tests, the benchmark and the README demo; see `unstract.py` and `llmwhisperer.py`
for the models and `server.py` for the HTTP wiring.
"""

from .demo import (
    DEMO_API,
    DEMO_KEY,
    DEMO_ORG,
    LLMW_DEMO_KEY,
    demo_emulator,
    llmwhisperer_demo_emulator,
)
from .executions import Status
from .faults import Faults, WhisperFaults
from .llmwhisperer import LLMWhispererEmulator, llmwhisperer_url, mount_llmwhisperer
from .server import EmulatorServer, serve_forever
from .stats import EmulatorStats, WhisperStats
from .unstract import Deployment, GlobalKey, UnstractEmulator
from .whisper_jobs import StatusGeneration

__all__ = [
    "DEMO_API",
    "DEMO_KEY",
    "DEMO_ORG",
    "LLMW_DEMO_KEY",
    "Deployment",
    "EmulatorServer",
    "EmulatorStats",
    "Faults",
    "GlobalKey",
    "LLMWhispererEmulator",
    "Status",
    "StatusGeneration",
    "UnstractEmulator",
    "WhisperFaults",
    "WhisperStats",
    "demo_emulator",
    "llmwhisperer_demo_emulator",
    "llmwhisperer_url",
    "mount_llmwhisperer",
    "serve_forever",
]
