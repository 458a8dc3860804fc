"""A stand-in for the ``firecracker`` binary, run as a subprocess: the fake API (:mod:`tests.fakes.firecracker_api`)
plus a "guest" (``python -m tests.fakes.firecracker --api-sock PATH --id ID``; :func:`write_fake_binary` writes an
executable for it).

On ``InstanceStart`` it "boots" a real nexus agent on the host (``--vsock-unix <uds_path>``) and serves
Firecracker's hybrid vsock muxer on ``uds_path`` (``CONNECT <port>\n`` → the agent's ``<uds_path>.guest_<port>``,
``OK <n>\n``, then bytes both ways); the agent's control stream dials ``<uds_path>_1024`` itself, as Firecracker
would for a guest-initiated connection. ``SendCtrlAltDel`` stops the agent and exits 0 (a guest reboot ends
Firecracker). Faults come from ``$NEXUS_FAKE_FC_FAULTS`` (a JSON list of :class:`Fault` fields). Under the fake
jailer (:mod:`tests.fakes.jailer`), ``$NEXUS_FAKE_FC_ROOT`` names the chroot: every absolute path Firecracker is
given (API socket, kernel, drives, vsock, log, metrics) is resolved inside it, as a chrooted Firecracker would;
without it, a relative path is relative to its working dir, as for real. ``PUT /snapshot/create`` (paused) writes
the model's configuration as JSON to ``snapshot_path`` and a sparse ``mem_file_path`` of the guest's memory size;
``PUT /snapshot/load`` into a fresh process reads it back, applies ``network_overrides`` and ``vsock_override``,
reopens the drives, binds the vsock socket and "boots" a new agent (the guest's processes are not carried over; a
failed load ends the process with status 1, as for real). It never boots a kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sys
import sysconfig
from pathlib import Path
from typing import Any

from nexus.agent.procfiles import PID_FILE, proc_start_ticks, read_json
from tests.fakes.firecracker_api import NO_CONTENT, FakeFirecracker, Fault, FirecrackerModel, Reply
from tests.fakes.firecracker_spec import SpecValidator, spec_validator
from tests.helpers import REPO

FAULTS_ENV = "NEXUS_FAKE_FC_FAULTS"
ROOT_ENV = "NEXUS_FAKE_FC_ROOT"  # set by the fake jailer: the chroot this "firecracker" pretends to live in
HEARTBEAT_S = 0.5
# Firecracker v1.12.1's wording (seen from the real binary); {err} is "<strerror> (os error <errno>)".
KERNEL_OPEN = "Boot source error: The kernel file cannot be opened: {err}"
INITRD_OPEN = "Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. {err}"
NOT_ELF = (
    "Start microvm error: System configuration error: Cannot load kernel due to invalid memory configuration or "
    "invalid kernel image: Kernel Loader: failed to load ELF kernel image: Kernel Loader: Invalid Elf magic number"
)
DRIVE_OPEN = (
    "Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the "
    "backing file: {err} {path}"
)
VSOCK_BIND = (
    "Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: {err}"
)
LOGGER_OPEN = "Logger error: Failed to open target file: {err}"
METRICS_OPEN = "Metrics error: Cannot initialize the metrics system due to bad user input: {err}"
CREATE_OPEN = "Create snapshot error: Cannot perform open on the snapshot backing file: {err}"
LOAD_OPEN = (
    "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to open "
    "snapshot file: {err}"
)
# The fake's own words, where the real wording was not seen (each load failure ends the process, as for real).
MEMORY_OPEN = "Load snapshot error: Failed to restore from snapshot: Failed to open the memory file: {err}"
NOT_A_SNAPSHOT = "Load snapshot error: Failed to restore from snapshot: {path} is not a snapshot of this fake"
NO_SUCH_IFACE = "Load snapshot error: Failed to restore from snapshot: network override for unknown iface {iface}"
SNAPSHOT_FORMAT = "nexus-fake-firecracker-snapshot/1"
_PR_SET_PDEATHSIG = 1


def gateway_socket(uds: str) -> str:
    """Where the "guest" agent of the VM whose vsock socket is ``uds`` serves its gateway to local clients."""
    return f"{uds}.gw"


def process_dir(uds: str) -> str:
    """Where the "guest" agent of the VM whose vsock socket is ``uds`` keeps its background processes."""
    return f"{uds}.procs"


def stop_processes(directory: str) -> None:
    """Kill the background processes (groups) and supervisors recorded in ``directory`` and remove it: in a real
    guest they end with the VM, and its /run goes with them."""
    for pids in filter(None, (read_json(str(p)) for p in Path(directory).glob(f"*/{PID_FILE}"))):
        for key, kill in (("pid", os.killpg), ("supervisor_pid", os.kill)):
            pid, ticks = pids.get(key), pids.get(key.replace("pid", "start_ticks"))
            if isinstance(pid, int) and ticks is not None and proc_start_ticks(pid) == ticks:
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)


def _die_with_parent() -> None:  # runs in the agent child before exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


class GuestModel(FirecrackerModel):
    """The model plus a guest: a real agent process and the hybrid vsock muxer in front of it."""

    def __init__(self, validator: SpecValidator, instance_id: str, console: int = 1, root: Path | None = None) -> None:
        super().__init__(validator, instance_id=instance_id)
        self.root = root
        self.console = console
        self.exited = asyncio.Event()
        self.exit_code = 0
        self.agent: asyncio.subprocess.Process | None = None
        self._vsock_sock: socket.socket | None = None
        self._muxer: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._host_ports = itertools.count(1 << 30)
        self.add_route("PUT", "/boot-source", self._check_boot_source, preboot_only=True)
        self.add_route("PUT", "/drives/{drive_id}", self._check_drive, preboot_only=True)
        self.add_route("PUT", "/vsock", self._bind_vsock, preboot_only=True)
        self.add_route("PUT", "/logger", self._check_logger, preboot_only=True)
        self.add_route("PUT", "/metrics", self._check_metrics, preboot_only=True)

    def host(self, path: str) -> str:
        """Where ``path``, as Firecracker was given it, is on the host (inside the chroot under the jailer): absolute,
        so the agent's command line names the VM's runtime dir."""
        return str(resolve(self.root, path).absolute())

    # Like Firecracker, open every file when it is configured, as the uid this process runs as (the jailed one
    # under the jailer): a file that uid cannot read, or write when it must, is refused here as it is for real.
    def _check_boot_source(self, body: dict[str, Any], params: dict[str, str]) -> Reply:
        problem = _open_error(self.host(body["kernel_image_path"]), os.O_RDONLY)
        if problem is not None:
            return Reply.fault(KERNEL_OPEN.format(err=problem))
        if body.get("initrd_path") is not None:
            problem = _open_error(self.host(body["initrd_path"]), os.O_RDONLY)
            if problem is not None:
                return Reply.fault(INITRD_OPEN.format(err=problem))
        return self._put_boot_source(body, params)

    def _check_drive(self, body: dict[str, Any], params: dict[str, str]) -> Reply:
        flags = os.O_RDONLY if body.get("is_read_only") else os.O_RDWR
        problem = _open_error(self.host(body["path_on_host"]), flags)
        if problem is not None:
            return Reply.fault(DRIVE_OPEN.format(err=problem, path=body["path_on_host"]))
        return self._put_drive(body, params)

    def _check_logger(self, body: dict[str, Any], params: dict[str, str]) -> Reply:
        problem = _open_error(self.host(body["log_path"]), os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
        if problem is not None:  # no O_CREAT: the file (or named pipe) must exist
            return Reply.fault(LOGGER_OPEN.format(err=problem))
        return self._put_logger(body, params)

    def _check_metrics(self, body: dict[str, Any], params: dict[str, str]) -> Reply:
        if self.metrics is None:  # a second PUT is refused by the model, before any file is opened
            problem = _open_error(self.host(body["metrics_path"]), os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
            if problem is not None:
                return Reply.fault(METRICS_OPEN.format(err=problem))
        return self._put_metrics(body, params)

    def _bind_vsock(self, body: dict[str, Any], params: dict[str, str]) -> Reply:
        problem = self._listen_vsock(body["uds_path"])
        return Reply.fault(VSOCK_BIND.format(err=problem)) if problem else self._put_vsock(body, params)

    def _listen_vsock(self, uds_path: str) -> str | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.host(uds_path))
            sock.listen(16)
        except OSError as exc:
            sock.close()
            return _os_error(exc)
        if self._vsock_sock is not None:
            self._vsock_sock.close()
        self._vsock_sock = sock
        return None

    def on_snapshot_create(self, body: dict[str, Any]) -> Reply:
        state = {
            "format": SNAPSHOT_FORMAT,
            "machine_config": self.machine_config,
            "boot_source": self.boot_source,
            "drives": self.drives,
            "network_interfaces": self.network_interfaces,
            "vsock": self.vsock,
        }
        # The state as JSON; the memory as a sparse file of the guest's memory size (the real one writes it all).
        contents = ((body["snapshot_path"], json.dumps(state).encode()), (body["mem_file_path"], b""))
        for path, data in contents:
            try:  # as Firecracker opens them: created, or truncated when they exist
                with open(self.host(path), "wb") as fh:
                    fh.write(data)
                    if not data:
                        fh.truncate(self.machine_config["mem_size_mib"] << 20)
            except OSError as exc:
                return Reply.fault(CREATE_OPEN.format(err=_os_error(exc)))
        self._say(f"snapshot written to {body['snapshot_path']}")
        return NO_CONTENT

    def on_snapshot_load(self, body: dict[str, Any]) -> Reply:
        reply = self._restore(body)
        if reply is not NO_CONTENT:
            self._spawn(self.power_off(1))  # a failed load leaves a Firecracker that cannot run anything: it exits
        return reply

    def _restore(self, body: dict[str, Any]) -> Reply:
        mem = body["mem_backend"]["backend_path"] if "mem_backend" in body else body["mem_file_path"]
        try:
            state = json.loads(Path(self.host(body["snapshot_path"])).read_bytes())
        except OSError as exc:
            return Reply.fault(LOAD_OPEN.format(err=_os_error(exc)))
        except ValueError:
            state = None
        if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
            return Reply.fault(NOT_A_SNAPSHOT.format(path=body["snapshot_path"]))
        problem = _open_error(self.host(mem), os.O_RDONLY)
        if problem is not None:
            return Reply.fault(MEMORY_OPEN.format(err=problem))
        ifaces: dict[str, dict[str, Any]] = state["network_interfaces"]
        for override in body.get("network_overrides", []):
            if override["iface_id"] not in ifaces:
                return Reply.fault(NO_SUCH_IFACE.format(iface=override["iface_id"]))
            ifaces[override["iface_id"]]["host_dev_name"] = override["host_dev_name"]
        for drive in state["drives"].values():
            problem = _open_error(self.host(drive["path_on_host"]), os.O_RDONLY if drive["is_read_only"] else os.O_RDWR)
            if problem is not None:
                return Reply.fault(DRIVE_OPEN.format(err=problem, path=drive["path_on_host"]))
        vsock = state["vsock"]
        if vsock is not None:
            vsock["uds_path"] = body.get("vsock_override", {}).get("uds_path", vsock["uds_path"])
            problem = self._listen_vsock(vsock["uds_path"])
            if problem is not None:
                return Reply.fault(VSOCK_BIND.format(err=problem))
        self.machine_config, self.boot_source, self.drives = (
            state["machine_config"],
            state["boot_source"],
            state["drives"],
        )
        self.network_interfaces, self.vsock = ifaces, vsock
        self._say(f"restored from {body['snapshot_path']}")
        self.on_instance_start()  # the fake's guest is its agent: a new one, linked to this VM's sockets
        return NO_CONTENT

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _put_action(self, body: dict[str, Any], params: dict[str, str]) -> Reply:
        if body["action_type"] == "InstanceStart" and not self.started and self.boot_source is not None:
            with Path(self.host(self.boot_source["kernel_image_path"])).open("rb") as fh:
                if fh.read(4) != b"\x7fELF":
                    return Reply.fault(NOT_ELF)
        return super()._put_action(body, params)

    def on_instance_start(self) -> None:
        self._spawn(self._boot())

    def on_ctrl_alt_del(self) -> None:
        self._spawn(self.power_off(0))

    def _say(self, text: str) -> None:
        os.write(self.console, f"[fake firecracker] {text}\n".encode())

    async def _boot(self) -> None:
        assert self.boot_source is not None
        self._say(f"booting {self.boot_source['kernel_image_path']}: {self.boot_source.get('boot_args', '')}")
        if self.vsock is None or self._vsock_sock is None:
            self._say("no vsock device: the agent has no link to the host")
            return
        uds = self.host(self.vsock["uds_path"])
        self._muxer = await asyncio.start_unix_server(self._mux, sock=self._vsock_sock)
        cmdline = self._write_cmdline(f"{uds}.cmdline", self.boot_source.get("boot_args", ""))
        self.agent = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nexus.agent",
            "--vsock-unix",
            uds,
            "--heartbeat-s",
            str(HEARTBEAT_S),
            "--image-json",
            f"{uds}.no-image.json",
            "--cmdline",
            cmdline,
            "--gateway-socket",  # one per "guest" on this host: beside the VM's vsock socket (gateway_socket())
            gateway_socket(uds),
            "--gateway-http",
            "none",
            "--process-dir",
            process_dir(uds),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self.console,
            stderr=self.console,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
            preexec_fn=_die_with_parent,  # a SIGKILLed Firecracker takes its "guest" with it
        )
        self._say(f"guest agent pid {self.agent.pid}")
        if await self.agent.wait() != 0 and not self.exited.is_set():  # the guest died: a panic reboots it
            self._say(f"guest agent exited with {self.agent.returncode}")

    @staticmethod
    def _write_cmdline(path: str, boot_args: str) -> str:
        """The guest's /proc/cmdline, for the agent's ``--cmdline``."""
        Path(path).write_text(boot_args + "\n")
        return path

    def _remove_files(self) -> None:
        if self.vsock is not None:
            uds = self.host(self.vsock["uds_path"])
            stop_processes(process_dir(uds))
            for leftover in (uds, f"{uds}.cmdline"):
                Path(leftover).unlink(missing_ok=True)

    async def _mux(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One host-initiated connection: ``CONNECT <port>\\n`` → the guest's listener, ``OK <n>\\n``, proxy."""
        try:
            line = await reader.readuntil(b"\n")
            match = re.fullmatch(rb"CONNECT ([0-9]{1,10})\n", line)
            if match is None or self.vsock is None:
                raise ValueError(line)
            guest_reader, guest_writer = await asyncio.open_unix_connection(
                f"{self.host(self.vsock['uds_path'])}.guest_{int(match[1])}"
            )
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()  # nothing listens on that guest port: Firecracker closes the connection
            return
        writer.write(b"OK %d\n" % next(self._host_ports))
        await asyncio.gather(_pump(reader, guest_writer), _pump(guest_reader, writer))
        for w in (writer, guest_writer):
            w.close()

    async def power_off(self, code: int) -> None:
        """Stop the guest (agent and muxer) and let :func:`serve` end with ``code``."""
        if self.agent is not None and self.agent.returncode is None:
            self.agent.terminate()
            try:
                await asyncio.wait_for(self.agent.wait(), 5)
            except TimeoutError:
                self.agent.kill()
                await self.agent.wait()
        if self._muxer is not None:
            self._muxer.close()
        if self._vsock_sock is not None:
            self._vsock_sock.close()
        self._remove_files()
        self.exit_code = code
        self.exited.set()


