"""Run one host tool (apt, dpkg-deb, depmod, debootstrap, mke2fs ...) and turn its failure into a domain error.

The argv always comes from a pure builder elsewhere; this module only executes it, with a timeout, and reports
the tail of the tool's stderr when it fails. It never goes through a shell.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from nexus.domain.errors import Unavailable

STDERR_TAIL_LINES = 12


def stderr_tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of ``text``, joined with newlines."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def require_tool(name: str, package: str) -> str:
    """Absolute path of ``name`` on PATH (also the sbin dirs), or Unavailable naming the package to install."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        raise Unavailable(f"{name} is not installed (apt-get install {package})")
    return found


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    cwd: Path | None = None,
    timeout_s: float = 600.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion, capturing text output; raise Unavailable (with stderr's tail) on failure.

    ``what`` names the step for the message ("download linux-image-6.1.0-56-cloud-amd64").
    """
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            env=None if env is None else dict(env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError as exc:
        raise Unavailable(f"cannot {what}: {argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"cannot {what}: {argv[0]} did not finish within {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        tail = stderr_tail(done.stderr) or stderr_tail(done.stdout) or "(no output)"
        raise Unavailable(f"cannot {what}: {argv[0]} exited with {done.returncode}:\n{tail}")
    return done


def stream_tool(
    argv: Sequence[str],
    *,
    what: str,
    on_line: Callable[[str], None],
    cwd: Path | None = None,
    timeout_s: float = 1800.0,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run ``argv``, handing each line of its merged stdout/stderr to ``on_line`` as it comes.

    Raises Unavailable with the output's tail when the tool fails or outlives ``timeout_s`` (it is killed).
    """
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except FileNotFoundError as exc:
        raise Unavailable(f"cannot {what}: {argv[0]} is not installed") from exc
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout_s, expire)
    timer.start()
    try:
        for line in proc.stdout or ():
            line = line.rstrip("\n")
            if line.strip():
                tail.append(line)
            on_line(line)
        returncode = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if expired.is_set():
        raise Unavailable(f"cannot {what}: {argv[0]} did not finish within {timeout_s:.0f} s")
    if returncode != 0:
        raise Unavailable(f"cannot {what}: {argv[0]} exited with {returncode}:\n" + ("\n".join(tail) or "(no output)"))
