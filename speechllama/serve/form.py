"""A multipart/form-data body read from the request stream into memory, with the upload cap enforced
while reading: no temporary file, and an oversize body is refused (413) without being kept. A body
that takes longer than the read timeout to arrive (a slow or stalled client) is refused (408) and
its connection closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartState, parse_options_header
from starlette.requests import Request

from .errors import APIError

MAX_PARTS = 64  # fields + files in one form; OpenAI's transcription form has fewer than ten
# an oversize body is read on (and dropped) up to this many times the cap, so that the client gets to
# read the 413 instead of a connection reset; past that the connection is closed
DRAIN_FACTOR = 4


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, list[Upload]] = field(default_factory=dict)

    def value(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None


class _Collector:
    """python-multipart callbacks that gather each part's headers and bytes."""

    def __init__(self, form: Form):
        self.form, self.parts = form, 0
        self.headers: dict[bytes, bytes] = {}
        self.header_field, self.header_value, self.data = b"", b"", []

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.on_field,
                "on_header_value": self.on_value, "on_header_end": self.header_end,
                "on_part_data": self.part_data, "on_part_end": self.part_end}

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise APIError(400, f"too many form fields (more than {MAX_PARTS})")
        self.headers, self.data = {}, []

    def on_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self.data.append(data[start:end])

    def part_end(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        body = b"".join(self.data)
        if b"filename" in options:
            upload = Upload(options[b"filename"].decode("utf-8", "replace"),
                            self.headers.get(b"content-type", b"").decode("latin-1"), body)
            self.form.files.setdefault(name, []).append(upload)
        else:
            self.form.fields.setdefault(name, []).append(body.decode("utf-8", "replace"))


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise APIError(400, "expected a multipart/form-data body with the audio in a 'file' field "
                            f"(got Content-Type {request.headers.get('content-type', 'none')!r})")
    return options[b"boundary"]


async def _refuse_oversize(stream: AsyncIterator[bytes], seen: int, max_bytes: int) -> None:
    async for chunk in stream:  # read on and drop, so that the client reads the answer
        seen += len(chunk)
        if seen > DRAIN_FACTOR * max_bytes:
            break
    raise APIError(413, f"request body too large: the upload limit is {max_bytes / 2**20:g} MB "
                        "(speechllama serve --max-upload-mb)", "file", "file_too_large")


async def read_form(request: Request, max_bytes: int, timeout_s: float | None = None) -> Form:
    """The request's multipart form; 413 as soon as the body is known to exceed ``max_bytes``
    (from Content-Length before reading, else while reading), 400 for a malformed body, 408 when the
    whole body has not arrived within ``timeout_s`` seconds (None: no limit). A client that
    disconnects mid-upload raises Starlette's ClientDisconnect (errors.Guard logs it in one line)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_form(request, max_bytes)
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout_s:g} s "
                            "(speechllama serve --read-timeout-s)", None, "timeout",
                       {"Connection": "close"}) from None


async def _read_form(request: Request, max_bytes: int) -> Form:
    parser_form = Form()
    collector = _Collector(parser_form)
    parser = MultipartParser(_boundary(request), collector.callbacks())
    stream, seen = request.stream(), 0
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        await _refuse_oversize(stream, 0, max_bytes)
    async for chunk in stream:
        seen += len(chunk)
        if seen > max_bytes:
            await _refuse_oversize(stream, seen, max_bytes)
        try:
            parser.write(chunk)
        except MultipartParseError as e:
            raise APIError(400, f"malformed multipart body: {e}") from e
    if parser.state != MultipartState.END:
        raise APIError(400, "malformed multipart body: it ends before its closing boundary")
    return parser_form
