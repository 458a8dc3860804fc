"""``nexusctl mcp-bridge REF``: MCP over stdio, forwarded to nexusd's ``/v1/vms/{ref}/mcp`` endpoint.

A small hand-written forwarder, so nothing is reinterpreted on the way: each line on stdin is one JSON-RPC message
and is POSTed as it is; the answer (JSON, or SSE events relayed one message a line) goes to stdout. The session
id and protocol version the endpoint hands out are remembered and sent back as headers. Notifications and
responses are sent in order and get no reply; requests run concurrently, so a long tool call does not hold up
the others. 2026-era messages that carry their protocol version in ``_meta`` are sent without a session.

A lost session is reopened transparently: when nexusd answers 404 for the session (it idled out there, or nexusd
restarted), the bridge replays the client's initialize and notifications/initialized, takes the new session id and
sends the message once more; messages that find the session gone at the same time share one re-initialization.
The bridge's own requests (that replay, and keepalive pings sent when nothing was sent for ``--keepalive``
seconds, so an idle session does not time out) have ids starting "nexus-bridge-" and their answers are not
written to stdout. A nexusd that cannot be reached, or answers 503 while stopping, is tried again for a few
seconds (it may be restarting) before a message fails.

No failure ends the bridge: a line that is not JSON gets a parse error, and a request that cannot be forwarded
(nexusd down, an HTTP error, a session that could not be reopened) gets a JSON-RPC error with its own id. End of
stdin ends the bridge: calls still running are abandoned and the session is deleted. Diagnostics go to stderr;
stdout carries only MCP. This module does not serve HTTP (that is nexusd) and does not open the standalone GET
stream (nexusd's VM endpoint sends nothing unsolicited).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

import httpx
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    encode_header_value,
)
from mcp_types import PROTOCOL_VERSION_META_KEY

from nexus.client import Connection
from nexus.protocol import INTERNAL_ERROR, PARSE_ERROR

ACCEPT = "application/json, text/event-stream"
SESSION_HEADER = "mcp-session-id"
KEEPALIVE_S = 60.0  # nexusd closes sessions idle for mcp_session_idle_timeout_s (30 min by default)
RECONNECT_DELAYS_S = (0.25, 0.5, 1.0, 1.0, 2.0)  # nexusd unreachable: six attempts over about 5 s
OWN_ID_PREFIX = "nexus-bridge-"


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def _http_refusal(text: str) -> str | None:
    """The message of nexusd's HTTP error body ``{"error": {"code", "message"}}``, or None for anything else
    (a JSON-RPC message is relayed as it is)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) and "jsonrpc" not in body else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None
    return f"{error.get('code', 'error')}: {error['message']}"


def _method(message: Any) -> Any:
    return message.get("method") if isinstance(message, dict) else None


def _is_request(message: Any) -> bool:
    return isinstance(message, dict) and "method" in message and message.get("id") is not None


def _envelope_version(message: Any) -> str | None:
    """The protocol version a 2026-era message carries in its own ``_meta`` (no handshake, no session)."""
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def _routing_headers(message: dict[str, Any], version: str) -> dict[str, str]:
    """The headers a 2026-era POST must repeat from its body: version, method and (for tools/call) name."""
    method = str(message.get("method"))
    headers = {MCP_PROTOCOL_VERSION_HEADER: version, MCP_METHOD_HEADER: method}
    name_key = NAME_BEARING_METHODS.get(method)
    name = message.get("params", {}).get(name_key) if name_key is not None else None
    if isinstance(name, str):
        headers[MCP_NAME_HEADER] = encode_header_value(name)
    return headers


class _Failed(Exception):
    """One of the bridge's own exchanges with nexusd failed; the message says how, in one line."""


