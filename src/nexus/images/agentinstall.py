"""Copy the Nexus guest agent into a root filesystem tree and add its launcher.

The agent is the stdlib-only part of the ``nexus`` package: ``nexus/__init__.py``, ``nexus/protocol/`` and
``nexus/agent/``. They go to ``/opt/nexus/lib/nexus/...``; ``/usr/local/bin/nexus-agent`` runs
``/usr/bin/python3 -m nexus.agent`` with ``PYTHONPATH=/opt/nexus/lib``, and ``/usr/local/bin/nexus-mcp`` runs
``nexus.agent.gateway_client`` the same way (the stdio MCP server agents inside a portal add: it reaches nexusd
through the agent's gateway). When the guest's Python has the same
minor version as the host's, the files are byte-compiled here (:mod:`nexus.images.pycompile`), sparing every
boot from a fresh disk the compile time. Only ``*.py`` files (and ``py.typed``) are copied; caches and tests are not.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from nexus.domain.errors import Invalid
from nexus.images import rootfs
from nexus.images.pycompile import compile_in_root

AGENT_LIB = "/opt/nexus/lib"
LAUNCHER = "/usr/local/bin/nexus-agent"
MCP_LAUNCHER = "/usr/local/bin/nexus-mcp"
GUEST_PYTHON = "/usr/bin/python3"
AGENT_PARTS = ("__init__.py", "protocol", "agent")
_VERSION_RE = re.compile(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)


def launcher_script(python: str = GUEST_PYTHON, lib: str = AGENT_LIB) -> str:
    return f"""#!/bin/sh
# Nexus guest agent launcher (installed by the Nexus image builder).
export PYTHONPATH={lib}
export PYTHONUNBUFFERED=1
exec {python} -S -m nexus.agent "$@"
"""


def mcp_launcher_script(python: str = GUEST_PYTHON, lib: str = AGENT_LIB) -> str:
    return f"""#!/bin/sh
# nexus-mcp: MCP over stdio to nexusd through this VM's Nexus gateway (installed by the Nexus image builder).
export PYTHONPATH={lib}
exec {python} -S -m nexus.agent.gateway_client "$@"
"""


def read_agent_version(agent_src: Path) -> str:
    """``__version__`` from ``<agent_src>/__init__.py``, read as text (the package is not imported)."""
    match = _VERSION_RE.search((agent_src / "__init__.py").read_text())
    if match is None:
        raise Invalid(f"{agent_src / '__init__.py'} does not set __version__")
    return match[1]


def agent_files(agent_src: Path) -> list[tuple[Path, str]]:
    """(host file, path relative to the package dir) for every file that goes into the guest, sorted.

    Invalid when ``agent_src`` is not a package holding ``agent/__main__.py``.
    """
    if not (agent_src / "__init__.py").is_file() or not (agent_src / "agent" / "__main__.py").is_file():
        raise Invalid(f"{agent_src} is not the nexus package with agent/__main__.py (the agent entry point)")
    files: list[tuple[Path, str]] = [(agent_src / "__init__.py", "__init__.py")]
    for part in AGENT_PARTS[1:]:
        directory = agent_src / part
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(agent_src)
            if "__pycache__" in rel.parts or "tests" in rel.parts or not path.is_file():
                continue
            if path.suffix == ".py" or path.name == "py.typed":
                files.append((path, rel.as_posix()))
    return files


def agent_digest(agent_src: Path) -> str:
    """A short sha256 of every file :func:`install_agent` would copy (names and bytes): which agent an image built
    from ``agent_src`` now would carry, where ``__version__`` alone does not change with every edit."""
    digest = hashlib.sha256()
    for src, rel in agent_files(agent_src):
        digest.update(rel.encode() + b"\0" + src.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def install_agent(root: Path, agent_src: Path, guest_python_minor: str | None) -> str:
    """Copy the agent and its launcher into ``root``; return the agent version.

    ``guest_python_minor`` ("3.11") enables byte-compiling when it equals the host's minor version.
    """
    version = read_agent_version(agent_src)
    package_dir = f"{AGENT_LIB}/nexus"
    for src, rel in agent_files(agent_src):
        rootfs.copy_file(root, src, f"{package_dir}/{rel}", mode=0o644)
    rootfs.write_file(root, LAUNCHER, launcher_script(), mode=0o755)
    rootfs.write_file(root, MCP_LAUNCHER, mcp_launcher_script(), mode=0o755)
    if guest_python_minor is not None:
        compile_in_root(root, package_dir, guest_python_minor)
    return version
