"""`unstract-watcher demo`: the whole pipeline on sample documents, with nothing to set up.

It starts the built-in emulator on loopback (port 8765, or a free one if that is taken), writes
a config next to the sample documents (so you can read and reuse it: its first lines say how),
and runs `run --once` against SQLite. With `--serve` the emulator stays up afterwards, so that
config can be run again as its first lines say.
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from watcher.config import ConfigError

if TYPE_CHECKING:
    from watcher.emulator import EmulatorServer

DEMO_PORT = 8765  # the `emulator` command's default too

SCANS = {
    "scans/delivery-note-77.txt": "DELIVERY NOTE 77\nShipped: 3 pallets\nSigned: J. Doe\n",
    "scans/contract-page-1.txt": "SERVICE AGREEMENT\nThis agreement is made between ACME and\n"
    "Blue River on 1 November 2026.\n\fPage 2: terms and conditions.\n",
}

SAMPLES = {
    "invoice-0001.txt": "INVOICE 0001\nACME Tools Ltd\nDate: 2026-11-02\n"
    "2 x Hammer @ 12.50\n1 x Saw @ 30.00\nTotal: 55.00 EUR\n",
    "invoice-0002.txt": "INVOICE 0002\nBlue River Supplies\nDate: 2026-11-09\n"
    "10 x Paper ream @ 4.20\nTotal: 42.00 EUR\n",
    "receipts/taxi-2026-11-14.txt": "RECEIPT\nCity Cabs\n2026-11-14 18:42\nFare: 23.80 EUR\n",
    "expenses-november.csv": "date,vendor,amount\n2026-11-02,ACME Tools,55.00\n"
    "2026-11-09,Blue River,42.00\n2026-11-14,City Cabs,23.80\n",
    "scanned-letter.pdf": "",  # filled with a one-page PDF below
}


CONFIG = """\
# Written by `unstract-watcher demo`. Try it again: keep the demo's emulator ({base}) up with
#   {serve}
# then, in another terminal (the keys are the emulator's public demo keys):
#   {run}
[database]
url = "sqlite:///{state}"

[daemon]
upload_workers = 2
log_level = "info"
log_format = "console"

[[pipelines]]
name = "demo"
watch_dir = "{inbox}"
settle_seconds = 0.2
output_dir = "{results}"

[pipelines.api]
kind = "unstract"
url = "{url}"
api_key_env = "DEMO_UNSTRACT_API_KEY"
tags = ["demo"]
include_metadata = true
max_in_flight = 4
poll_initial_seconds = 0.2

# Scanned pages go to LLMWhisperer for text extraction instead.
[[pipelines]]
name = "scans"
watch_dir = "{scans}"
settle_seconds = 0.2
output_dir = "{scan_results}"

[pipelines.api]
kind = "llmwhisperer"
url = "{llmw_url}"
api_key_env = "DEMO_LLMWHISPERER_API_KEY"
mode = "high_quality"
write_text_file = true
poll_initial_seconds = 0.2
"""


def tiny_pdf(text: str) -> bytes:
    """A valid one-page PDF showing `text` (enough for a demo; the emulator reads bytes)."""
    stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def write_samples(inbox: Path, samples: dict[str, str]) -> None:
    for name, text in samples.items():
        path = inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content = tiny_pdf("Dear customer, your order 4711 has shipped.") if not text else text
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def run_demo(
    folder: Path,
    run_once: Callable[[Path], int],
    port: int | None = None,
    serve: bool = False,
) -> int:
    """Samples, the emulator, one `run --once` of its config (`run_once` returns the exit
    code); with `serve`, the emulator stays up after."""
    folder = folder.resolve()
    inbox, results = folder / "inbox", folder / "results"
    scans, scan_results = folder / "scans", folder / "scan-results"
    for created in (results, scan_results):
        created.mkdir(parents=True, exist_ok=True)
    write_samples(inbox, SAMPLES)
    write_samples(folder, SCANS)
    server = _start_emulator(port)
    try:
        config_path, run_line = _write_config(folder, server, port)
        code = run_once(config_path)
        for title, where in (("Unstract results", results), ("LLMWhisperer results", scan_results)):
            print(f"\n{title} in {where}:")
            for path in sorted(where.rglob("*.*")):
                print(f"  {path.relative_to(where)}")
        if serve:
            _serve_until_stopped(server, config_path, run_line, [inbox, scans])
        else:
            print(
                f"\nConfig used: {config_path}; its first lines say how to run it again "
                "(the emulator it names has stopped: `demo --serve` keeps it up)"
            )
    finally:
        server.stop()
    return code


def _start_emulator(port: int | None) -> EmulatorServer:
    from watcher.emulator import EmulatorServer, demo_emulator, llmwhisperer_demo_emulator
    from watcher.emulator.llmwhisperer import mount_llmwhisperer

    emulator = demo_emulator(execution_seconds=0.5)
    try:
        server = EmulatorServer(
            emulator, host="127.0.0.1", port=DEMO_PORT if port is None else port
        )
    except OSError as exc:
        if port is not None or exc.errno != errno.EADDRINUSE:
            raise ConfigError(
                f"--port {port}: cannot serve the emulator there: {exc.strerror}"
            ) from None
        server = EmulatorServer(emulator, host="127.0.0.1", port=0)  # 8765 is taken: any port
    mount_llmwhisperer(server, llmwhisperer_demo_emulator(processing_seconds=0.5))
    return server.start()


def _write_config(folder: Path, server: EmulatorServer, port: int | None) -> tuple[Path, str]:
    """The demo's config, whose first lines say how to run it again; and that command."""
    from watcher.emulator import DEMO_API, DEMO_KEY, DEMO_ORG, LLMW_DEMO_KEY
    from watcher.emulator.llmwhisperer import llmwhisperer_url

    config_path = folder / "config.toml"
    command = _own_command()
    serve = [*command, "demo", "--serve", "--dir", str(folder)]
    if port:  # an explicit port; the default one, or any free one, is found again
        serve += ["--port", str(port)]
    run = (
        f"DEMO_UNSTRACT_API_KEY={DEMO_KEY} DEMO_LLMWHISPERER_API_KEY={LLMW_DEMO_KEY} "
        f"{shlex.join([*command, 'run', '--once', '--config', str(config_path)])}"
    )
    config_path.write_text(
        CONFIG.format(
            base=server.base_url,
            serve=shlex.join(serve),
            run=run,
            state=folder / "state.db",
            inbox=folder / "inbox",
            results=folder / "results",
            url=server.deployment_url(DEMO_ORG, DEMO_API),
            scans=folder / "scans",
            scan_results=folder / "scan-results",
            llmw_url=llmwhisperer_url(server),
        )
    )
    os.environ["DEMO_UNSTRACT_API_KEY"] = DEMO_KEY
    os.environ["DEMO_LLMWHISPERER_API_KEY"] = LLMW_DEMO_KEY
    return config_path, run


def _own_command() -> list[str]:
    """How this program is started from a shell: the venv's script when there is one."""
    script = Path(sys.executable).parent / "unstract-watcher"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "watcher.cli"]


def _serve_until_stopped(
    server: EmulatorServer, config_path: Path, run_line: str, folders: list[Path]
) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # run_daemon's handlers served the run
        signal.signal(signum, lambda _signum, _frame: stop.set())
    print(
        f"\nThe emulator stays up on {server.base_url}, as {config_path} names it. Put "
        f"documents into {' or '.join(map(str, folders))}, then run in another terminal:\n"
        f"  {run_line}\nCtrl-C stops the emulator.",
        flush=True,
    )
    while not stop.wait(0.5):
        pass
