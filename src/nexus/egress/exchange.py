"""One request relayed upstream and its response relayed back, on connections the caller opened."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nexus.egress.http import (
    Body,
    Conn,
    Framing,
    Headers,
    HttpError,
    Request,
    copy_body,
    end_to_end,
    error_response,
    parse_response,
    read_head,
    render,
    request_body,
    response_body,
    send,
    tokens,
    values,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int  # what the client got: the upstream's status, or the proxy's own refusal
    sent: int  # bytes written to the client
    client_open: bool  # the client may send another request on its connection
    upstream_open: bool  # the upstream connection may carry another request
    error: str = ""  # why the proxy answered instead of the upstream, or the response broke off


async def refuse(client: Conn, status: int, reason: str) -> Outcome:
    """Answer ``status`` with ``nexus egress: <reason>`` and end the client's connection."""
    data = error_response(status, f"nexus egress: {reason}")
    await send(client, data)
    return Outcome(status, len(data), client_open=False, upstream_open=False, error=reason)


def _framing(body: Body) -> Headers:
    if body.framing is Framing.CHUNKED:
        return (("Transfer-Encoding", "chunked"),)
    return (("Content-Length", str(body.length)),) if body.framing is Framing.LENGTH else ()


async def exchange(
    request: Request,
    target: str,
    headers: Headers,
    client: Conn,
    upstream: Conn,
    *,
    reuse: bool,
    touch: Callable[[], None],
) -> Outcome:
    """Send ``request`` as ``target`` with ``headers`` (end to end, as they should leave) and its body from
    ``client`` to ``upstream``; relay the response. ``reuse``: keep the upstream connection for another request."""
    try:
        body = request_body(request.headers)
    except HttpError as exc:
        return await refuse(client, exc.status, exc.reason)
    try:
        if body.framing is not Framing.NONE and "100-continue" in tokens(request.headers, "expect"):
            # answered here: the upstream never sees Expect, so a client waiting for 100 is not left hanging
            await send(client, b"HTTP/1.1 100 Continue\r\n\r\n")
        close = () if reuse else (("Connection", "close"),)
        await send(upstream, render(f"{request.method} {target} HTTP/1.1", headers + _framing(body) + close))
        await copy_body(client, upstream, body, chunked=body.framing is Framing.CHUNKED, touch=touch)
    except HttpError as exc:
        return await refuse(client, 400, exc.reason)
    except OSError as exc:
        return await refuse(client, 502, f"sending the request upstream failed: {exc.strerror or exc}")
    try:
        while True:
            head = await read_head(upstream.reader, "response")
            if head is None:
                return await refuse(client, 502, "the upstream closed the connection without answering")
            response = parse_response(head)
            if response.status == 101:
                return await refuse(client, 502, "the upstream switched protocols, which the proxy never asks for")
            if response.status >= 200:
                break  # interim 1xx: 100 was answered by the proxy already, others are only hints
        reply = response_body(request.method, response)
    except HttpError as exc:
        return await refuse(client, 502, exc.reason if exc.status != 431 else f"upstream {exc.reason}")
    except OSError as exc:
        return await refuse(client, 502, f"reading the upstream's answer failed: {exc.strerror or exc}")
    # an HTTP/1.0 client cannot read chunks: it gets the bytes, delimited by the end of the connection
    chunked = reply.framing is Framing.CHUNKED and request.version == "HTTP/1.1"
    client_open = request.keep_alive and (reply.framing in (Framing.NONE, Framing.LENGTH) or chunked)
    out = end_to_end(response.headers) + (_framing(reply) if reply.framing is not Framing.CHUNKED or chunked else ())
    if reply.framing is Framing.NONE and (length := values(response.headers, "content-length")):
        out += (("Content-Length", length[0]),)  # a HEAD's or a 304's: says what a GET would have had
    if not client_open:
        out += (("Connection", "close"),)
    data = render(f"HTTP/1.1 {response.status} {response.reason}".rstrip(), out)
    try:
        await send(client, data)
        sent = len(data) + await copy_body(upstream, client, reply, chunked=chunked, touch=touch)
    except (HttpError, OSError) as exc:
        reason = exc.reason if isinstance(exc, HttpError) else str(exc)
        return Outcome(response.status, len(data), client_open=False, upstream_open=False, error=reason)
    upstream_open = (
        reuse
        and reply.framing is not Framing.CLOSE
        and response.version == "HTTP/1.1"
        and "close" not in tokens(response.headers, "connection")
    )
    return Outcome(response.status, sent, client_open, upstream_open)
