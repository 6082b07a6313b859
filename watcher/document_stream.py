"""A document as its upload reads it: in chunks from one open file, hashed on the way.

The bytes sent must be the bytes that were hashed, yet a document is never held whole in
memory. So the upload hashes what it reads, and before it hands over the document's last
chunk it compares the digest with the job's. A document that changed meanwhile raises
`Abandoned` there: the request stops before its last byte (the multipart's closing boundary
never goes out either), the connection is closed, and the server, which was promised a
Content-Length it never got, has no complete request to act on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from watcher.files import TooLarge, open_regular
from watcher.jobs import Decision, Job, decide_changed, decide_content, decide_unreadable

READ_BYTES = 256 * 1024  # one read, one hash update, one write: the memory of an upload
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Abandoned(Exception):
    """An upload stopped before its last byte; `decision` says what becomes of the job."""

    def __init__(self, job: Job, decision: Decision) -> None:
        super().__init__(decision.error)
        self.job = job
        self.decision = decision


class DocumentStream:
    """One job's document, open for its upload: `size` bytes, read by `chunks`."""

    def __init__(self, job: Job, handle: BinaryIO, size: int, limit: int) -> None:
        self.job = job
        self.size = size
        self._handle = handle
        self._limit = limit

    def __enter__(self) -> DocumentStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._handle.close()

    def chunks(self) -> Iterator[bytes]:
        """The document from its first byte; raises Abandoned instead of giving the last
        chunk of bytes that are not the ones hashed (or of a file that could not be read)."""
        digest = hashlib.sha256()
        offset = 0
        while True:
            remaining = self.size - offset
            last = remaining <= READ_BYTES
            # The last read asks for one byte more: one past the size shows a file that grew.
            chunk = self._read(offset, remaining + 1 if last else READ_BYTES)
            digest.update(chunk)
            offset += len(chunk)
            if last or len(chunk) < READ_BYTES:  # the end, or a file that shrank
                if offset != self.size or digest.hexdigest() != self.job.sha256:
                    raise Abandoned(self.job, decide_changed(while_sending=True))
                yield chunk
                return
            yield chunk

    def _read(self, offset: int, count: int) -> bytes:
        try:
            return os.pread(self._handle.fileno(), count, offset)
        except OSError as exc:
            raise Abandoned(self.job, decide_unreadable(exc, self._limit)) from exc


def open_document(job: Job, path: Path, limit: int) -> DocumentStream | Decision:
    """The job's document, open to be streamed; or the decision not to send it: the file is
    gone, unreadable, larger than `limit`, or empty."""
    try:
        handle = open_regular(path)
        size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        return decide_unreadable(exc, limit)
    unsent = _unsent(job, size, limit)
    if unsent is not None:
        handle.close()
        return unsent
    return DocumentStream(job, handle, size, limit)


def _unsent(job: Job, size: int, limit: int) -> Decision | None:
    if size > limit:
        return decide_unreadable(TooLarge(size), limit)
    return decide_content(job, _EMPTY_SHA256, 0) if not size else None
