"""nexus.protocol: framing, message validation, nexus/* shapes, MCP version negotiation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nexus.protocol import (
    INVALID_REQUEST,
    MCP_LATEST_PROTOCOL_VERSION,
    MCP_SUPPORTED_PROTOCOL_VERSIONS,
    PARSE_ERROR,
    FrameTooLarge,
    Heartbeat,
    Hello,
    InvalidMessage,
    JsonRpcError,
    LineBuffer,
    LineReader,
    Request,
    Response,
    decode_message,
    encode_message,
    error_response,
    negotiate_protocol_version,
    parse_message,
    request,
)


def test_encode_is_one_line_and_round_trips() -> None:
    msg = request(1, "x", {"text": "a\nb\r\n", "ü": "✓"})
    data = encode_message(msg)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert decode_message(data.rstrip(b"\n")) == msg
    with pytest.raises(ValueError):
        encode_message({"x": float("nan")})


@pytest.mark.parametrize("line", [b"{", b"nope", b'{"a": 1} x', b"\xff\xfe{}"])
def test_decode_errors_are_parse_errors(line: bytes) -> None:
    with pytest.raises(JsonRpcError) as info:
        decode_message(line)
    assert info.value.code == PARSE_ERROR


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"a": 1}}, Request("m", {"a": 1}, 1)),
        ({"jsonrpc": "2.0", "id": "x", "method": "m"}, Request("m", None, "x")),
        ({"jsonrpc": "2.0", "method": "n", "params": [1]}, Request("n", [1], None)),
        ({"jsonrpc": "2.0", "id": 3, "result": {"ok": True}}, Response(3, {"ok": True})),
    ],
)
def test_parse_valid_messages(obj: Any, expected: Request | Response) -> None:
    assert parse_message(obj) == expected


@pytest.mark.parametrize(
    ("obj", "reply_id"),
    [
        ([], None),
        ([{"jsonrpc": "2.0", "id": 1, "method": "m"}], None),
        ("str", None),
        ({"id": 4, "method": "m"}, 4),
        ({"jsonrpc": "1.0", "id": 4, "method": "m"}, 4),
        ({"jsonrpc": "2.0", "id": 5, "method": 7}, 5),
        ({"jsonrpc": "2.0", "id": None, "method": "m"}, None),
        ({"jsonrpc": "2.0", "id": True, "method": "m"}, None),
        ({"jsonrpc": "2.0", "id": 6, "method": "m", "params": 3}, 6),
        ({"jsonrpc": "2.0", "id": 7}, 7),
    ],
)
def test_parse_invalid_messages(obj: Any, reply_id: Any) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_message(obj)
    assert info.value.code == INVALID_REQUEST
    assert info.value.request_id == reply_id


def test_error_response_shape() -> None:
    assert error_response(None, -32700, "bad") == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "bad"},
    }


def test_line_buffer_splits_across_feeds() -> None:
    buf = LineBuffer()
    buf.feed(b'{"a":')
    assert buf.next_line() is None
    buf.feed(b'1}\r\n\n  \n{"b":2}\n{"c"')
    assert buf.next_line() == b'{"a":1}'
    assert buf.next_line() == b'{"b":2}'  # blank lines are skipped, CR stripped
    assert buf.next_line() is None
    assert buf.pending_bytes == 4


def test_line_buffer_rejects_oversized_lines_and_resyncs() -> None:
    buf = LineBuffer(max_line_bytes=10)
    buf.feed(b"x" * 8)
    assert buf.next_line() is None
    buf.feed(b"x" * 8)
    with pytest.raises(FrameTooLarge):
        buf.next_line()
    buf.feed(b"y" * 50)  # still the same oversized line: dropped without a second error
    assert buf.next_line() is None
    buf.feed(b"zz\nok\n")
    assert buf.next_line() == b"ok"
    buf.feed(b"a" * 20 + b"\nnext\n")  # a complete oversized line in one feed
    with pytest.raises(FrameTooLarge):
        buf.next_line()
    assert buf.next_line() == b"next"


def test_line_reader_handles_chunks_and_eof() -> None:
    payload = encode_message({"big": "x" * 100_000}) + b'{"tail": 1}\n{"partial"'
    chunks = [payload[i : i + 4096] for i in range(0, len(payload), 4096)]
    reader = LineReader(lambda: chunks.pop(0) if chunks else b"")
    first = reader.read_line()
    assert first is not None and json.loads(first) == {"big": "x" * 100_000}
    assert reader.read_line() == b'{"tail": 1}'
    assert reader.read_line() is None  # the partial last line is dropped
    assert reader.read_line() is None


def test_hello_and_heartbeat_round_trip() -> None:
    hello = Hello(agent_version="1.0", image_id=None, boot_time=1.5, hostname="h", pid=12)
    assert Hello.from_params(json.loads(json.dumps(hello.to_params()))) == hello
    assert Hello.from_params({**hello.to_params(), "future_field": 1}) == hello
    beat = Heartbeat(seq=3, uptime_s=9.25)
    assert beat.to_params() == {"seq": 3, "uptime_s": 9.25}
    assert Heartbeat.from_params(beat.to_params()) == beat
    with pytest.raises(ValueError, match="pid"):
        Hello.from_params({**hello.to_params(), "pid": "12"})
    with pytest.raises(ValueError, match="seq"):
        Heartbeat.from_params({"seq": True, "uptime_s": 1})
    with pytest.raises(ValueError):
        Heartbeat.from_params([])


def test_version_negotiation() -> None:
    for version in MCP_SUPPORTED_PROTOCOL_VERSIONS:
        assert negotiate_protocol_version(version) == version
    assert negotiate_protocol_version("2099-01-01") == MCP_LATEST_PROTOCOL_VERSION
    assert negotiate_protocol_version(None) == MCP_LATEST_PROTOCOL_VERSION


def test_versions_match_the_official_sdk() -> None:
    version = pytest.importorskip("mcp_types.version")
    assert version.LATEST_HANDSHAKE_VERSION == MCP_LATEST_PROTOCOL_VERSION  # what the SDK offers in initialize
    assert set(MCP_SUPPORTED_PROTOCOL_VERSIONS) <= set(version.HANDSHAKE_PROTOCOL_VERSIONS)
