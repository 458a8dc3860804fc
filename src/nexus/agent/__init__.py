"""The in-guest agent: hello and heartbeats on the control port, MCP tools on the MCP port.

Standard library only - it runs on the guest's python3 (>= 3.11) from a copy of ``nexus/__init__.py``,
``nexus/protocol/`` and ``nexus/agent/``. Run it as ``python3 -m nexus.agent`` (options: see
``nexus.agent.config``). Importing this package starts nothing.
"""

from __future__ import annotations

from nexus.agent.config import AgentConfig, load_config
from nexus.agent.main import main, run
from nexus.agent.tools import Toolbox

__all__ = ["AgentConfig", "Toolbox", "load_config", "main", "run"]
