"""Secret values on disk: ``state_dir/secrets/`` (mode 0700), one file per secret named by it (0600), each write
atomic (a temp file in the same directory, fsync, rename, fsync of the directory). A name is checked again here,
so no path can leave the directory whatever a caller passes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nexus.domain.egress import SECRET_NAME_RE, check_secret_name

DIR_MODE = 0o700
FILE_MODE = 0o600
_TEMP_PREFIX = "."  # a temp file is ".NAME.XXXX": never a secret's name, so a sweep knows it


class SecretFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        directory.chmod(DIR_MODE)  # made earlier, or under another umask: root's alone either way

    def _path(self, name: str) -> Path:
        return self.directory / check_secret_name(name)

    def write(self, name: str, value: bytes) -> None:
        path = self._path(name)
        fd, temp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{name}.", dir=self.directory)  # made 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), FILE_MODE)
                fh.write(value)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        self._sync_directory()

    def read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
        self._sync_directory()

    def names(self) -> set[str]:
        return {p.name for p in self.directory.iterdir() if SECRET_NAME_RE.fullmatch(p.name) and p.is_file()}

    def sweep(self, keep: set[str]) -> list[str]:
        removed = []
        for path in sorted(self.directory.iterdir()):
            if path.name in keep or path.is_dir():  # nexusd makes no directories here: not its to remove
                continue
            path.unlink(missing_ok=True)
            removed.append(path.name)
        if removed:
            self._sync_directory()
        return removed

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