def _os_error(exc: OSError) -> str:
    """An OS error as Rust's io::Error prints it."""
    return f"{os.strerror(exc.errno or 0)} (os error {exc.errno})"


def _open_error(path: str, flags: int) -> str | None:
    try:
        os.close(os.open(path, flags))
    except OSError as exc:
        return _os_error(exc)
    return None


def faults_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> list[Fault]:
    """Faults to inject, from ``$NEXUS_FAKE_FC_FAULTS``: ``[{"method": ..., "path": ..., "fault_message": ...}]``."""
    raw = environ.get(FAULTS_ENV)
    return [Fault(**item) for item in json.loads(raw)] if raw else []


def resolve(root: Path | None, path: str | Path) -> Path:
    """``path`` as a process chrooted at ``root`` would open it (a relative path is relative to the chroot's /, the
    jailed process's working directory)."""
    if root is None:
        return Path(path)
    inner = Path("/", path)
    if ".." in inner.parts:
        raise ValueError(f"{path}: '..' in a jailed path")
    return root.joinpath(*inner.parts[1:])


async def serve(api_sock: Path, instance_id: str) -> int:
    validator = spec_validator(closed=True)
    root = Path(os.environ[ROOT_ENV]) if os.environ.get(ROOT_ENV) else None
    model = GuestModel(validator, instance_id, root=root)
    model.faults.extend(faults_from_env())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: model._spawn(model.power_off(0)))
    async with FakeFirecracker(resolve(root, api_sock), model):
        await model.exited.wait()
    return model.exit_code


