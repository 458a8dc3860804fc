"""Change files inside an ext4 image file with ``debugfs`` (e2fsprogs): no mount, no loop device, nothing to
leave behind. Used to put the current agent into a copy of a VM's root drive.

The filesystem belongs to a guest, so it is treated as hostile data: every path put into a debugfs command must
match :data:`SAFE_PATH` (a name holding a newline or a quote could smuggle in a command such as ``dump``, which
writes a host file), and guest paths only ever name files inside the image (debugfs resolves symlinks in the
image). debugfs exits 0 whatever its commands did, so callers check the result (:func:`listing`, :func:`cat`);
and ``e2fsck`` runs before (replaying a journal a VM killed mid-write left) and after (a consistency check).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nexus.domain.errors import Invalid, Unavailable

SAFE_PATH = re.compile(r"^(/[A-Za-z0-9._+@-]+)+$")
S_IFDIR, S_IFREG, S_IFMT = 0o040000, 0o100000, 0o170000
_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class Entry:
    path: str  # the guest path
    mode: int  # with the type bits
    size: int

    @property
    def is_dir(self) -> bool:
        return self.mode & S_IFMT == S_IFDIR


def safe(path: str) -> str:
    if not SAFE_PATH.fullmatch(path) or any(p in (".", "..") for p in path.split("/")):
        raise Invalid(f"unexpected file name in the image: {path!r}")
    return path


def _debugfs(image: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["debugfs", *args, str(image)], capture_output=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"debugfs failed on {image.name}: {exc}") from exc


def cat(image: Path, path: str) -> bytes | None:
    """The content of the regular file ``path`` in ``image``; None when there is none."""
    done = _debugfs(image, "-R", f"stat {safe(path)}")
    if done.returncode != 0 or b"Type: regular" not in done.stdout:
        return None
    return _debugfs(image, "-R", f"cat {path}").stdout


def parse_ls(directory: str, output: str) -> list[Entry]:
    """The entries of ``debugfs -R "ls -p DIR"`` (``/inode/mode/uid/gid/name/size/`` lines), without . and ..;
    Invalid on a line of another shape (a name holding a newline splits its line in two)."""
    entries = []
    for line in output.splitlines():
        if not line.strip():
            continue
        fields = line.split("/")
        if len(fields) != 8 or fields[0] or fields[7]:
            raise Invalid(f"unexpected file name in the image, in {directory}: {line!r}")
        name = fields[5]
        if name in (".", "..") or not name:
            continue
        entries.append(Entry(f"{directory.rstrip('/')}/{name}", int(fields[2], 8), int(fields[6] or 0)))
    return entries


def listing(image: Path, directory: str) -> list[Entry] | None:
    """Everything under ``directory`` in ``image`` (parents before children); None when it is not a directory.
    Invalid when a name there is not :func:`safe`."""
    done = _debugfs(image, "-R", f"stat {safe(directory)}")
    if done.returncode != 0 or b"Type: directory" not in done.stdout:
        return None
    found: list[Entry] = []
    pending = [directory]
    while pending:
        current = pending.pop(0)
        out = _debugfs(image, "-R", f"ls -p {current}").stdout.decode(errors="replace")
        for entry in parse_ls(current, out):
            safe(entry.path)
            found.append(entry)
            if entry.is_dir:
                pending.append(entry.path)
    return found


def kind(image: Path, path: str) -> str | None:
    """What ``path`` is in ``image`` ("directory", "regular", "symlink", ...; a final symlink is not followed);
    None when there is nothing there."""
    done = _debugfs(image, "-R", f"stat {safe(path)}")
    found = re.search(rb"Type: (\w+)", done.stdout) if done.returncode == 0 else None
    return found[1].decode() if found else None


def _stage(stage: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    """The guest paths of the directories of the host tree ``stage`` (parents first) and its (file, guest path)s."""
    dirs: list[str] = []
    files: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(stage):
        dirnames.sort()
        guest_dir = "/" + Path(dirpath).relative_to(stage).as_posix() if Path(dirpath) != stage else "/"
        if guest_dir != "/":
            dirs.append(safe(guest_dir))
        for name in sorted(filenames):
            host = Path(dirpath, name)
            if os.lstat(host).st_mode & S_IFMT != S_IFREG:
                raise Invalid(f"{host} is not a regular file")
            files.append((host, safe(str(PurePosixPath(guest_dir, name)))))
    return dirs, files


def replace_commands(old: list[Entry], stage: Path, kinds: dict[str, str | None]) -> list[str]:
    """debugfs commands that remove the entries ``old`` and then put every file of the host tree ``stage`` at the
    same path in the image, owned by root, with its mode and mtime. ``kinds`` tells what each staged path is in
    the image now (:func:`kind`; for the paths of ``old``, what remains once they are removed): a directory the
    image lacks is made (0755, root's) and only then, as ``mkdir`` of an existing directory leaks an inode in
    e2fsprogs 1.47; a file there is removed before it is written again. Invalid when a staged directory is a
    file in the image, or a staged file a directory."""
    commands = [f"rm {e.path}" for e in reversed(old) if not e.is_dir]
    commands += [f"rmdir {e.path}" for e in reversed(old) if e.is_dir]
    dirs, files = _stage(stage)
    for guest_dir in dirs:
        found = kinds.get(guest_dir)
        if found is None:
            commands.append(f"mkdir {guest_dir}")
        elif found not in ("directory", "symlink"):  # a symlink is followed by the writes beneath it
            raise Invalid(f"{guest_dir} is a {found} file in the image, not a directory")
    for host, guest in files:
        found = kinds.get(guest)
        if found == "directory":
            raise Invalid(f"{guest} is a directory in the image, not a file")
        st = os.lstat(host)
        commands += ["rm " + guest] if found is not None else []
        commands += [
            f"write {host} {guest}",
            f"sif {guest} mode 0{S_IFREG | (st.st_mode & 0o7777):o}",
            f"sif {guest} uid 0",
            f"sif {guest} gid 0",
            f"sif {guest} mtime @{int(st.st_mtime)}",
        ]
    return commands


def replace_files(image: Path, stage: Path, old_root: str) -> None:
    """Empty ``old_root`` in ``image`` and copy the host tree ``stage`` in (see :func:`replace_commands`)."""
    if not str(stage).isprintable() or any(c in str(stage) for c in " \"'\\"):
        raise Invalid(f"stage directory {stage} has a name debugfs cannot take")
    old = listing(image, old_root) or []
    removed = {e.path for e in old}
    dirs, files = _stage(stage)
    kinds = {path: None if path in removed else kind(image, path) for path in [*dirs, *(g for _, g in files)]}
    with tempfile.NamedTemporaryFile("w", prefix=".debugfs-", suffix=".cmd", dir=stage.parent) as script:
        script.write("\n".join(replace_commands(old, stage, kinds)) + "\n")
        script.flush()
        done = _debugfs(image, "-w", "-f", script.name)
    if done.returncode != 0:
        raise Unavailable(f"debugfs could not write {image.name}: {done.stderr.decode(errors='replace')[-500:]}")


def fsck_repair(image: Path) -> None:
    """``e2fsck -fp``: replay the journal and fix what is safe to fix; Invalid when more is wrong."""
    done = subprocess.run(["e2fsck", "-fp", str(image)], capture_output=True, text=True, timeout=_TIMEOUT_S)
    if done.returncode >= 4:
        raise Invalid(
            f"the filesystem has errors e2fsck cannot fix on its own: {(done.stdout + done.stderr).strip()[-300:]}"
        )


def fsck_check(image: Path) -> None:
    """``e2fsck -fn``: Unavailable (with what it found) unless the filesystem is clean."""
    done = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True, timeout=_TIMEOUT_S)
    if done.returncode != 0:
        found = [line for line in done.stdout.splitlines() if line and not line.startswith("Pass ")]
        raise Unavailable(f"{image.name} is not clean after the agent went in: {' / '.join(found)[-400:]}")