class Bridge:
    """One stdio conversation forwarded to one endpoint path over ``http``."""

    def __init__(
        self, http: httpx.AsyncClient, path: str, out: BinaryIO, err: BinaryIO, keepalive_s: float = KEEPALIVE_S
    ) -> None:
        self._http = http
        self._path = path
        self._out = out
        self._err = err
        self._keepalive_s = keepalive_s
        self._session_id: str | None = None
        self._protocol_version: str | None = None
        self._initializing: dict[Any, dict[str, Any]] = {}  # the client's initialize requests not yet answered
        self._initialize: dict[str, Any] | None = None  # the one that opened the session: replayed to reopen it
        self._initialized: dict[str, Any] | None = None  # the client's notifications/initialized, replayed after it
        self._reopening: asyncio.Task[None] | None = None
        self._own_ids = itertools.count(1)
        self._last_post = 0.0

    async def run(self, readline: Any) -> None:
        """Forward until ``readline`` (an async callable returning bytes) returns b"" (end of input)."""
        requests: set[asyncio.Task[None]] = set()
        self._last_post = asyncio.get_running_loop().time()
        keepalive = asyncio.create_task(self._keep_alive()) if self._keepalive_s > 0 else None
        try:
            while line := await readline():
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    self._emit(_error(None, PARSE_ERROR, f"not JSON: {exc}"))
                    continue
                if _is_request(message) and message.get("method") != "initialize":
                    task = asyncio.create_task(self._forward(message))
                    requests.add(task)
                    task.add_done_callback(requests.discard)
                else:  # initialize (the session starts with it), notifications and responses: in order
                    await self._forward(message)
        finally:
            background = [*requests, *(t for t in (keepalive, self._reopening) if t is not None)]
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._delete_session()

    async def _forward(self, message: Any) -> None:
        request_id = message.get("id") if _is_request(message) else None
        if _method(message) == "initialize" and request_id is not None:
            self._initializing[request_id] = message
        elif _method(message) == "notifications/initialized":
            self._initialized = message
        try:
            answered = await self._post(message)
        except _Failed as exc:
            self._log(str(exc))
            answered, problem = False, str(exc)
        except httpx.HTTPError as exc:
            self._log(f"cannot reach nexusd: {exc!r}")
            answered, problem = False, f"nexusd is unreachable: {exc}"
        except Exception as exc:  # the bridge outlives any one message
            self._log(f"forwarding failed: {exc!r}")
            answered, problem = False, f"the bridge could not forward this request: {exc}"
        else:
            problem = "nexusd gave no answer"
        if request_id is not None and not answered:
            self._emit(_error(request_id, INTERNAL_ERROR, problem))

    async def _post(self, message: Any) -> bool:
        """POST one message; relay what comes back. True once the request's answer has been written. A message
        whose session nexusd no longer knows is sent once more, in a new session."""
        response, session = await self._send(message)
        try:
            if session is not None and await _session_gone(response):
                await response.aclose()
                await self._reopen(session)
                response, _ = await self._send(message)
            return await self._relay_response(message, response)
        finally:
            await response.aclose()

    def _headers(self, message: Any) -> tuple[dict[str, str], str | None]:
        """The headers to POST ``message`` with, and the session id among them (None: sent without a session)."""
        headers = {"accept": ACCEPT, "content-type": "application/json"}
        envelope_version = _envelope_version(message)
        if envelope_version is not None and "method" in message:
            headers.update(_routing_headers(message, envelope_version))
            return headers, None
        if self._protocol_version is not None:
            headers[MCP_PROTOCOL_VERSION_HEADER] = self._protocol_version
        if self._session_id is None or _method(message) == "initialize":  # an initialize opens a session of its own
            return headers, None
        headers[SESSION_HEADER] = self._session_id
        return headers, self._session_id

    async def _send(self, message: Any) -> tuple[httpx.Response, str | None]:
        """POST ``message`` and return the response (streaming; the caller closes it) and the session id it was
        sent in. A nexusd that cannot be reached or answers 503 (stopping: the message was not handled) is
        probably restarting: tried again after short pauses, a few seconds in all."""
        headers, session = self._headers(message)
        request = self._http.build_request("POST", self._path, content=json.dumps(message).encode(), headers=headers)
        loop = asyncio.get_running_loop()
        for attempt, delay in enumerate(RECONNECT_DELAYS_S):
            self._last_post = loop.time()
            try:
                response = await self._http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                problem = f"cannot reach nexusd ({exc!r})"
            else:
                if response.status_code != 503:
                    return response, session
                await response.aclose()
                problem = "nexusd is not serving MCP (HTTP 503)"
            if attempt == 0:
                self._log(f"{problem}: trying again for a few seconds")
            await asyncio.sleep(delay)
        self._last_post = loop.time()
        return await self._http.send(request, stream=True), session

    async def _relay_response(self, message: Any, response: httpx.Response) -> bool:
        """Write what nexusd answered ``message`` with. True once the request's answer has been written."""
        request_id = message.get("id") if _is_request(message) else None
        session_id = response.headers.get(SESSION_HEADER)
        if session_id and response.status_code < 400 and request_id in self._initializing:
            self._session_id = session_id  # only an initialize that succeeded opens a session
        if response.status_code == 202:
            return False
        content_type = response.headers.get("content-type", "")
        answered = False
        if content_type.startswith("text/event-stream"):
            async for event in _sse_data(response):
                answered |= self._relay(event, request_id)
        else:
            text = (await response.aread()).decode(errors="replace")
            refusal = _http_refusal(text) if response.status_code >= 400 else None
            if refusal is not None:  # nexusd's own error body (401, 403, 413...), not a JSON-RPC message
                self._log(f"nexusd answered HTTP {response.status_code}: {refusal}")
                if request_id is not None:
                    self._emit(
                        _error(request_id, INTERNAL_ERROR, f"nexusd answered HTTP {response.status_code}: {refusal}")
                    )
                    return True
                return False
            answered = self._relay(text, request_id)
        if not answered and response.status_code >= 400:
            self._log(f"nexusd answered HTTP {response.status_code} to {message.get('method', 'a response')}")
            if request_id is not None:
                self._emit(_error(request_id, INTERNAL_ERROR, f"nexusd answered HTTP {response.status_code}"))
                return True
        return answered

    def _relay(self, data: str, request_id: Any) -> bool:
        """Write one message from nexusd; an error without an id is given the request's. True if it answers."""
        try:
            message = json.loads(data)
        except ValueError:
            self._log(f"nexusd sent something that is not JSON: {data[:200]!r}")
            return False
        if not isinstance(message, dict):
            self._emit(message)
            return False
        if "error" in message and message.get("id") is None and request_id is not None:
            message["id"] = request_id
        answers = request_id is not None and message.get("id") == request_id and "method" not in message
        if answers and request_id in self._initializing:
            initialize = self._initializing.pop(request_id)
            result = message.get("result")
            if isinstance(result, dict):
                self._initialize = initialize
                version = result.get("protocolVersion")
                if isinstance(version, str):
                    self._protocol_version = version
        self._emit(message)
        return answers

    async def _reopen(self, lost: str) -> None:
        """Open a new session in place of ``lost``: one re-initialization however many messages found it gone at
        once (they wait for the same one), none if another message already replaced it."""
        if self._session_id != lost:
            return
        if self._reopening is None or self._reopening.done():
            self._reopening = asyncio.create_task(self._reinitialize(lost))
        try:
            await asyncio.shield(self._reopening)
        except (_Failed, httpx.HTTPError) as exc:
            reason = " ".join(str(exc).split()) or repr(exc)
            raise _Failed(f"the MCP session ended on nexusd and a new one could not be opened: {reason}") from exc

    async def _reinitialize(self, lost: str) -> None:
        """Replay the client's initialize (and its notifications/initialized) under an id of the bridge's own;
        nexusd's answers are not written: the client has had its own."""
        if self._initialize is None:
            raise _Failed("the client's initialize is not known")
        self._log(f"session {lost} is gone on nexusd (idle past its timeout, or nexusd restarted): re-initializing")
        replay = {**self._initialize, "id": self._own_id("initialize")}
        response, _ = await self._send(replay)
        try:
            answer = await _own_answer(response, replay["id"])
            session_id = response.headers.get(SESSION_HEADER)
        finally:
            await response.aclose()
        if not session_id:
            raise _Failed("nexusd's answer to initialize named no session")
        self._session_id = session_id
        result = answer.get("result")
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if isinstance(version, str):
            self._protocol_version = version
        if self._initialized is not None:
            response, _ = await self._send(self._initialized)
            await response.aclose()
            if response.status_code >= 400:
                raise _Failed(f"nexusd answered HTTP {response.status_code} to notifications/initialized")
        self._log(f"new session {session_id}")

    async def _keep_alive(self) -> None:
        """Ping nexusd whenever nothing was sent for ``keepalive_s``, so an idle session does not time out there."""
        loop = asyncio.get_running_loop()
        while True:
            idle = loop.time() - self._last_post
            if idle < self._keepalive_s:
                await asyncio.sleep(self._keepalive_s - idle)
            elif self._session_id is None:  # nothing to keep: no handshake yet, or 2026-era sessionless messages
                await asyncio.sleep(self._keepalive_s)
            else:
                await self._ping()

    async def _ping(self) -> None:
        ping = {"jsonrpc": "2.0", "id": self._own_id("ping"), "method": "ping"}
        try:
            response, session = await self._send(ping)
            try:
                if session is not None and await _session_gone(response):
                    await self._reopen(session)  # now, rather than when the client's next message finds it gone
                else:
                    await _own_answer(response, ping["id"])
            finally:
                await response.aclose()
        except Exception as exc:  # the keepalive outlives any one failure; the client's messages say theirs
            self._log(f"keepalive ping failed: {exc}")

    def _own_id(self, what: str) -> str:
        """An id for the bridge's own requests: a string prefix no client's id is expected to have."""
        return f"{OWN_ID_PREFIX}{what}-{next(self._own_ids)}"

    def _emit(self, message: Any) -> None:
        self._out.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self._out.flush()

    def _log(self, text: str) -> None:
        self._err.write(f"nexusctl mcp-bridge: {text}\n".encode())
        self._err.flush()

    async def _delete_session(self) -> None:
        if self._session_id is None:
            return
        headers = {SESSION_HEADER: self._session_id}
        if self._protocol_version is not None:
            headers[MCP_PROTOCOL_VERSION_HEADER] = self._protocol_version
        with contextlib.suppress(httpx.HTTPError):
            await self._http.delete(self._path, headers=headers, timeout=5)


