"""Firecracker binaries: release tarballs fetched by version from a configurable base URL, verified against a
sha256 pinned here for the releases nexus knows (``PINNED_SHA256``) or given by the user, unpacked (firecracker and
jailer only; the ``.debug`` files are skipped), checked with ``--version`` and cached; or a binary already on this
host, registered by path.

The release's own ``.sha256.txt`` is not used: a server that can replace the tarball can replace the sum beside it,
so checking one against the other proves nothing about where the binary came from.

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
_SHA256_RE = re.compile(r"[0-9a-f]{64}")

# sha256 of firecracker-v<version>-<arch>.tgz as each release publishes it (.sha256.txt), and as other projects that
# pin these releases record it. To add a release, take its sums from two independent places, never only from the
# server nexus will download from.
PINNED_SHA256: dict[tuple[str, str], str] = {
    ("1.16.1", "x86_64"): "382a02a869e4d6d5cb14c40577f9545e8458021ea8b0b2d3fc10ec14d9c242e6",
    ("1.16.1", "aarch64"): "8d0e69f6d6f9a1724551f607f18504052c16c1828ee3d4d7b6e6c73380871e0e",
    ("1.17.0", "x86_64"): "06094a1108ae9e82aa4c23a775aa92758f53f1175d422270d9d6162cb9ade558",
    ("1.17.0", "aarch64"): "e351ebe4f7a16b5873bbd51005d2e6767103cff4d5ebc829df2d3f95a93e2256",
}


def normalise_version(version: str) -> str:
    text = version.strip()
    if not FIRECRACKER_VERSION_RE.fullmatch(text):
        raise Invalid(f"Firecracker versions look like 1.16.1, got {version!r}")
    return text.removeprefix("v")


def release_url(base_url: str, version: str, arch: str) -> str:
    """The release tarball, as Firecracker publishes it."""
    return f"{base_url.rstrip('/')}/v{version}/firecracker-v{version}-{arch}.tgz"


def wanted_members(version: str, arch: str) -> dict[str, str]:
    """Member path in the tarball → cached file name (the .debug twins are not wanted)."""
    folder = f"release-v{version}-{arch}"
    return {f"{folder}/firecracker-v{version}-{arch}": "firecracker", f"{folder}/jailer-v{version}-{arch}": "jailer"}


def expected_sha256(version: str, arch: str, given: str | None) -> str:
    """The sum the tarball of ``version`` must have: ``given`` (the user's ``--sha256``), else the pinned one."""
    if given is not None:
        wanted = given.strip().lower()
        if _SHA256_RE.fullmatch(wanted) is None:
            raise Invalid(f"sha256 must be 64 hex digits, got {given!r}")
        return wanted
    pinned = PINNED_SHA256.get((version, arch))
    if pinned is None:
        known = ", ".join(sorted({v for v, a in PINNED_SHA256 if a == arch})) or "none"
        raise Invalid(
            f"nexus has no pinned sha256 for Firecracker {version} on {arch} (pinned: {known}); check the release "
            f"yourself and give its sum: nexusctl firecracker pull {version} --sha256 "
            f"<sha256 of firecracker-v{version}-{arch}.tgz>"
        )
    return pinned


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

    def pull(self, version: str, base_url: str, progress: Progress, sha256: str | None = None) -> FirecrackerBinary:
        version = normalise_version(version)
        expected = expected_sha256(version, self._arch, sha256)  # before anything is fetched
        tarball_url = release_url(base_url, version, self._arch)
        self._root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".pull-", dir=self._root))
        try:
            tarball = work / "release.tgz"
            digest = _download(tarball_url, tarball, progress)
            if digest != expected:
                whose = "the one given with --sha256" if sha256 is not None else "the one pinned in nexus"
                raise Unavailable(f"{tarball_url} has sha256 {digest}, not {expected} ({whose}); nothing installed")
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
