"""The emulator's direct multipart path reads every body as the email parser does, or declines.

The email parser is the reference (it was the emulator's only multipart reader); the direct
path must give the same parts for each body it accepts, and accept what HTTP clients send.
"""

from __future__ import annotations

import random
import re

import httpx
import pytest

from watcher.emulator.bodies import (
    BodyError,
    Upload,
    email_multipart_parts,
    parse_multipart,
    plain_multipart_parts,
)

URL = "http://127.0.0.1/deployment/api/org/api/"
B = "b0undary"
CT = f"multipart/form-data; boundary={B}"
_rng = random.Random(14)


def httpx_body(
    data: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]]
) -> tuple[str, bytes]:
    request = httpx.Request("POST", URL, data=data, files=files)
    return request.headers["content-type"], request.read()


def noisy(size: int) -> bytes:
    """Bytes rich in line ends, dashes and the boundary's letters."""
    alphabet = [b"\r", b"\n", b"\r\n", b"-", b"--", b"b0und", b"x", b"\x00", b"\xff", b" "]
    return b"".join(_rng.choice(alphabet) for _ in range(size))


# Names and types the direct path reads; those after them go to the email parser.
FILE_NAMES = ["a.pdf", "my file.pdf", " padded.pdf ", "dir/sub/c.txt", "..", ".", "", 'quo"te']
FILE_NAMES += ["eq=uals.pdf", "tab\there.pdf"]
ODD_FILE_NAMES = ["back\\slash.pdf", "semi;colon.pdf", "=?utf-8?q?encoded?=.pdf", "façade.pdf"]
CONTENT_TYPES = ["application/pdf", "TEXT/Plain"]
ODD_CONTENT_TYPES = ["text/plain; charset=utf-8", "multipart/mixed", "message/rfc822", "bogus", ""]
CONTENTS = [b"", b"x", b"one two three", b"\r\n", b"ends with cr\r", b"--", noisy(40), noisy(400)]


def named(name: str) -> tuple[str, bytes]:
    return httpx_body({"timeout": "0"}, [("files", (name, b"%PDF", "application/pdf"))])


def typed(kind: str) -> tuple[str, bytes]:
    return httpx_body({}, [("files", ("a.bin", b"data", kind))])


PLAIN_CLIENT_BODIES = [
    *map(named, FILE_NAMES),
    *map(typed, CONTENT_TYPES),
    *(
        httpx_body({"tags": "t", "n": "x\r\ny"}, [("files", ("a", c, "text/plain"))])
        for c in CONTENTS
    ),
    httpx_body({"a": "1", "a ": "2", "files": "plain"}, [("files", ("f.txt", b"f", "text/plain"))]),
    httpx_body({}, [("files", (f"{i}.txt", b"%d" % i, "text/plain")) for i in range(33)]),
]
ODD_CLIENT_BODIES = [
    *map(named, ODD_FILE_NAMES),
    *map(typed, ODD_CONTENT_TYPES),
    httpx_body({"unknown_field": "x"}, []),  # not multipart at all
]


def hand_body(*parts: bytes, tail: bytes = b"\r\n", boundary: str = B) -> bytes:
    delimiter = b"--" + boundary.encode()
    return (
        b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts) + delimiter + b"--" + tail
    )


