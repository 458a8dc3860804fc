"""``nexusctl mcp-bridge REF``: MCP over stdio, forwarded to nexusd's ``/v1/vms/{ref}/mcp`` endpoint.

A small hand-written forwarder, so nothing is reinterpreted on the way: each line on stdin is one JSON-RPC message
and is POSTed as it is; the answer (JSON, or SSE events relayed one message a line) goes to stdout. The session
id and protocol version the endpoint hands out are remembered and sent back as headers. Notifications and
responses are sent in order and get no reply; requests run concurrently, so a long tool call does not hold up
the others. No failure ends the bridge: a line that is not JSON gets a parse error, and a request that cannot be
forwarded (nexusd down, an HTTP error) gets a JSON-RPC error with its own id. End of stdin ends the bridge: calls
still running are abandoned and the session is deleted. Diagnostics go to stderr; stdout carries only MCP.
This module does not serve HTTP (that is nexusd) and does not open the standalone GET stream (nexusd's VM
endpoint sends nothing unsolicited).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
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

from nexus.client import DEFAULT_SOCKET, tls_verify
from nexus.protocol import INTERNAL_ERROR, PARSE_ERROR

ACCEPT = "application/json, text/event-stream"
SESSION_HEADER = "mcp-session-id"


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


class Bridge:
    """One stdio conversation forwarded to one endpoint path over ``http``."""

    def __init__(self, http: httpx.AsyncClient, path: str, out: BinaryIO, err: BinaryIO) -> None:
        self._http = http
        self._path = path
        self._out = out
        self._err = err
        self._session_id: str | None = None
        self._protocol_version: str | None = None
        self._initialize_ids: set[Any] = set()

    async def run(self, readline: Any) -> None:
        """Forward until ``readline`` (an async callable returning bytes) returns b"" (end of input)."""
        requests: set[asyncio.Task[None]] = set()
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
            for task in list(requests):
                task.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            await self._delete_session()

    async def _forward(self, message: Any) -> None:
        request_id = message.get("id") if _is_request(message) else None
        if _is_request(message) and message.get("method") == "initialize":
            self._initialize_ids.add(request_id)
        try:
            answered = await self._post(message)
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
        """POST one message; relay what comes back. True once the request's answer has been written."""
        headers = {"accept": ACCEPT, "content-type": "application/json"}
        envelope_version = _envelope_version(message)
        if envelope_version is not None and "method" in message:
            headers.update(_routing_headers(message, envelope_version))
        else:
            if self._session_id is not None:
                headers[SESSION_HEADER] = self._session_id
            if self._protocol_version is not None:
                headers[MCP_PROTOCOL_VERSION_HEADER] = self._protocol_version
        request_id = message.get("id") if _is_request(message) else None
        body = json.dumps(message).encode()
        async with self._http.stream("POST", self._path, content=body, headers=headers) as response:
            session_id = response.headers.get(SESSION_HEADER)
            if session_id and response.status_code < 400 and request_id in self._initialize_ids:
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
                            _error(
                                request_id, INTERNAL_ERROR, f"nexusd answered HTTP {response.status_code}: {refusal}"
                            )
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
        if answers and request_id in self._initialize_ids:
            self._initialize_ids.discard(request_id)
            version = (message.get("result") or {}).get("protocolVersion")
            if isinstance(version, str):
                self._protocol_version = version
        self._emit(message)
        return answers

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


async def _sse_data(response: httpx.Response) -> Any:
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


@dataclass(frozen=True, slots=True)
class Target:
    """Where nexusd is: its Unix socket (default), or its TCP listener ``url`` with a bearer ``token`` (the admin
    token or an agent token for this VM), its TLS certificate checked against ``ca_file`` when given."""

    socket: Path | None = None
    url: str | None = None
    token: str | None = None
    ca_file: Path | None = None

    def client(self) -> httpx.AsyncClient:
        timeout = httpx.Timeout(30.0, read=None)  # a tool call may run (and stream) for as long as it needs
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        if self.url is not None:
            return httpx.AsyncClient(
                base_url=self.url, headers=headers, timeout=timeout, verify=tls_verify(self.ca_file)
            )
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket or DEFAULT_SOCKET))
        return httpx.AsyncClient(transport=transport, base_url="http://nexusd", headers=headers, timeout=timeout)


async def bridge(target: Target, ref: str) -> None:
    """Run the bridge on this process's stdin/stdout until stdin ends."""
    async with target.client() as http:
        stdin = sys.stdin.buffer

        async def readline() -> bytes:
            return await asyncio.to_thread(stdin.readline)

        await Bridge(http, f"/v1/vms/{ref}/mcp", sys.stdout.buffer, sys.stderr.buffer).run(readline)
