"""``nexusctl vm shell`` and ``vm exec -t``: this terminal attached to a program on a PTY in the VM (``sdk.Shell``).

With a terminal on stdin it goes into raw mode, so every key reaches the guest (^C interrupts the guest's
program, not nexusctl) and the guest's output is shown as it is; the window size goes along at the start and on
every SIGWINCH; the terminal is restored on every way out. Without one (pipes) the bytes pass as they are, the size
is $LINES/$COLUMNS or 24x80, and the end of stdin is sent as ^D (end of input on the guest's terminal). nexusctl
exits with the program's exit code (128+N when signal N killed it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Annotated

import typer

from nexus.cli.common import client
from nexus.sdk import Shell

_EOT = b"\x04"  # ^D: what a terminal sends for "end of input"


def window_size() -> tuple[int, int]:
    """``(rows, cols)`` of the terminal on stdin, else $LINES/$COLUMNS or 24x80."""
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
    except (OSError, ValueError):
        size = shutil.get_terminal_size((80, 24))
    return max(size.lines, 1), max(size.columns, 1)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """``fd``'s terminal in raw mode for the block, restored however it ends."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSADRAIN)  # not TCSAFLUSH: keys typed while connecting still go
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _pump_input(shell: Shell, fd: int) -> None:
    """stdin to the guest until its end (then ^D) or until the terminal closes."""
    with contextlib.suppress(Exception):  # the shell closed: the program ended, nothing more to send
        while data := os.read(fd, 4096):
            shell.write(data)
        shell.write(_EOT)


def attach(shell: Shell, *, forward_input: bool = True) -> int:
    """Show the program's output and send it stdin until it ends; its exit code."""
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    done = threading.Event()
    failure: list[BaseException] = []

    def show_output() -> None:
        out = sys.stdout.buffer
        try:
            while data := shell.read():
                out.write(data)
                out.flush()
        except BaseException as exc:  # handed to the main thread, which raises it once the terminal is restored
            failure.append(exc)
        finally:
            done.set()

    def on_resize(_signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(Exception):
            shell.resize(*window_size())

    def on_end(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # through the finally clauses: the terminal is restored

    handlers: dict[signal.Signals, Callable[[int, FrameType | None], None]] = {
        signal.SIGTERM: on_end,
        signal.SIGHUP: on_end,
    }
    if interactive:
        handlers[signal.SIGWINCH] = on_resize
    with raw_terminal(stdin) if interactive else contextlib.nullcontext():
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
        try:
            threading.Thread(target=show_output, name="terminal-output", daemon=True).start()
            if forward_input:
                threading.Thread(target=_pump_input, args=(shell, stdin), name="terminal-input", daemon=True).start()
            done.wait()  # signal handlers run while the main thread waits here
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if failure:
        raise failure[0]
    return shell.exit_code if shell.exit_code is not None else 1


def run_terminal(
    ctx: typer.Context,
    ref: str,
    command: list[str] | None,
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    forward_input: bool = True,
) -> int:
    rows, cols = window_size()
    with client(ctx) as nexus, nexus.vms.shell(ref, command, rows=rows, cols=cols, cwd=cwd, env=env) as shell:
        return attach(shell, forward_input=forward_input)


def shell(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="VM name or id (a unique id prefix works too)")],
    command: Annotated[
        str | None, typer.Option("--command", "-c", help="run this /bin/sh -c script instead of the login shell")
    ] = None,
) -> None:
    """Open a shell in the VM on this terminal (raw mode, window size, ^C to the guest); exits with its code."""
    argv = ["/bin/sh", "-c", command] if command is not None else None
    raise typer.Exit(run_terminal(ctx, ref, argv))