FIELD = b'Content-Disposition: form-data; name="f"\r\n\r\nvalue'
FILE = b'Content-Disposition: form-data; name="files"; filename="a.txt"\r\nContent-Type: text/plain\r\n\r\nabc'
HAND_BODIES = [
    (CT, hand_body(FIELD, FILE)),
    (CT, hand_body(FIELD, FILE, tail=b"")),
    (CT, hand_body(FIELD, FILE, tail=b"\r\n\r\n")),
    (CT, hand_body(FIELD, FILE, tail=b"\r\nepilogue\r\n")),
    (CT, b"preamble\r\n" + hand_body(FIELD)),
    (CT, hand_body(FIELD).replace(b"\r\n", b"\n")),
    (CT, hand_body(FIELD)[:-9]),  # no closing delimiter
    (CT, hand_body()),
    (CT, hand_body(b"\r\nno headers")),
    (CT, hand_body(b"Content-Disposition: form-data\r\n\r\nno name")),
    (CT, hand_body(b'content-disposition: form-data; name="f"\r\ncontent-type: TEXT/X\r\n\r\nv')),
    (CT, hand_body(b'Content-Disposition:form-data; name="f"\r\n\r\nv')),
    (CT, hand_body(b"Content-Disposition: form-data; name=f\r\n\r\nv")),
    (CT, hand_body(b'Content-Disposition: form-data; name="f"; name="g"\r\n\r\nv')),
    (CT, hand_body(b'Content-Disposition: form-data; name="f" \r\n\r\nv')),
    (CT, hand_body(b'Content-Disposition: form-data;name="f"\r\n\r\nv')),
    (CT, hand_body(b'Content-Disposition: form-data; NAME="f"\r\n\r\nv')),
    (CT, hand_body(b'Content-Disposition: attachment; name="f"\r\n\r\nv')),
    (CT, hand_body(b"Content-Disposition: form-data; name=\"f\"; filename*=utf-8''x.pdf\r\n\r\nv")),
    (
        CT,
        hand_body(
            b'Content-Disposition: form-data; name="f"\r\nContent-Transfer-Encoding: base64\r\n\r\neA=='
        ),
    ),
    (CT, hand_body(b'Content-Disposition: form-data; name="f"\r\nX-Other: 1\r\n\r\nv')),
    (CT, hand_body(b'Content-Disposition: form-data; name="f"\r\n folded\r\n\r\nv')),
    (
        CT,
        hand_body(
            b'Content-Disposition: form-data; name="f"\r\nContent-Type: text/plain; name="n.txt"\r\n\r\nv'
        ),
    ),
    (CT, hand_body(b'Content-Disposition: form-data; name="f"\r\n\r\nv\r\n--b0undary-ish')),
    (CT, hand_body(b'Content-Disposition: form-data; name="f"\r\n\r\nv\n--b0undary\nmore')),
    (CT, hand_body(b'Content-Disposition: form-data; name="f"\r\n\r\nv\r\n--b0undary  \r\nx')),
    (CT, hand_body(b'Content-Disposition: form-data; name="caf\xc3\xa9"\r\n\r\nv')),
    (f'multipart/form-data; boundary="{B}"', hand_body(FIELD)),
    (f"Multipart/Form-Data; boundary={B}", hand_body(FIELD)),
    (f"multipart/form-data;boundary={B}", hand_body(FIELD)),
    (f"multipart/form-data; boundary={B}; charset=utf-8", hand_body(FIELD)),
    (f"multipart/form-data; boundary={B} ", hand_body(FIELD)),
    ("multipart/form-data; boundary=--x--", hand_body(FIELD, FILE, boundary="--x--")),
    (
        "multipart/form-data; boundary=a-",
        hand_body(FIELD, b'Content-Disposition: form-data; name="g"\r\n\r\n--a', boundary="a-"),
    ),
    ("multipart/form-data", hand_body(FIELD)),
    ("multipart/form-data; boundary=", hand_body(FIELD)),
]


def case_id(value: object) -> str | None:
    """A content type's id without httpx's random boundary: every pytest-xdist worker
    collects the same test names."""
    if isinstance(value, str):
        return re.sub(r"boundary=[0-9a-f]{32}", "boundary=random", value)
    return None


def reference(content_type: str, body: bytes) -> object:
    try:
        return email_multipart_parts(content_type, body)
    except BodyError as exc:
        return exc.response


@pytest.mark.parametrize(
    ("content_type", "body"), PLAIN_CLIENT_BODIES + ODD_CLIENT_BODIES + HAND_BODIES, ids=case_id
)
def test_direct_path_agrees_with_the_email_parser_or_declines(
    content_type: str, body: bytes
) -> None:
    direct = plain_multipart_parts(content_type, body)
    if direct is not None:
        assert direct == reference(content_type, body)


@pytest.mark.parametrize(("content_type", "body"), PLAIN_CLIENT_BODIES, ids=case_id)
def test_what_clients_send_takes_the_direct_path(content_type: str, body: bytes) -> None:
    assert plain_multipart_parts(content_type, body) is not None


def test_random_contents_agree() -> None:
    for _ in range(200):
        parts = [
            ("files", (f"{i}.bin", noisy(_rng.randrange(60)), "application/pdf")) for i in range(3)
        ]
        content_type, body = httpx_body({"timeout": "0"}, parts)
        direct = plain_multipart_parts(content_type, body)
        assert direct is not None and direct == reference(content_type, body)


def test_form_values() -> None:
    content_type, body = httpx_body(
        {"files": "plain", "timeout": "0"},
        [
            ("files", ("dir/a.pdf", b"%PDF", "application/pdf")),
            ("files", ("..", b"x", "text/plain")),
        ],
    )
    assert parse_multipart(content_type, body) == {
        "files": ["plain", Upload("a.pdf", b"%PDF", "application/pdf")],
        "timeout": ["0"],
    }
