"""``nexusd``: parse flags, load config, wire adapters into services, serve the API until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
from pathlib import Path

from nexus import __version__
from nexus.api import create_app
from nexus.daemon import server
from nexus.daemon.config import Config, load
from nexus.daemon.credentials import tls_context
from nexus.daemon.drivers import choose_driver
from nexus.daemon.statelock import state_dir_lock
from nexus.daemon.wiring import wire
from nexus.domain import NexusError
from nexus.mcp import McpEndpoints, Workspaces
from nexus.services import SettingsService
from nexus.store import SettingsRepo, open_database
from nexus.workspaces import probe_backend

log = logging.getLogger("nexusd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nexusd", description="Nexus daemon: owns every microVM's lifecycle.")
    parser.add_argument("--config", type=Path, help="TOML config file (default /etc/nexus/nexusd.toml if present)")
    parser.add_argument("--state-dir", type=Path, help="persistent state (default /var/lib/nexus)")
    parser.add_argument("--runtime-dir", type=Path, help="sockets and pid files (default /run/nexus)")
    parser.add_argument("--socket", type=Path, help="API Unix socket (default /run/nexus/nexusd.sock)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="also serve over TCP (requires --token-file)")
    parser.add_argument("--token-file", type=Path, help="file holding the admin bearer token for --listen (mode 600)")
    parser.add_argument("--tls-cert", type=Path, help="serve --listen over TLS with this PEM certificate (and chain)")
    parser.add_argument("--tls-key", type=Path, help="the private key of --tls-cert")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--no-network",
        action="store_true",
        help="give VMs no NIC and make no bridge, TAP or firewall rule (config: network = false)",
    )
    parser.add_argument(
        "--stop-vms-on-exit",
        action="store_true",
        help="power VMs off on SIGTERM/SIGINT instead of leaving them running (config: stop_vms_on_exit = true)",
    )
    parser.add_argument("--version", action="version", version=f"nexusd {__version__}")
    return parser.parse_args(argv)


async def run(
    config: Config, token: str | None, tcp: tuple[str, int] | None, tls: ssl.SSLContext | None = None
) -> None:
    with state_dir_lock(config.state_dir):
        await _run(config, token, tcp, tls)


async def _run(config: Config, token: str | None, tcp: tuple[str, int] | None, tls: ssl.SSLContext | None) -> None:
    layout = config.layout
    conn = open_database(layout.database)
    try:
        vmm = SettingsService(SettingsRepo(conn)).str_value("vmm")
        driver, driver_reason = choose_driver(vmm, layout, config.firecracker_binary, config.jailer())
        storage = probe_backend(layout.state_dir)
        services, runtime = wire(conn, layout, driver, driver_reason, storage, config)
        await services.vms.recover()
        services.drives.recover()
        services.secrets.recover()
        mcp = McpEndpoints(
            services.vms,
            services.guest,
            services.network,
            services.drives,
            Workspaces(services.snapshots, services.checkpoints),
            portal_policy=services.policy,
            policy=config.origin_policy(),
            session_idle_timeout_s=config.mcp_session_idle_timeout_s,
            audit=services.audit,
        )
        app = create_app(
            services,
            tcp_token=token,
            vm_mcp=mcp.vm,
            manage_mcp=mcp.manage,
            browser_check=config.origin_policy().refusal,  # the MCP endpoints' DNS-rebinding rule, for terminals
        )
        sockets = [server.bind_unix(config.socket, config.socket_mode)]
        try:
            if tcp is not None:
                sockets.append(server.bind_tcp(*tcp))
            log.info(
                "nexusd %s serving on %s%s (state %s; %s; storage %s)",
                __version__,
                config.socket,
                f" and {'tls' if tls else 'tcp'} {tcp[0]}:{tcp[1]}" if tcp else "",
                layout.state_dir,
                driver_reason,
                storage.reason,
            )

            def on_exit() -> None:  # end long-lived answers (MCP sessions, audit streams) as shutdown begins
                mcp.stop()
                services.audit.close()

            background = {
                asyncio.create_task(services.audit.retain(), name="audit-retention"),
                asyncio.create_task(services.lifetimes.run(), name="lifetimes"),  # expiry and idle suspend
                asyncio.create_task(services.pools.run(), name="pools"),  # keeps the warm pools full
            }
            try:
                async with mcp.running():  # the MCP sessions' task group: up before serving, closed at shutdown
                    await server.serve(app, sockets, on_exit=on_exit, tls=tls)
            finally:
                for task in background:
                    task.cancel()
                await asyncio.wait(background)
        finally:
            for sock in sockets:
                sock.close()
            config.socket.unlink(missing_ok=True)
            await services.egress.close()
            if config.stop_vms_on_exit:
                await runtime.stop_all()
            else:
                left = await runtime.detach_all()
                if left:
                    log.info("left %d VM(s) running for the next nexusd: %s", len(left), ", ".join(left))
    finally:
        conn.close()
        log.info("nexusd stopped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load(
            args.config,
            {
                "state_dir": args.state_dir,
                "runtime_dir": args.runtime_dir,
                "socket": args.socket,
                "listen": args.listen,
                "token_file": args.token_file,
                "log_level": args.log_level,
                "network": False if args.no_network else None,
                "stop_vms_on_exit": True if args.stop_vms_on_exit else None,
                "tls_cert": args.tls_cert,
                "tls_key": args.tls_key,
            },
        )
        logging.basicConfig(
            stream=sys.stderr,
            level=config.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        token = config.read_token()
        tcp = config.tcp_address()
        config.jailer()  # refuse a half-configured jailer before binding anything
        tls_files = config.tls_files()
        tls = tls_context(*tls_files) if tls_files is not None else None
        asyncio.run(run(config, token, tcp, tls))
    except NexusError as exc:
        print(f"nexusd: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