def main(argv: list[str] | None = None) -> int:
    """``firecracker --api-sock PATH --id ID [--level LEVEL]``: the options Nexus and the jailer pass, as the real
    binary takes them."""
    parser = argparse.ArgumentParser(prog="firecracker (fake)")
    parser.add_argument("--api-sock", type=Path, required=True)
    parser.add_argument("--id", default="anonymous-instance")
    parser.add_argument("--level", choices=["Error", "Warning", "Info", "Debug", "Trace", "Off"])
    parser.add_argument("--start-time-us", type=int)  # the jailer passes these
    parser.add_argument("--start-time-cpu-us", type=int)
    parser.add_argument("--parent-cpu-time-us", type=int)  # with --new-pid-ns
    args = parser.parse_args(argv)
    return asyncio.run(serve(args.api_sock, args.id))


def write_fake_binary(directory: Path, *, world_runnable: bool = False) -> Path:
    """An executable ``directory/firecracker`` that runs this fake with the real binary's argv. ``world_runnable``:
    under an interpreter any uid can run (for the fake jailer's unprivileged uid), with this venv's packages."""
    path = directory / "firecracker"
    python, pythonpath = sys.executable, str(REPO)
    if world_runnable and not _world_runnable(Path(sys.executable)):
        # PYTHONPATH entries' .pth files are not read, so the editable install's src/ is named too
        python, pythonpath = SYSTEM_PYTHON, f"{REPO}:{REPO / 'src'}:{sysconfig.get_paths()['purelib']}"
    path.write_text(f'#!/bin/sh\nPYTHONPATH={pythonpath} exec {python} -m tests.fakes.firecracker "$@"\n')
    path.chmod(0o755)
    return path


SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, same minor version as the venv's: its compiled wheels load


def _world_runnable(executable: Path) -> bool:
    real = executable.resolve()
    dirs_ok = all(d.stat().st_mode & 0o001 for d in real.parents)
    return dirs_ok and real.stat().st_mode & 0o005 == 0o005


if __name__ == "__main__":
    sys.exit(main())
