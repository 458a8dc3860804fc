"""A terminal in a real QEMU guest: ``nexusctl vm shell`` under a real pseudo-terminal on the host drives the guest's
login shell and ``python3 -i`` (prompt, an expression, ^C, a resize seen by ``stty size``, the shell's exit code),
and a model's ``shell_*`` tools read the guest's screen. One boot."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.api_client import NexusClient
from tests.e2e.conftest import NEXUSCTL
from tests.helpers import Daemon
from tests.pty_terminal import Terminal

pytestmark = pytest.mark.vm

VM = "e2e-pty"


@pytest.fixture
def vm(api: NexusClient) -> Iterator[str]:
    api.create_vm(name=VM, mem_mib=512)
    try:
        api.start_vm(VM)
        yield VM
    finally:
        api.remove_vm(VM, force=True)


def test_vm_shell_and_shell_tools_in_a_real_guest(e2e_daemon: Daemon, api: NexusClient, vm: str) -> None:
    term = Terminal([NEXUSCTL, "--socket", str(e2e_daemon.socket), "vm", "shell", vm], rows=30, cols=100)
    try:
        term.expect(rb"root@[^\r\n]*# ", timeout_s=60)  # the guest's login shell (bash -l as root)
        term.send(b"stty size; echo TERM=$TERM\r")
        term.expect(rb"[\r\n]30 100\r\nTERM=xterm-256color\r\n")
        term.resize(40, 132)
        time.sleep(0.5)
        term.send(b"stty size\r")
        term.expect(rb"[\r\n]40 132\r\n")
        term.send(b"python3 -q -i\r")
        term.expect(rb">>> ", timeout_s=30)
        term.send(b"6*7\r")
        term.expect(rb"\r\n42\r\n>>> ")
        term.send(b"while True: pass\r")
        time.sleep(0.5)
        term.send(b"\x03")
        term.expect(rb"KeyboardInterrupt\r\n>>> ")
        term.send(b"raise SystemExit\r")
        term.expect(rb"# ")
        term.send(b"exit 3\r")
        assert term.proc.wait(timeout=30) == 3
    finally:
        term.close()

    opened = api.call_tool(vm, "shell_open", {"command": ["python3", "-q", "-i"], "wait_s": 10})
    session = opened["structuredContent"]["session"]
    assert opened["structuredContent"]["output"].endswith(">>> ")
    api.call_tool(vm, "shell_write", {"session": session, "text": "print('x' * 3)", "keys": ["Enter"]})
    screen = api.call_tool(vm, "shell_read", {"session": session, "mode": "screen", "wait_s": 10})
    assert screen["structuredContent"]["screen"].splitlines() == [">>> print('x' * 3)", "xxx", ">>>"]
    closed = api.call_tool(vm, "shell_close", {"session": session})
    assert closed["isError"] is False
