"""Firecracker binaries: release tarballs fetched by version from a configurable base URL, verified against the
release's ``.sha256.txt``, unpacked (firecracker and jailer only; the ``.debug`` files are skipped), checked with
``--version`` and cached; or a binary already on this host, registered by path.

Layout: ``<cache_dir>/firecracker/<version>/{firecracker,jailer,firecracker.json}``; a pull works in a temp dir
beside it and renames the finished directory into place, so a killed pull leaves nothing half-made.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import httpx

from nexus.assets.digest import sha256_file
from nexus.assets.tools import run_tool
from nexus.domain import FirecrackerBinary, Invalid, NotFound, Progress, Unavailable
from nexus.domain.validation import FIRECRACKER_VERSION_RE

METADATA_FILE = "firecracker.json"
_REPORTED_RE = re.compile(r"Firecracker v(\d+\.\d+\.\d+)")


def normalise_version(version: str) -> str:
    text = version.strip()
    if not FIRECRACKER_VERSION_RE.fullmatch(text):
        raise Invalid(f"Firecracker versions look like 1.16.1, got {version!r}")
    return text.removeprefix("v")


def release_urls(base_url: str, version: str, arch: str) -> tuple[str, str]:
    """The tarball and its checksum file, as Firecracker publishes them."""
    name = f"firecracker-v{version}-{arch}.tgz"
    return f"{base_url.rstrip('/')}/v{version}/{name}", f"{base_url.rstrip('/')}/v{version}/{name}.sha256.txt"


def wanted_members(version: str, arch: str) -> dict[str, str]:
    """Member path in the tarball → cached file name (the .debug twins are not wanted)."""
    folder = f"release-v{version}-{arch}"
    return {f"{folder}/firecracker-v{version}-{arch}": "firecracker", f"{folder}/jailer-v{version}-{arch}": "jailer"}


def parse_checksum(text: str, filename: str) -> str:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 1 and re.fullmatch(r"[0-9a-f]{64}", parts[0]) and (len(parts) == 1 or parts[-1] == filename):
            return parts[0]
    raise Unavailable(f"no sha256 for {filename} in its checksum file")


def reported_version(binary: Path) -> str:
    done = run_tool([str(binary), "--version"], what=f"ask {binary} its version", timeout_s=30)
    match = _REPORTED_RE.search(done.stdout + done.stderr)
    if match is None:
        raise Invalid(f"{binary} --version does not say it is Firecracker: {done.stdout.strip()[:200]!r}")
    return match[1]


class FirecrackerStore:
    """Firecracker binaries cached under ``<cache_dir>/firecracker``."""

    def __init__(self, cache_dir: Path, arch: str | None = None) -> None:
        self._root = cache_dir / "firecracker"
        self._arch = arch or platform.machine()

    def list(self) -> list[FirecrackerBinary]:
        found = [b for d in sorted(self._root.glob("*")) if not d.name.startswith(".") and (b := self._load(d))]
        return sorted(found, key=lambda b: tuple(int(x) for x in b.version.split(".")), reverse=True)

    def get(self, version: str | None = None) -> FirecrackerBinary:
        binaries = self.list()
        if version is not None:
            binaries = [b for b in binaries if b.version == normalise_version(version)]
        if not binaries:
            what = f"Firecracker {version}" if version else "Firecracker binary"
            raise NotFound(f"no cached {what}; pull it with: nexusctl firecracker pull [VERSION]")
        return binaries[0]

    def remove(self, version: str) -> None:
        target = self._root / normalise_version(version)
        if not (target / METADATA_FILE).is_file():
            raise NotFound(f"no cached Firecracker {version}")
        shutil.rmtree(target)

    def pull(self, version: str, base_url: str, progress: Progress) -> FirecrackerBinary:
        version = normalise_version(version)
        tarball_url, checksum_url = release_urls(base_url, version, self._arch)
        self._root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".pull-", dir=self._root))
        try:
            progress("checksum", 0.0)
            expected = parse_checksum(_get_text(checksum_url), tarball_url.rsplit("/", 1)[1])
            tarball = work / "release.tgz"
            digest = _download(tarball_url, tarball, progress)
            if digest != expected:
                raise Unavailable(f"{tarball_url} has sha256 {digest}, but its checksum file says {expected}")
            progress("unpack", 0.9)
            staged = work / version
            staged.mkdir()
            _extract(tarball, wanted_members(version, self._arch), staged)
            return self._install(staged, version, source=tarball_url, sha256=digest)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def add_local(self, binary: Path) -> FirecrackerBinary:
        """Register a Firecracker binary already on this host (not copied: upgrading it is the host's job)."""
        binary = binary.resolve()
        if not binary.is_file():
            raise Invalid(f"{binary} is not a file")
        version = reported_version(binary)
        self._root.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=".add-", dir=self._root)) / version
        staged.mkdir()
        (staged / "firecracker").symlink_to(binary)
        jailer = binary.with_name("jailer")
        if jailer.is_file():
            (staged / "jailer").symlink_to(jailer)
        try:
            return self._install(staged, version, source=str(binary), sha256=sha256_file(binary))
        finally:
            shutil.rmtree(staged.parent, ignore_errors=True)

    def _install(self, staged: Path, version: str, source: str, sha256: str) -> FirecrackerBinary:
        found = reported_version(staged / "firecracker")
        if found != version:
            raise Invalid(f"the binary says it is Firecracker {found}, not {version}")
        meta = {
            "version": version,
            "source": source,
            "sha256": sha256,
            "installed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (staged / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        target = self._root / version
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
        binary = self._load(target)
        if binary is None:
            raise Unavailable(f"Firecracker {version} did not install cleanly in {target}")
        return binary

    @staticmethod
    def _load(folder: Path) -> FirecrackerBinary | None:
        try:
            meta = json.loads((folder / METADATA_FILE).read_text())
            jailer = folder / "jailer"
            return FirecrackerBinary(
                version=meta["version"],
                path=folder / "firecracker",
                jailer=jailer if jailer.exists() else None,
                sha256=meta["sha256"],
                source=meta["source"],
                installed_at=datetime.fromisoformat(meta["installed_at"]),
            )
        except (OSError, ValueError, KeyError):
            return None


def _get_text(url: str) -> str:
    try:
        response = httpx.get(url, follow_redirects=True, timeout=60)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot fetch {url}: {exc}") from exc
    return response.text


def _download(url: str, dest: Path, progress: Progress) -> str:
    digest = hashlib.sha256()
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response, dest.open("wb") as out:
            response.raise_for_status()
            total = int(response.headers.get("content-length") or 0)
            done = 0
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                progress("download", 0.85 * done / total if total else 0.0)
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot download {url}: {exc}") from exc
    return digest.hexdigest()


def _extract(tarball: Path, members: dict[str, str], dest: Path) -> None:
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive.getmembers():
                name = members.get(member.name.removeprefix("./"))
                if name is None or not member.isfile():
                    continue  # .debug files, SHA256SUMS, docs...
                source = archive.extractfile(member)
                if source is None:
                    continue
                with source, (dest / name).open("wb") as out:
                    shutil.copyfileobj(source, out)
                (dest / name).chmod(0o755)
    except (tarfile.TarError, OSError) as exc:
        raise Unavailable(f"cannot unpack {tarball.name}: {exc}") from exc
    if not (dest / "firecracker").is_file():
        raise Unavailable(f"the release tarball has no {next(iter(members))}")
