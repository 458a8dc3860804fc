"""``python3 -m nexus.agent``: run the in-guest agent."""

from __future__ import annotations

import sys

from nexus.agent.main import main

sys.exit(main())
