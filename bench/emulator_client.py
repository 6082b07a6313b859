"""Load client for the emulator alone: threads doing POST (a 4 KiB file) then GET its status.

Run by bench/run.py as a process of its own; prints one JSON object with the counts.
    BENCH_UNSTRACT_API_KEY=... python bench/emulator_client.py --url URL --seconds 5 --threads 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass

import httpx

KEY_ENV = "BENCH_UNSTRACT_API_KEY"


@dataclass
class Counts:
    pairs: int = 0
    errors: int = 0


def one_pair(client: httpx.Client, url: str, content: bytes) -> bool:
    """POST a document asynchronously, then GET its status once; True if both answered well."""
    files = {"files": ("load.pdf", content, "application/pdf")}
    posted = client.post(url, data={"timeout": "0"}, files=files)
    if posted.status_code != 200:
        return False
    execution_id = posted.json()["message"]["execution_id"]
    status = client.get(url, params={"execution_id": execution_id})
    return status.status_code in (200, 422)  # 422: still running, which is a fine answer too


def worker(url: str, key: str, deadline: float, counts: Counts, lock: threading.Lock) -> None:
    content = (b"%PDF-1.4\n" + os.urandom(4096).hex().encode())[:4096]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(headers=headers, timeout=30.0) as client:
        while time.monotonic() < deadline:
            try:
                ok = one_pair(client, url, content)
            except httpx.HTTPError:
                ok = False
            with lock:
                if ok:
                    counts.pairs += 1
                else:
                    counts.errors += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the deployment URL")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    counts, lock = Counts(), threading.Lock()
    started = time.monotonic()
    deadline = started + args.seconds
    key = os.environ[KEY_ENV]
    threads = [
        threading.Thread(target=worker, args=(args.url, key, deadline, counts, lock))
        for _ in range(args.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    print(json.dumps({"pairs": counts.pairs, "errors": counts.errors, "seconds": elapsed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
