"""Bounds on what an outsider can make us read: body size, gzip expansion and JSON depth (SPEC §8).

    read_body(request, max_bytes)   the (decompressed) body, never buffering more than max_bytes
    parse_json(body, max_depth)     orjson, after a cheap check of how deeply `[`/`{` nest
    json_depth_ok(body, max_depth)  that check alone

Errors, each answered with a 400-class status and a JSON body built from `code`/`message`/`limit`:

    RequestError
    +-- BodyTooLarge    over max_request_bytes after decompression (a gzip bomb is just this)
    +-- BadEncoding     unsupported Content-Encoding, broken or truncated gzip
    +-- InvalidJson     not JSON
    +-- TooDeep         JSON nested deeper than max_depth

Decompression stops one byte past the limit whatever the compression ratio, so memory stays
bounded by max_request_bytes.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

import orjson
from starlette.requests import ClientDisconnect, Request

MAX_JSON_DEPTH: Final = 32

_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_ESCAPED_BACKSLASH: Final = b"\\\\"
_ESCAPED_QUOTE: Final = b'\\"'
# Everything but quotes and brackets is deleted before the depth count, and brackets become "("
# and ")" (one C pass of bytes.translate), so that one bytes.replace peels every innermost pair.
_NOT_STRUCTURE: Final = bytes(b for b in range(256) if b not in b'"[]{}')
_BRACKETS_AS_PARENS: Final = bytes.maketrans(b"[{]}", b"(())")
_INNERMOST_PAIR: Final = b"()"


class RequestError(Exception):
    """A request body we refuse; `code` names the reason, `limit` the bound it broke (if any)."""

    code = "invalid_request"
    status = 400

    def __init__(self, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.limit = limit


class BodyTooLarge(RequestError):
    code = "request_too_large"


class BadEncoding(RequestError):
    code = "bad_encoding"


class InvalidJson(RequestError):
    code = "invalid_json"


class TooDeep(RequestError):
    code = "json_too_deep"


class Disconnected(Exception):
    """The client went away before sending its whole body."""


def too_large(max_bytes: int) -> BodyTooLarge:
    return BodyTooLarge("request too large", f"request body exceeds {max_bytes} bytes")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, gunzipped if so declared, raising as soon as it passes `max_bytes`."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in {"gzip", "x-gzip"}:
        decoder: zlib._Decompress | None = zlib.decompressobj(_GZIP_WBITS)
    elif encoding in {"", "identity"}:
        decoder = None
    else:
        raise BadEncoding("unsupported Content-Encoding (use gzip or none)")

    declared = request.headers.get("content-length")
    # A gzip body larger than the decompressed limit is nonsense for JSON, so one bound serves both.
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)

    body = bytearray()
    received = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue  # Starlette ends the stream with an empty chunk
            received += len(chunk)
            if received > max_bytes:
                raise too_large(max_bytes)
            if decoder is None:
                body += chunk
                continue
            body += _inflate(decoder, chunk, max_bytes - len(body))
            if len(body) > max_bytes:
                raise too_large(max_bytes)
    except ClientDisconnect:
        raise Disconnected from None
    if decoder is not None:
        _finish_gzip(decoder, body, max_bytes)
    return bytes(body)


def _inflate(decoder: zlib._Decompress, chunk: bytes, room: int) -> bytes:
    """Decompress at most room + 1 bytes: one byte past the limit proves the body is too large."""
    if decoder.eof:
        raise BadEncoding("invalid gzip body (data after the end of the stream)")
    try:
        return decoder.decompress(chunk, room + 1)
    except zlib.error:
        raise BadEncoding("invalid gzip body") from None


def _finish_gzip(decoder: zlib._Decompress, body: bytearray, max_bytes: int) -> None:
    try:
        body += decoder.flush(max_bytes - len(body) + 1)
    except zlib.error:
        raise BadEncoding("invalid gzip body") from None
    if len(body) > max_bytes:
        raise too_large(max_bytes)
    if not decoder.eof or decoder.unused_data:
        raise BadEncoding("invalid gzip body (truncated or trailing data)")


def parse_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The parsed body; raises TooDeep or InvalidJson."""
    if not json_depth_ok(body, max_depth):
        raise TooDeep("JSON too deeply nested", f"JSON nesting exceeds {max_depth} levels")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidJson("invalid JSON") from None


def json_depth_ok(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """True when no `[`/`{` in the JSON text nests deeper than `max_depth`.

    Runs before parsing, with C-speed byte operations only (about 0.1 ms for 100 KB): drop escaped
    quotes, keep only quotes and brackets, drop string contents, then peel innermost bracket pairs
    once per level (`bytes.replace` does not look again at what a replacement joins, so one call
    peels exactly one level). Invalid JSON may pass; the parser rejects it next.
    """
    if b"\\" in body:
        body = body.replace(_ESCAPED_BACKSLASH, b"").replace(_ESCAPED_QUOTE, b"")
    # Dropping two adjacent quotes keeps every other byte's inside/outside-a-string parity, so
    # this removes every string without brackets in one C pass; then, with escaped quotes gone,
    # every other piece between the remaining quotes is a string's content.
    structure = body.translate(_BRACKETS_AS_PARENS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in structure:
        structure = b"".join(structure.split(b'"')[::2])
    for _ in range(max_depth):
        peeled = structure.replace(_INNERMOST_PAIR, b"")
        if len(peeled) == len(structure):
            break
        structure = peeled
    return _INNERMOST_PAIR not in structure
