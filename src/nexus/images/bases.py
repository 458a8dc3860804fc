"""Produce the root filesystem tree an image starts from: a debootstrapped Debian or a verified tarball.

- ``debian-<suite>`` (``debian-bookworm``): ``debootstrap --variant=minbase`` with python3, from the host's own
  Debian mirror (read from its apt sources; default http://deb.debian.org/debian). The result is trimmed (apt
  caches and lists) and cached as an uncompressed tarball ``<cache>/bases/debian-<suite>-<key>.tar`` keyed by
  the recipe, so a rebuild only unpacks it. With packages, they are installed by apt-get on top of that plain
  base (:mod:`nexus.images.aptlayer`) and the result cached the same way under a key that includes them.
- a tarball path or http(s) URL: its SHA-256 must match the one given (required for URLs); downloads are
  cached by digest under ``<cache>/bases/downloads``. Unpacking goes through :mod:`nexus.images.tarsafe`.
This module does not add the agent or configure init (see :mod:`nexus.images.builder`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nexus.assets.digest import sha256_file
from nexus.assets.tools import require_tool, stream_tool
from nexus.domain.access import names_host_file
from nexus.domain.errors import Invalid, NotFound, Unavailable
from nexus.images.aptlayer import install_packages
from nexus.images.tarsafe import extract_rootfs

Progress = Callable[[str, float], None]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")
RECIPE_VERSION = "1"
DEBIAN_SUITES = {"bookworm": ("python3-minimal", "libpython3.11-stdlib")}
_TRIM = ("var/cache/apt", "var/lib/apt/lists")
_DEBOOTSTRAP_STEPS = (
    ("Retrieving", 0.1),
    ("Validating", 0.3),
    ("Extracting", 0.4),
    ("Installing", 0.5),
    ("Unpacking", 0.6),
    ("Configuring", 0.8),
    ("Base system installed", 0.95),
)


@dataclass(frozen=True, slots=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DebootstrapRecipe:
    suite: str
    mirror: str
    include: tuple[str, ...]
    variant: str = "minbase"
    packages: tuple[str, ...] = ()  # installed by apt-get on top of the debootstrapped base

    @property
    def key(self) -> str:
        parts = [RECIPE_VERSION, self.suite, self.mirror, self.variant, *self.include]
        if self.packages:  # absent for a plain base, so its key (and cached tarball) stays what it was
            parts += ["packages", *self.packages]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    @property
    def plain(self) -> DebootstrapRecipe:
        return dataclasses.replace(self, packages=())


@dataclass(frozen=True, slots=True)
class BaseInfo:
    """What the tree was made from, for the image metadata."""

    label: str  # "debian-bookworm" or the tarball's name
    digest: str  # the recipe key or the tarball's sha256
    packages: tuple[str, ...] = ()


def parse_one_line_sources(text: str) -> list[AptSource]:
    """``deb [opts] URI SUITE COMPONENTS...`` lines (deb-src and comments skipped)."""
    found = []
    for raw in text.splitlines():
        line = re.sub(r"\[[^]]*\]", " ", raw.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb":
            found.append(AptSource(line[1].rstrip("/"), (line[2],)))
    return found


def parse_deb822_sources(text: str) -> list[AptSource]:
    """deb822 ``.sources`` stanzas with ``Types: deb`` (``Enabled: no`` skipped)."""
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            suites = tuple(fields.get("suites", "").split())
            found += [AptSource(uri.rstrip("/"), suites) for uri in fields.get("uris", "").split()]
    return found


def choose_mirror(sources: list[AptSource], suite: str) -> str:
    """The first source carrying ``suite`` itself (not -security/-updates), else one ending in /debian."""
    for source in sources:
        if suite in source.suites and source.uri.startswith(("http://", "https://")):
            return source.uri
    for source in sources:
        if source.uri.endswith("/debian") and source.uri.startswith(("http://", "https://")):
            return source.uri
    return DEFAULT_MIRROR


def host_mirror(suite: str) -> str:
    """The Debian mirror this host's apt uses for ``suite`` (default :data:`DEFAULT_MIRROR`)."""
    sources: list[AptSource] = []
    files = [APT_SOURCES, *sorted(APT_SOURCES_DIR.glob("*.list")), *sorted(APT_SOURCES_DIR.glob("*.sources"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        sources += parse_deb822_sources(text) if path.suffix == ".sources" else parse_one_line_sources(text)
    return choose_mirror(sources, suite)


def debootstrap_argv(recipe: DebootstrapRecipe, target: Path) -> list[str]:
    argv = ["debootstrap", f"--variant={recipe.variant}"]
    if recipe.include:
        argv.append("--include=" + ",".join(recipe.include))
    return [*argv, recipe.suite, str(target), recipe.mirror]


def debootstrap_fraction(line: str) -> float | None:
    """Progress of debootstrap judged from one ``I: ...`` line of its output; None if it tells nothing."""
    for word, fraction in _DEBOOTSTRAP_STEPS:
        if line.startswith(f"I: {word}"):
            return fraction
    return None


def is_url(base: str) -> bool:
    return base.startswith(("http://", "https://"))


class BaseMaker:
    """Makes base trees; caches under ``<cache_dir>/bases``."""

    def __init__(self, cache_dir: Path) -> None:
        self._root = Path(cache_dir) / "bases"

    def recipe(self, base: str, packages: tuple[str, ...] = ()) -> DebootstrapRecipe:
        suite = base.removeprefix("debian-")
        if suite not in DEBIAN_SUITES:
            raise NotFound(
                f"unknown base {base!r}; known: {', '.join(f'debian-{s}' for s in DEBIAN_SUITES)}, "
                "or a tarball path/URL with its sha256"
            )
        return DebootstrapRecipe(suite, host_mirror(suite), DEBIAN_SUITES[suite], packages=packages)

    def make(
        self,
        base: str,
        dest: Path,
        sha256: str | None = None,
        progress: Progress | None = None,
        packages: tuple[str, ...] = (),
    ) -> BaseInfo:
        """Fill the empty directory ``dest`` with the base tree (with ``packages``: checked, sorted names)."""
        report = progress or (lambda _s, _f: None)
        if not is_url(base) and not names_host_file(base):  # the rule nexusd's edge checks host access by
            recipe = self.recipe(base, packages)
            tarball = self.packages_tarball(recipe, report) if packages else self.debootstrap_tarball(recipe, report)
            report("unpack base", 0.0)
            extract_rootfs(tarball, dest)
            return BaseInfo(base, recipe.key, packages)
        if packages:
            raise Invalid(f"packages go on a debian-<suite> base only, not on {base} (its apt would run on the host)")
        tarball = self._fetch(base, sha256, report)
        report("unpack base", 0.0)
        extract_rootfs(tarball, dest)
        name = base.rstrip("/").rsplit("/", 1)[-1]
        return BaseInfo(name, sha256_file(tarball) if sha256 is None else sha256.lower())

    def _cached(self, recipe: DebootstrapRecipe) -> Path:
        return self._root / f"debian-{recipe.suite}-{recipe.key}.tar"

    def packages_tarball(self, recipe: DebootstrapRecipe, report: Progress) -> Path:
        """The cached tarball of ``recipe`` with its packages: its plain base (cached too) unpacked, the packages
        installed with apt-get, trimmed and packed again."""
        cached = self._cached(recipe)
        if cached.is_file():
            report("packages (cached)", 1.0)
            return cached
        plain = self.debootstrap_tarball(recipe.plain, report)
        work = Path(tempfile.mkdtemp(prefix=".packages-", dir=self._root))
        try:
            tree = work / "root"
            tree.mkdir(mode=0o755)
            report("unpack base", 0.0)
            extract_rootfs(plain, tree)
            install_packages(tree, recipe.packages, recipe.suite, report)
            _cache_tree(tree, work, cached, report)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return cached

    def debootstrap_tarball(self, recipe: DebootstrapRecipe, report: Progress, refresh: bool = False) -> Path:
        """The cached tarball of ``recipe`` (without its packages), debootstrapping it first when missing (or
        ``refresh``)."""
        recipe = recipe.plain
        cached = self._cached(recipe)
        if cached.is_file() and not refresh:
            report("debootstrap (cached)", 1.0)
            return cached
        require_tool("debootstrap", "debootstrap")
        self._root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".debootstrap-", dir=self._root))
        try:
            tree = work / "root"

            reached = [0.0]

            def on_line(line: str) -> None:
                fraction = debootstrap_fraction(line)
                if fraction is not None and fraction > reached[0]:
                    reached[0] = fraction
                    report("debootstrap", fraction)

            report("debootstrap", 0.0)
            stream_tool(
                debootstrap_argv(recipe, tree),
                what=f"debootstrap {recipe.suite} from {recipe.mirror}",
                on_line=on_line,
                timeout_s=3600,
            )
            _cache_tree(tree, work, cached, report)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report("debootstrap", 1.0)
        return cached

    def _fetch(self, base: str, sha256: str | None, report: Progress) -> Path:
        if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise Invalid(f"sha256 must be 64 hex digits, got {sha256!r}")
        if not is_url(base):
            path = Path(base)
            if not path.is_file():
                raise NotFound(f"base tarball {base} does not exist")
            if sha256 is not None:
                _verify(path, sha256)
            return path
        if sha256 is None:
            raise Invalid(f"a base downloaded from a URL needs its sha256 ({base})")
        downloads = self._root / "downloads"
        cached = downloads / f"{sha256.lower()}.tarball"
        if cached.is_file():
            return cached
        downloads.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".download-", dir=downloads)
        try:
            with os.fdopen(fd, "wb") as out:
                _download(base, out, report)
            _verify(Path(tmp), sha256)
            os.replace(tmp, cached)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return cached


def _cache_tree(tree: Path, work: Path, cached: Path, report: Progress) -> None:
    """Trim ``tree`` (apt caches and lists) and pack it as ``cached``, built in ``work`` and renamed in."""
    for rel in _TRIM:
        _empty_dir(tree / rel)
    report("cache base", 0.0)
    partial = work / "base.tar"
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(tree, arcname=".", recursive=True)
    os.replace(partial, cached)


def _download(url: str, out: BinaryIO, report: Progress) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # http(s) only: checked by is_url
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                report("download base", done / total if total else 0.0)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unavailable(f"cannot download {url}: {exc}") from exc


def _verify(path: Path, sha256: str) -> None:
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise Invalid(f"{path.name}: sha256 is {actual}, expected {sha256.lower()}")


def _empty_dir(path: Path) -> None:
    """Delete the files below ``path`` but keep its directories (apt expects e.g. archives/partial)."""
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                _empty_dir(child)
            else:
                child.unlink()
