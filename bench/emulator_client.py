"""Load client for the emulator alone: connections doing POST (a 4 KiB file) then GET its status.

Run by bench/run.py as a process of its own; prints one JSON object with the counts.
    BENCH_UNSTRACT_API_KEY=... python bench/emulator_client.py --url URL --seconds 5 --connections 8

It has to be much cheaper than the server it measures, on the same two cores: a general HTTP
client (httpx: about 1 ms of CPU per request here) would measure itself. So it speaks just
enough HTTP/1.1 over asyncio streams: requests built once as bytes, answers read by
Content-Length, one keep-alive connection per concurrent client, reconnecting after an error,
on uvloop (the emulator's own event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import uvloop

KEY_ENV = "BENCH_UNSTRACT_API_KEY"
OK_STATUS = (200, 422)  # 422 on a GET: still running, which is a fine answer too


@dataclass
class Counts:
    pairs: int = 0
    errors: int = 0


class BadAnswer(Exception):
    """An answer this client does not expect: counted as an error, the connection dropped."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    key: str

    def post(self, content: bytes) -> bytes:
        """The POST of one document, as httpx sends it (multipart, timeout=0)."""
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="timeout"\r\n\r\n0\r\n'
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                'filename="load.pdf"\r\nContent-Type: application/pdf\r\n\r\n'
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        content_type = f"multipart/form-data; boundary={boundary}"
        return self._head("POST", self.path, content_type, len(body)) + body

    def get(self, execution_id: str) -> bytes:
        return self._head("GET", f"{self.path}?execution_id={execution_id}", None, None)

    def _head(
        self, method: str, target: str, content_type: str | None, length: int | None
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines.append(f"Authorization: Bearer {self.key}")
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one response: (status, body); the body by Content-Length, which the server sends."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length = None
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length is None:
        raise BadAnswer(f"no Content-Length in a {status} answer")
    return status, await reader.readexactly(length)


async def one_pair(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Target, post: bytes
) -> None:
    """POST a document asynchronously, then GET its status once."""
    writer.write(post)
    status, body = await answer(reader)
    if status != 200:
        raise BadAnswer(f"POST answered {status}")
    execution_id = json.loads(body)["message"]["execution_id"]
    writer.write(target.get(execution_id))
    status, _ = await answer(reader)
    if status not in OK_STATUS:
        raise BadAnswer(f"GET answered {status}")


async def connection(target: Target, deadline: float, counts: Counts) -> None:
    """Pairs on one keep-alive connection until the deadline; a new connection after an error."""
    content = (b"%PDF-1.4\n" + os.urandom(4096).hex().encode())[:4096]
    post = target.post(content)
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            while time.monotonic() < deadline:
                await one_pair(reader, writer, target, post)
                counts.pairs += 1
        except (OSError, EOFError, asyncio.IncompleteReadError, BadAnswer, ValueError, KeyError):
            counts.errors += 1
        finally:
            writer.close()


async def load(target: Target, seconds: float, connections: int) -> dict[str, float]:
    counts = Counts()
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(connection(target, deadline, counts) for _ in range(connections)))
    elapsed = time.monotonic() - started
    return {"pairs": counts.pairs, "errors": counts.errors, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the deployment URL")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    url = urlsplit(args.url)
    target = Target(url.hostname or "127.0.0.1", url.port or 80, url.path, os.environ[KEY_ENV])
    cpu_before = time.process_time()
    counts = uvloop.run(load(target, args.seconds, args.connections))
    counts["cpu_seconds"] = time.process_time() - cpu_before
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
