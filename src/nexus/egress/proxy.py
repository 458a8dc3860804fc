"""nexusd's egress proxy: HTTP/1.1 forward proxying and CONNECT for VMs in ``proxy`` mode, each request checked
against the VM's allow-list, tunnels to hosts with a bound secret terminated with the Nexus CA so the secret goes
into the bound header on the way out. Every decision is an audit entry; no header or secret value is ever logged."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from nexus.domain.audit import ANONYMOUS_CALLER, AuditEntry, AuditLog, Decision, Via
from nexus.domain.egress import EgressMode, HostPattern, VmEgress
from nexus.domain.models import utcnow
from nexus.egress.ca import NexusCA
from nexus.egress.dial import DEFAULT_BLOCKED, Dialer, Lookup, Network, UpstreamError, system_lookup
from nexus.egress.exchange import exchange, refuse
from nexus.egress.http import MAX_HEAD, Conn, HttpError, Request, end_to_end, parse_request, read_head, send
from nexus.egress.intercept import inject, names_host
from nexus.egress.tunnel import tunnel

logger = logging.getLogger(__name__)

MAX_ACTION_PATH = 512  # an audit action's path is cut there
MAX_PER_CLIENT = 64  # connections one VM may hold open through the proxy
MAX_CONNECTIONS = 1024  # all VMs together: nexusd's file descriptors serve its API and VM links too
HEAD_TIMEOUT_S = 30.0  # for a request head to arrive whole


class _Watch:
    """Closes a client's connection and its upstream once no byte has moved for ``idle`` seconds."""

    def __init__(self, idle: float, client: asyncio.StreamWriter) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle
        self.writers = {client}
        self._last = self._loop.time()
        self._timer = self._loop.call_later(idle, self._check)

    def touch(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        left = self._last + self._idle - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check)  # one timer, moved only when it fires
            return
        for writer in self.writers:
            writer.close()

    def stop(self) -> None:
        self._timer.cancel()
        for writer in self.writers:
            writer.close()


@dataclass(frozen=True, slots=True)
class _Call:
    """One decision of the proxy, as its audit entry will name it."""

    action: str
    vm: VmEgress | None
    rule: HostPattern | None  # the allow-list entry letting it through; None: refused
    reason: str  # why
    at: datetime
    started: float

    def entry(self, decision: Decision, reason: str, *, sent: int = 0, is_error: bool = False) -> AuditEntry:
        return AuditEntry(
            at=self.at,
            caller=f"vm:{self.vm.vm_name}" if self.vm else ANONYMOUS_CALLER,
            via=Via.EGRESS,
            action=self.action,
            decision=decision,
            target_id=self.vm.vm_id if self.vm else None,
            target=self.vm.vm_name if self.vm else None,
            reason=reason,
            duration_ms=(time.monotonic() - self.started) * 1000,
            result_bytes=sent,
            is_error=is_error,
        )


