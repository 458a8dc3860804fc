"""HTTP/1.1 messages as the egress proxy relays them: heads read within a size cap, bodies streamed in bounded
pieces, hop-by-hop headers dropped and the framing written by the proxy itself."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus

MAX_HEAD = 64 * 1024  # request or response line plus headers; also each stream's buffer limit
PIECE = 64 * 1024  # the most a relay holds at once per direction

Headers = tuple[tuple[str, str], ...]

# RFC 9110 7.6.1, plus the proxy's own: framing headers are always written by the proxy (so a "Connection:
# content-length" cannot desynchronise a peer), Expect is answered by the proxy itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class HttpError(Exception):
    """A message the proxy will not relay, answered with ``status`` and the one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Conn:
    """One side of a relay. After ``writer.start_tls`` both keep working, over TLS."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: str
    headers: Headers

    @property
    def keep_alive(self) -> bool:
        return self.version == "HTTP/1.1" and "close" not in tokens(self.headers, "connection")


@dataclass(frozen=True, slots=True)
class Response:
    version: str
    status: int
    reason: str
    headers: Headers


class Framing(Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"  # until the peer closes (responses only)


@dataclass(frozen=True, slots=True)
class Body:
    framing: Framing
    length: int = 0


def values(headers: Headers, name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name]


def tokens(headers: Headers, name: str) -> set[str]:
    """A comma-separated header's lowercased items (Connection, Transfer-Encoding)."""
    return {t.strip().lower() for v in values(headers, name) for t in v.split(",") if t.strip()}


def end_to_end(headers: Headers) -> Headers:
    """``headers`` without the hop-by-hop ones, and without those the Connection header names."""
    named = tokens(headers, "connection")
    return tuple((n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named)


async def read_head(reader: asyncio.StreamReader, what: str) -> bytes | None:
    """One head up to its blank line; None at a clean end before any byte. The reader's limit must be MAX_HEAD."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise HttpError(400, f"connection closed inside the {what} head") from exc
    except asyncio.LimitOverrunError as exc:
        raise HttpError(431, f"{what} head over {MAX_HEAD // 1024} KiB") from exc


def _lines(head: bytes, what: str) -> tuple[list[str], Headers]:
    # latin-1 keeps every byte as it is (obs-text), so a header goes out exactly as it came in
    start, *lines = head[:-4].decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
            raise HttpError(400, f"malformed {what} header line")  # obs-fold included: no value is quoted
        headers.append((name, value.strip(" \t")))
    return start.split(" ", 2), tuple(headers)


def parse_request(head: bytes) -> Request:
    parts, headers = _lines(head, "request")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(400, "malformed request line")
    if not parts[1] or not all("!" <= c <= "~" for c in parts[1]):  # a bare LF or a control could smuggle a header
        raise HttpError(400, "malformed request target")
    return Request(parts[0], parts[1], parts[2], headers)


def parse_response(head: bytes) -> Response:
    parts, headers = _lines(head, "response")
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise HttpError(502, "malformed response line from upstream")
    return Response(parts[0], int(parts[1]), parts[2] if len(parts) == 3 else "", headers)


def _length(headers: Headers, what: str) -> int | None:
    found = {v.strip() for v in values(headers, "content-length")}
    if not found:
        return None
    if len(found) > 1 or not (value := found.pop()).isdigit():
        raise HttpError(400 if what == "request" else 502, f"bad Content-Length in the {what}")
    return int(value)


def request_body(headers: Headers) -> Body:
    coding = values(headers, "transfer-encoding")
    length = _length(headers, "request")
    if coding:
        # anything but exactly "chunked", or chunked beside a length, is how requests are smuggled
        if length is not None or tokens(headers, "transfer-encoding") != {"chunked"} or len(coding) > 1:
            raise HttpError(400, "unsupported Transfer-Encoding in the request")
        return Body(Framing.CHUNKED)
    return Body(Framing.LENGTH, length) if length else Body(Framing.NONE)


def response_body(method: str, response: Response) -> Body:
    if method == "HEAD" or response.status in (204, 304) or response.status < 200:
        return Body(Framing.NONE)
    coding = [t.strip().lower() for v in values(response.headers, "transfer-encoding") for t in v.split(",")]
    if coding:
        return Body(Framing.CHUNKED) if coding[-1] == "chunked" else Body(Framing.CLOSE)
    length = _length(response.headers, "response")
    return Body(Framing.CLOSE) if length is None else Body(Framing.LENGTH, length)


def render(start: str, headers: Headers) -> bytes:
    return "".join([start, "\r\n", *(f"{n}: {v}\r\n" for n, v in headers), "\r\n"]).encode("latin-1")


def error_response(status: int, reason: str) -> bytes:
    body = f"{reason}\n".encode()
    return (
        render(
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            (
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ),
        )
        + body
    )


async def send(conn: Conn, data: bytes) -> None:
    conn.writer.write(data)
    await conn.writer.drain()


async def copy_body(src: Conn, dst: Conn, body: Body, *, chunked: bool, touch: Callable[[], None]) -> int:
    """Relay one body from ``src`` to ``dst``, re-chunked when ``chunked`` (trailers are dropped); the bytes
    written. Reading from a closed peer raises HttpError (status 502: the caller knows which side it was)."""
    sent = 0

    async def out(data: bytes) -> None:
        nonlocal sent
        if chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        await send(dst, data)
        sent += len(data)
        touch()

    async def exactly(n: int) -> None:
        while n:
            data = await src.reader.readexactly(min(n, PIECE))
            n -= len(data)
            await out(data)

    try:
        if body.framing is Framing.LENGTH:
            await exactly(body.length)
        elif body.framing is Framing.CLOSE:
            while data := await src.reader.read(PIECE):
                await out(data)
        elif body.framing is Framing.CHUNKED:
            while size := _chunk_size(await src.reader.readuntil(b"\r\n")):
                await exactly(size)
                if await src.reader.readexactly(2) != b"\r\n":
                    raise HttpError(400, "malformed chunk")
            while await src.reader.readuntil(b"\r\n") != b"\r\n":
                pass  # a trailer line: bounded by the reader's limit, and dropped
        if chunked:
            await send(dst, b"0\r\n\r\n")
            sent += 5
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise HttpError(502, "connection closed inside a body") from exc
    return sent


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip()
    if not size or len(size) > 15 or not all(c in b"0123456789abcdefABCDEF" for c in size):
        raise HttpError(400, "malformed chunk size")
    return int(size, 16)
