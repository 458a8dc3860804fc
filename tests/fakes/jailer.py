"""A stand-in for Firecracker's ``jailer`` binary: the argv it takes, the chroot it builds, the privileges it drops.

Like the real jailer (v1.12.1, whose behaviour this follows) it validates ``--id`` (1-64 letters, digits, hyphens)
and ``--exec-file`` (must exist, its name must contain "firecracker"), creates ``<chroot-base>/<exec name>/<id>/root``
(nothing is done for parts that exist), copies the exec file into it, hands the root to ``uid:gid``, clears the
environment, drops to ``uid:gid`` and execs ``<exec name> --id <id> --start-time-us N --start-time-cpu-us N`` (each
option and value two arguments, as the real one passes them) plus everything after ``--``. With ``--new-pid-ns`` it
forks, writes the child's pid to ``<root>/<exec name>.pid`` and exits 0 while the child goes on (the real one puts
the child in a new PID namespace; this one cannot). It does not pivot_root (the fake firecracker, a Python
program, could not run inside an empty root): it exports the root as ``$NEXUS_FAKE_FC_ROOT`` and the fake
firecracker resolves every path it is given inside it, and opens each file as ``uid`` as the real one does, so a
file the driver forgot to link into the chroot or make readable (writable) for ``uid`` fails as it would when
jailed. Unlike the real one, it needs the chroot's parent dirs searchable by ``uid`` (it reaches the root through
them). The test-only ``$NEXUS_FAKE_FC_*`` variables survive the environment wipe. ``--netns``, cgroups and
``--daemonize`` are refused: it cannot emulate them, and a fake that ignored them would hide that (the real jailer's
tests, tests/integration/test_firecracker_real.py, cover cgroups).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from tests.fakes.firecracker import FAULTS_ENV, ROOT_ENV
from tests.helpers import REPO

_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    split = args_in.index("--") if "--" in args_in else len(args_in)
    own, forwarded = args_in[:split], args_in[split + 1 :]
    parser = argparse.ArgumentParser(prog="jailer (fake)")
    parser.add_argument("--id", required=True)
    parser.add_argument("--exec-file", type=Path, required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--chroot-base-dir", type=Path, default=Path("/srv/jailer"))
    parser.add_argument("--new-pid-ns", action="store_true")
    args = parser.parse_args(own)
    if not _ID_RE.match(args.id):
        parser.error(f"invalid instance id {args.id!r}")
    exec_file: Path = args.exec_file
    if not exec_file.is_file():
        parser.error(f"exec file {exec_file} does not exist")
    if "firecracker" not in exec_file.name:
        parser.error(f"exec file name {exec_file.name!r} must contain 'firecracker'")
    root = args.chroot_base_dir / exec_file.name / args.id / "root"
    root.mkdir(parents=True, exist_ok=True)
    jailed_exec = root / exec_file.name
    shutil.copy2(exec_file, jailed_exec)
    os.chown(root, args.uid, args.gid)
    env = {ROOT_ENV: str(root), **{k: v for k, v in os.environ.items() if k == FAULTS_ENV}}
    os.chdir(root)
    argv_out = [f"./{exec_file.name}", "--id", args.id, "--start-time-us", "0", "--start-time-cpu-us", "0"]
    if args.new_pid_ns:
        child = os.fork()
        if child:
            (root / f"{exec_file.name}.pid").write_text(str(child))
            return 0
        argv_out += ["--parent-cpu-time-us", "0"]
    os.setgroups([])
    os.setgid(args.gid)
    os.setuid(args.uid)
    os.execve(jailed_exec, [*argv_out, *forwarded], env)
    return 1  # not reached


def write_fake_jailer(directory: Path) -> Path:
    """An executable ``directory/jailer`` that runs this fake with the real jailer's argv."""
    path = directory / "jailer"
    path.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m tests.fakes.jailer "$@"\n')
    path.chmod(0o755)
    return path


if __name__ == "__main__":
    sys.exit(main())
