"""Request bodies decoded the way DRF's default parsers would: multipart, form, JSON.

A multipart body reads as the standard library's email parser reads it. That parser takes
about 1.4 ms for one 4 KiB upload, five times the rest of a request, so the plain shape HTTP
clients send (httpx, requests, curl: CRLF lines, one `boundary` parameter, parts with a
quoted name and filename and a bare Content-Type) is split directly, and anything else still
goes through the email parser. The direct path gives what the email parser would, or
declines: tests/test_emulator_bodies.py compares the two over many shapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qs

from .responses import FieldError, Response, std_error, validation_error

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PLAIN_BOUNDARY = re.compile(r"multipart/form-data; boundary=([0-9A-Za-z'()+_,./:?-]{1,70})", re.I)
_PLAIN_HEADER = re.compile(rb"(content-disposition|content-type): ([\x20-\x7e]*)", re.I)
# Quoted values without what the email parser reads specially: escapes, `;`, encoded words.
_PLAIN_VALUE = r'"(?:[^"\\;=]|=(?!\?))*"'
_PLAIN_DISPOSITION = re.compile(f"form-data((?:; (?:name|filename)={_PLAIN_VALUE})+)")
_PLAIN_PARAM = re.compile(f"; (name|filename)=({_PLAIN_VALUE})")
_PLAIN_TYPE = re.compile(f"{_TOKEN}/{_TOKEN}")
_NESTED_TYPES = ("multipart/", "message/")  # the email parser would parse these parts further
_DEFAULT_PART_TYPE = "text/plain"  # what the email parser gives a part without Content-Type


@dataclass(frozen=True)
class Upload:
    """One uploaded file part."""

    name: str
    content: bytes
    content_type: str = "application/octet-stream"


FormValue = str | Upload
FormData = Mapping[str, Sequence[FormValue]]
_Part = tuple[str, str | None, str, bytes]  # name, file name (None: a plain field), type, content


class BodyError(Exception):
    """The body could not be parsed at all; carries the response DRF would give."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def parse_body(content_type: str | None, body: bytes) -> FormData:
    """Decode the body the way DRF's default parsers would (multipart, form, JSON)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if not media_type:
        return {}
    if media_type == "multipart/form-data":
        return parse_multipart(content_type or "", body)
    if media_type == "application/x-www-form-urlencoded":
        return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    if media_type == "application/json":
        return _parse_json(body)
    detail = f'Unsupported media type "{content_type}" in request.'
    raise BodyError(std_error(415, detail, code="unsupported_media_type"))


def parse_multipart(content_type: str, body: bytes) -> FormData:
    """Form fields and uploads of a multipart body, as the email parser reads them."""
    parts = plain_multipart_parts(content_type, body)
    if parts is None:
        parts = email_multipart_parts(content_type, body)
    return _form(parts)


def _form(parts: Sequence[_Part]) -> FormData:
    fields: dict[str, list[FormValue]] = {}
    files: dict[str, list[FormValue]] = {}
    for name, filename, part_type, content in parts:
        if filename is None:
            fields.setdefault(name, []).append(content.decode("utf-8", "replace"))
        elif clean := _sanitize_file_name(filename):
            files.setdefault(name, []).append(Upload(clean, content, part_type))
    # Django merges files after the plain values of the same name (QueryDict.update).
    for name, uploads in files.items():
        fields.setdefault(name, []).extend(uploads)
    return fields


def email_multipart_parts(content_type: str, body: bytes) -> list[_Part]:
    """Every part with a name, read by the email parser (which reads any shape)."""
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    boundary = message.get_boundary() if isinstance(message, EmailMessage) else None
    if boundary is None or not isinstance(message, EmailMessage):
        detail = f"Multipart form parse error - Invalid boundary in multipart: {boundary}"
        raise BodyError(std_error(400, detail, code="parse_error"))
    parts: list[_Part] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        parts.append((name, part.get_filename(), part.get_content_type(), content))
    return parts


def plain_multipart_parts(content_type: str, body: bytes) -> list[_Part] | None:
    """The parts of a body in the plain shape, or None for any other shape."""
    match = _PLAIN_BOUNDARY.fullmatch(content_type)
    chunks = None if match is None else _plain_chunks(body, b"--" + match[1].encode())
    if chunks is None:
        return None
    parts = [_plain_part(chunk) for chunk in chunks]
    return None if None in parts else [part for part in parts if part is not None]


def _plain_chunks(body: bytes, delimiter: bytes) -> list[bytes] | None:
    """What lies between CRLF-framed delimiter lines; None if the boundary shows up elsewhere."""
    close = b"\r\n" + delimiter + b"--"
    body = body.removesuffix(b"\r\n")
    if not (body.startswith(delimiter + b"\r\n") and body.endswith(close)):
        return None
    chunks = body[len(delimiter) + 2 : -len(close)].split(b"\r\n" + delimiter + b"\r\n")
    # The email parser takes any line that starts with the delimiter as one.
    return chunks if body.count(delimiter) == len(chunks) + 1 else None


def _plain_part(chunk: bytes) -> _Part | None:
    head, separator, content = chunk.partition(b"\r\n\r\n")
    headers: dict[bytes, str] = {}
    for line in head.split(b"\r\n"):
        match = _PLAIN_HEADER.fullmatch(line)
        if match is None or match[1].lower() in headers:
            return None
        headers[match[1].lower()] = match[2].decode("ascii")
    disposition = _PLAIN_DISPOSITION.fullmatch(headers.get(b"content-disposition", ""))
    part_type = _plain_part_type(headers.get(b"content-type"))
    if not separator or disposition is None or part_type is None:
        return None
    params = dict(_PLAIN_PARAM.findall(disposition[1]))
    if "name" not in params or len(params) < disposition[1].count("; "):
        return None  # no name, or a parameter given twice
    filename = params.get("filename")
    shown_name = None if filename is None else filename[1:-1].strip()
    return params["name"][1:-1], shown_name, part_type, content


def _plain_part_type(value: str | None) -> str | None:
    if value is None:
        return _DEFAULT_PART_TYPE
    if _PLAIN_TYPE.fullmatch(value) is None or value.lower().startswith(_NESTED_TYPES):
        return None
    return value.lower()


def _sanitize_file_name(name: str) -> str:
    """Django keeps only the base name and skips parts without a usable one."""
    base = name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1].strip()
    return "" if base in {".", ".."} else base


def _parse_json(body: bytes) -> FormData:
    try:
        data = json.loads(body or b"null")
    except ValueError as exc:
        raise BodyError(std_error(400, f"JSON parse error - {exc}", code="parse_error")) from exc
    if not isinstance(data, dict):
        kind = type(data).__name__
        detail = f"Invalid data. Expected a dictionary, but got {kind}."
        raise BodyError(validation_error([FieldError(detail, "non_field_errors")]))
    return {
        k: [_json_text(x) for x in (v if isinstance(v, list) else [v])] for k, v in data.items()
    }


def _json_text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)
