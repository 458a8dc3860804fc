"""The egress proxy's pure parts: message parsing and framing (what it refuses to relay), and placeholder
injection (only the bound header, only whole names, only safe values)."""

from __future__ import annotations

import pytest

from nexus.domain.egress import Binding, placeholder
from nexus.egress.http import (
    Body,
    Framing,
    HttpError,
    end_to_end,
    parse_request,
    parse_response,
    request_body,
    response_body,
)
from nexus.egress.intercept import inject, names_host

K = placeholder("K")


def _head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_egress_parse_request() -> None:
    r = parse_request(_head("GET http://a.test/x HTTP/1.1", "Host: a.test", "X-A:  v  "))
    assert (r.method, r.target, r.version, r.headers) == (
        "GET",
        "http://a.test/x",
        "HTTP/1.1",
        (("Host", "a.test"), ("X-A", "v")),
    )
    assert r.keep_alive
    assert not parse_request(_head("GET / HTTP/1.0")).keep_alive
    assert not parse_request(_head("GET / HTTP/1.1", "Connection: Close")).keep_alive


@pytest.mark.parametrize(
    "head",
    [
        _head("GET / HTTP/2"),
        _head("GET /"),
        _head("GET / HTTP/1.1", "X-A: v", " folded"),
        _head("GET / HTTP/1.1", "Bad Name: v"),
        _head("GET / HTTP/1.1", "X: a\rb"),
        _head("GET /x\nHost:evil.test HTTP/1.1", "Host: api.test"),  # a bare LF in the target: a smuggled header
        _head("GET /a\tb HTTP/1.1"),
        _head("CONNECT api.test:443\x00 HTTP/1.1"),
    ],
)
def test_egress_malformed_requests(head: bytes) -> None:
    with pytest.raises(HttpError) as raised:
        parse_request(head)
    assert raised.value.status == 400


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ((), Body(Framing.NONE)),
        ((("Content-Length", "0"),), Body(Framing.NONE)),
        ((("Content-Length", "12"), ("content-length", "12")), Body(Framing.LENGTH, 12)),
        ((("Transfer-Encoding", "Chunked"),), Body(Framing.CHUNKED)),
    ],
)
def test_egress_request_framing(headers: tuple[tuple[str, str], ...], body: Body) -> None:
    assert request_body(headers) == body


@pytest.mark.parametrize(
    "headers",
    [
        (("Content-Length", "1"), ("Content-Length", "2")),
        (("Content-Length", "-1"),),
        (("Transfer-Encoding", "chunked"), ("Content-Length", "3")),  # the classic smuggling pair
        (("Transfer-Encoding", "gzip, chunked"),),
        (("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")),
    ],
)
def test_egress_request_framing_refused(headers: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(HttpError):
        request_body(headers)


def test_egress_response_framing() -> None:
    def resp(status: int, *headers: str) -> bytes:
        return _head(f"HTTP/1.1 {status} X", *headers)

    assert response_body("HEAD", parse_response(resp(200, "Content-Length: 5"))) == Body(Framing.NONE)
    assert response_body("GET", parse_response(resp(304, "Content-Length: 5"))) == Body(Framing.NONE)
    assert response_body("GET", parse_response(resp(200, "Content-Length: 5"))) == Body(Framing.LENGTH, 5)
    assert response_body("GET", parse_response(resp(200, "Transfer-Encoding: gzip, chunked"))) == Body(Framing.CHUNKED)
    assert response_body("GET", parse_response(resp(200, "Transfer-Encoding: gzip"))) == Body(Framing.CLOSE)
    assert response_body("GET", parse_response(resp(200))) == Body(Framing.CLOSE)
    assert parse_response(_head("HTTP/1.1 204")).reason == ""
    with pytest.raises(HttpError):
        parse_response(_head("HTTP/1.1 2000 Big"))


def test_egress_end_to_end_headers() -> None:
    headers = (
        ("Host", "a"),
        ("Connection", "keep-alive, X-Drop"),
        ("x-drop", "1"),
        ("Proxy-Authorization", "Basic x"),
        ("Content-Length", "3"),  # framing is always the proxy's own
        ("Expect", "100-continue"),
        ("X-Keep", "1"),
    )
    assert end_to_end(headers) == (("Host", "a"), ("X-Keep", "1"))


# -- injection

BINDINGS = (
    Binding(1, "K", "api.test", "x-api-key"),
    Binding(2, "T", "api.test", "authorization", bearer=True),
)
VALUES = {"K": "kv", "T": "tv", "K2": "k2v", "BAD": "a\r\nX-Evil: 1"}


def _inject(*headers: tuple[str, str], bindings: tuple[Binding, ...] = BINDINGS) -> dict[str, str]:
    return dict(inject(headers, bindings, VALUES.get).headers)


def test_egress_inject_bound_header_only() -> None:
    out = inject(
        (("X-Api-Key", K), ("X-Other", K), ("Authorization", f"bearer  {placeholder('T')} ")), BINDINGS, VALUES.get
    )
    assert dict(out.headers) == {"X-Api-Key": "kv", "X-Other": K, "Authorization": "Bearer tv"}
    assert out.injected == ("K in x-api-key", "T in authorization") and out.unusable == ()


def test_egress_inject_whole_names_and_bound_secrets_only() -> None:
    value = f"{placeholder('K2')} {K}x {K}_ {K}-{K}"
    assert _inject(("x-api-key", value)) == {"x-api-key": f"{placeholder('K2')} {K}x {K}_ kv-kv"}


def test_egress_inject_bearer_exact() -> None:
    assert _inject(("Authorization", f"Bearer {K}")) == {"Authorization": f"Bearer {K}"}  # K is no bearer binding
    assert _inject(("Authorization", f"Basic {placeholder('T')}")) == {"Authorization": f"Basic {placeholder('T')}"}
    assert _inject(("Authorization", f"Bearer {placeholder('T')} more")) == {
        "Authorization": f"Bearer {placeholder('T')} more"
    }


def test_egress_inject_refuses_unsafe_or_missing_values() -> None:
    bindings = (Binding(3, "BAD", "api.test", "x-api-key"), Binding(4, "GONE", "api.test", "x-api-key"))
    out = inject((("x-api-key", f"{placeholder('BAD')} {placeholder('GONE')}"),), bindings, VALUES.get)
    assert dict(out.headers) == {"x-api-key": f"{placeholder('BAD')} {placeholder('GONE')}"}
    assert out.injected == () and out.unusable == ("BAD", "GONE")


def test_egress_names_host() -> None:
    assert names_host((("Host", "API.test."),), "api.test", 443)
    assert names_host((("host", "api.test:8443"),), "api.test", 8443)
    assert not names_host((("Host", "api.test:444"),), "api.test", 443)
    assert not names_host((("Host", "api.test"), ("Host", "evil.test")), "api.test", 443)
    assert not names_host((), "api.test", 443)
