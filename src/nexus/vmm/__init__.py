"""Virtual machine monitors: one driver per VMM (``qemu``), all behind the domain's ``VmmDriver`` port."""

from __future__ import annotations

__all__: list[str] = []