def _authority(host: str, port: int, default: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == default else f"{name}:{port}"


def _path(target: str) -> str:
    """A request target's path, without its query (whose values may be anything) and cut to a sane length."""
    path = target.split("?", 1)[0].split("#", 1)[0] or "/"
    return path if len(path) <= MAX_ACTION_PATH else path[:MAX_ACTION_PATH] + "…"


def _connect_target(target: str) -> tuple[str, int]:
    host, colon, port = target.rpartition(":")
    host = host.removeprefix("[").removesuffix("]").lower().rstrip(".")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise HttpError(400, "CONNECT needs host:port")
    return host, int(port)


def _http_target(target: str) -> tuple[str, int, str]:
    """An absolute-form http:// target's host, port and origin-form path."""
    if not target.lower().startswith("http://"):
        hint = "use CONNECT for https" if target.lower().startswith("https://") else "send http://host/path"
        raise HttpError(400, f"not a proxy request ({hint})")
    try:
        url = urlsplit(target)
        host, port = (url.hostname or "").rstrip("."), url.port or 80
    except ValueError as exc:
        raise HttpError(400, "malformed URL") from exc
    if not host:
        raise HttpError(400, "malformed URL")
    return host, port, (url.path or "/") + (f"?{url.query}" if url.query else "")


def _exempt(rule: HostPattern, host: str) -> bool:
    """The allow-list names this very address (not a wildcard, not a name resolving to it): the only way into the
    networks the guard keeps VMs out of."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return rule.host == host


class EgressProxy:
    """The proxy, serving one listening socket. ``resolve`` maps a client's source address to what is known of its
    VM (None: not a VM, refused); ``secret_value`` a secret's name to its value (None: no such secret, the
    placeholder stays). Both are called at each decision, so a change applies to the next request."""

    def __init__(
        self,
        *,
        resolve: Callable[[str], VmEgress | None],
        secret_value: Callable[[str], str | None],
        ca: NexusCA,
        upstream_ssl: ssl.SSLContext,
        audit: AuditLog,
        lookup: Lookup = system_lookup,
        blocked: Sequence[Network] = DEFAULT_BLOCKED,
        connect_timeout: float = 10.0,
        idle_timeout: float = 600.0,
    ) -> None:
        if upstream_ssl.verify_mode is not ssl.CERT_REQUIRED or not upstream_ssl.check_hostname:
            raise ValueError("upstream_ssl must verify certificates and host names")
        self._resolve = resolve
        self._secret_value = secret_value
        self._ca = ca
        self._upstream_ssl = upstream_ssl
        self._audit = audit
        self._dialer = Dialer(lookup, tuple(blocked), connect_timeout)
        self._idle = idle_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: Counter[str] = Counter()  # connections per client address

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)

    async def close(self) -> None:
        """Stop listening and end every connection, tunnels included."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        client = Conn(reader, writer)
        peer = str(writer.get_extra_info("peername")[0])
        if self._open[peer] >= MAX_PER_CLIENT or len(self._tasks) >= MAX_CONNECTIONS:  # one VM cannot take them all
            with contextlib.suppress(OSError):
                await refuse(client, 503, "nexus egress: too many connections open; close some and retry")
            writer.close()
            return
        self._tasks.add(task)
        self._open[peer] += 1
        watch = _Watch(self._idle, writer)
        try:
            while await self._next(client, peer, watch):
                pass
        except (OSError, EOFError):
            pass  # the client went away, or its idle time ran out
        except asyncio.CancelledError:
            pass  # close(): ended here, as Python 3.11's stream callback logs a cancelled handler as an error
        except Exception:
            logger.exception("egress: connection from %s failed", peer)
        finally:
            watch.stop()
            self._tasks.discard(task)
            self._open[peer] -= 1
            if not self._open[peer]:
                del self._open[peer]

    async def _next(self, client: Conn, peer: str, watch: _Watch) -> bool:
        """Serve one request; whether the connection may carry another."""
        try:
            try:  # a request head comes whole and soon, or the connection goes (slow-loris)
                head = await asyncio.wait_for(read_head(client.reader, "request"), HEAD_TIMEOUT_S)
            except TimeoutError:
                return False
            if head is None:
                return False
            watch.touch()
            request = parse_request(head)
            if request.method == "CONNECT":
                await self._connect(client, peer, _connect_target(request.target), watch)
                return False
            return await self._forward(client, peer, request, _http_target(request.target), watch)
        except HttpError as exc:
            await refuse(client, exc.status, exc.reason)
            return False

    def _decide(self, action: str, peer: str, host: str, port: int) -> _Call:
        at, started = utcnow(), time.monotonic()
        vm = self._resolve(peer)
        if vm is None:
            return _Call(action, vm, None, f"{peer} is not a Nexus VM", at, started)
        if vm.mode is not EgressMode.PROXY:
            return _Call(action, vm, None, f"VM {vm.vm_name}'s egress mode is {vm.mode}, not proxy", at, started)
        rule = vm.allowed(host, port)
        if rule is None:
            return _Call(action, vm, None, f"{host}:{port} is not on VM {vm.vm_name}'s allow-list", at, started)
        return _Call(action, vm, rule, f"allow-list {rule}", at, started)

    async def _deny(self, client: Conn, call: _Call, status: int, reason: str) -> None:
        self._audit.record(call.entry(Decision.DENY, reason))
        await refuse(client, status, reason)

    async def _dial(self, client: Conn, call: _Call, host: str, port: int, *, tls: bool) -> Conn | None:
        """The upstream connection, or None once the refusal is answered and recorded."""
        assert call.rule is not None
        try:
            return await self._dialer.open(
                host, port, exempt=_exempt(call.rule, host), tls=self._upstream_ssl if tls else None
            )
        except UpstreamError as exc:
            if exc.denied:
                await self._deny(client, call, exc.status, exc.reason)
            else:
                entry = call.entry(Decision.ALLOW, f"{call.reason}; {exc.reason}", is_error=True)
                self._audit.record(entry)
                await refuse(client, exc.status, exc.reason)
            return None

    async def _forward(
        self, client: Conn, peer: str, request: Request, target: tuple[str, int, str], watch: _Watch
    ) -> bool:
        host, port, path = target
        authority = _authority(host, port, 80)
        call = self._decide(f"{request.method} http://{authority}{_path(path)}", peer, host, port)
        if call.rule is None:
            await self._deny(client, call, 403, call.reason)
            return False
        upstream = await self._dial(client, call, host, port, tls=False)
        if upstream is None:
            return False
        watch.writers.add(upstream.writer)
        # a secret is never added to plain http: a bound placeholder goes out as the VM wrote it
        headers = (("Host", authority), *((n, v) for n, v in end_to_end(request.headers) if n.lower() != "host"))
        try:
            out = await exchange(request, path, headers, client, upstream, reuse=False, touch=watch.touch)
        finally:
            upstream.writer.close()
            watch.writers.discard(upstream.writer)
        detail = f"{call.reason}; status {out.status}" + (f"; {out.error}" if out.error else "")
        self._audit.record(call.entry(Decision.ALLOW, detail, sent=out.sent, is_error=bool(out.error)))
        return out.client_open

    async def _connect(self, client: Conn, peer: str, target: tuple[str, int], watch: _Watch) -> None:
        host, port = target
        call = self._decide(f"CONNECT {_authority(host, port, 0)}", peer, host, port)
        if call.rule is None or call.vm is None:
            await self._deny(client, call, 403, call.reason)
            return
        intercepted = bool(call.vm.bindings_for(host))
        upstream = await self._dial(client, call, host, port, tls=intercepted)
        if upstream is None:
            return
        watch.writers.add(upstream.writer)
        sent, error = 0, ""
        try:
            await send(client, b"HTTP/1.1 200 Connection Established\r\n\r\n")
            if intercepted:
                sent = await self._intercept(client, peer, host, port, upstream, watch)
            else:
                sent = await tunnel(client, upstream, watch.touch)
        except (OSError, EOFError) as exc:
            error = f"; {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
            raise
        finally:
            upstream.writer.close()
            watch.writers.discard(upstream.writer)
            how = "intercepted" if intercepted else "tunnel"
            self._audit.record(
                call.entry(Decision.ALLOW, f"{call.reason}; {how}{error}", sent=sent, is_error=bool(error))
            )

    async def _intercept(self, client: Conn, peer: str, host: str, port: int, first: Conn, watch: _Watch) -> int:
        """Serve the requests of a tunnel terminated with a leaf for ``host``, each checked, injected and sent on
        over verified TLS (on ``first`` while the upstream keeps it open); the bytes sent to the client."""
        await client.writer.start_tls(self._ca.leaf(host))
        upstream: Conn | None = first
        sent = 0
        try:
            while True:
                try:
                    try:  # as outside the tunnel: a head comes whole and soon
                        head = await asyncio.wait_for(read_head(client.reader, "request"), HEAD_TIMEOUT_S)
                    except TimeoutError:
                        return sent
                    if head is None:
                        return sent
                    watch.touch()
                    request = parse_request(head)
                    if not request.target.startswith("/"):
                        raise HttpError(400, "a request inside a tunnel names a path (origin form)")
                except HttpError as exc:
                    await refuse(client, exc.status, exc.reason)
                    return sent
                action = f"{request.method} https://{_authority(host, port, 443)}{_path(request.target)}"
                call = self._decide(action, peer, host, port)
                if call.rule is None or call.vm is None:
                    await self._deny(client, call, 403, call.reason)
                    return sent
                if not names_host(request.headers, host, port):
                    await self._deny(client, call, 403, f"the request's Host is not {host}, the tunnel's host")
                    return sent
                injection = inject(end_to_end(request.headers), call.vm.bindings_for(host), self._secret_value)
                if upstream is None or upstream.reader.at_eof():
                    if upstream is not None:
                        upstream.writer.close()
                        watch.writers.discard(upstream.writer)
                    upstream = await self._dial(client, call, host, port, tls=True)
                    if upstream is None:
                        return sent
                    watch.writers.add(upstream.writer)
                out = await exchange(
                    request, request.target, injection.headers, client, upstream, reuse=True, touch=watch.touch
                )
                sent += out.sent
                notes = [call.reason, *(f"secret {i}" for i in injection.injected)]
                notes += [f"secret {name} has no usable value: placeholder left" for name in injection.unusable]
                notes += [f"status {out.status}", *([out.error] if out.error else [])]
                self._audit.record(
                    call.entry(Decision.ALLOW, "; ".join(notes), sent=out.sent, is_error=bool(out.error))
                )
                if not out.upstream_open:
                    upstream.writer.close()
                    watch.writers.discard(upstream.writer)
                    upstream = None
                if not out.client_open:
                    return sent
        finally:
            if upstream is not None:
                upstream.writer.close()
                watch.writers.discard(upstream.writer)
