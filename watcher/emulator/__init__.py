"""A faithful in-process emulator of the Unstract API deployment endpoints.

Used by the tests, the benchmark and the README demo; see `unstract.py` for the model and
`server.py` for the HTTP wiring.
"""

from .demo import DEMO_API, DEMO_KEY, DEMO_ORG, demo_emulator
from .executions import Status
from .faults import Faults
from .server import EmulatorServer, serve_forever
from .stats import EmulatorStats
from .unstract import Deployment, GlobalKey, UnstractEmulator

__all__ = [
    "DEMO_API",
    "DEMO_KEY",
    "DEMO_ORG",
    "Deployment",
    "EmulatorServer",
    "EmulatorStats",
    "Faults",
    "GlobalKey",
    "Status",
    "UnstractEmulator",
    "demo_emulator",
    "serve_forever",
]
