"""Firecracker binary use cases: list, pull (a release by version, default from settings, checked against a sum
pinned in nexus or given by the user) or register a local binary, remove."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from nexus.domain import FirecrackerBinary, FirecrackerSource, Invalid, Progress
from nexus.services.assets import no_progress
from nexus.services.settings import SettingsService

log = logging.getLogger(__name__)


class FirecrackerService:
    def __init__(self, source: FirecrackerSource, settings: SettingsService) -> None:
        self._source = source
        self._settings = settings
        self._lock = asyncio.Lock()

    def list(self) -> list[FirecrackerBinary]:
        return self._source.list()

    def get(self, version: str | None = None) -> FirecrackerBinary:
        return self._source.get(version)

    async def pull(
        self,
        version: str | None = None,
        path: Path | None = None,
        progress: Progress = no_progress,
        sha256: str | None = None,
    ) -> FirecrackerBinary:
        """Fetch release ``version`` (default: the firecracker_version setting) and check it against ``sha256`` or
        the sum pinned for that version, or register ``path``."""
        if path is not None and sha256 is not None:
            raise Invalid("sha256 checks a downloaded release; a binary registered by its path is not downloaded")
        async with self._lock:
            if path is not None:
                binary = await asyncio.to_thread(self._source.add_local, path)
            else:
                wanted = version or self._settings.str_value("firecracker_version")
                base_url = self._settings.str_value("firecracker_base_url")
                binary = await asyncio.to_thread(self._source.pull, wanted, base_url, progress, sha256)
        log.info("firecracker %s ready at %s (from %s)", binary.version, binary.path, binary.source)
        return binary

    def remove(self, version: str) -> None:
        self._source.remove(version)