async def _session_gone(response: httpx.Response) -> bool:
    """Whether nexusd answered 404 because it does not know the session (the SDK's JSON-RPC "Session not found"),
    not with an error body of its own."""
    if response.status_code != 404:
        return False
    return _http_refusal((await response.aread()).decode(errors="replace")) is None


async def _own_answer(response: httpx.Response, own_id: str) -> dict[str, Any]:
    """The answer to one of the bridge's own requests, read from ``response`` (and not written anywhere)."""
    if response.status_code >= 400:
        text = (await response.aread()).decode(errors="replace")
        refusal = _http_refusal(text)
        raise _Failed(f"nexusd answered HTTP {response.status_code}" + (f": {refusal}" if refusal else ""))
    async for data in _messages(response):
        with contextlib.suppress(ValueError):
            message = json.loads(data)
            if isinstance(message, dict) and message.get("id") == own_id and "method" not in message:
                error = message.get("error")
                if isinstance(error, dict):
                    raise _Failed(f"nexusd answered with an error: {error.get('message')}")
                return message
    raise _Failed("nexusd gave no answer")


async def _messages(response: httpx.Response) -> AsyncIterator[str]:
    """Each message in ``response``: the SSE events' data, or the JSON body."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        async for data in _sse_data(response):
            yield data
    else:
        yield (await response.aread()).decode(errors="replace")


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The data of each SSE event in ``response`` (multi-line data joined by newlines)."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield "\n".join(data)


async def bridge(target: Connection, ref: str, keepalive_s: float = KEEPALIVE_S) -> None:
    """Run the bridge on this process's stdin/stdout until stdin ends; ``keepalive_s`` 0: no keepalive pings."""
    timeout = httpx.Timeout(30.0, read=None)  # a tool call may run (and stream) for as long as it needs
    async with target.async_client(timeout) as http:
        stdin = sys.stdin.buffer

        async def readline() -> bytes:
            return await asyncio.to_thread(stdin.readline)

        forwarder = Bridge(http, f"/v1/vms/{ref}/mcp", sys.stdout.buffer, sys.stderr.buffer, keepalive_s)
        await forwarder.run(readline)
