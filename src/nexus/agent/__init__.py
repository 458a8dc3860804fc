"""The in-guest agent: hello and heartbeats on the control port, MCP tools on the MCP port, and a portal's
gateway to nexusd (``nexus.agent.gateway``, with ``nexus-mcp`` in ``nexus.agent.gateway_client``).

Standard library only - it runs on the guest's python3 (>= 3.11) from a copy of ``nexus/__init__.py``,
``nexus/protocol/`` and ``nexus/agent/``. Run it as ``python3 -m nexus.agent`` (options: see
``nexus.agent.config``). Importing this package starts nothing and loads nothing: the names below are
imported on first use, so ``nexus-mcp`` starts without the agent's tools and servers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nexus.agent.config import AgentConfig, load_config
    from nexus.agent.main import run
    from nexus.agent.tools import Toolbox

# ``main`` is not among them: it is also the name of the submodule, which importing it binds here.
__all__ = ["AgentConfig", "Toolbox", "load_config", "run"]

_MODULES = {
    "AgentConfig": "nexus.agent.config",
    "load_config": "nexus.agent.config",
    "run": "nexus.agent.main",
    "Toolbox": "nexus.agent.tools",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
