"""The files that make BusyBox init run a Nexus guest: a complete /etc/inittab and the scripts it calls.

- ``sysinit``: ``/etc/nexus/rc.sysinit`` remounts / rw, mounts what is not mounted yet (proc, sys, devtmpfs,
  devpts, /dev/shm, /run, /tmp), adds /dev/fd and friends, brings up ``lo`` and sets the hostname.
- ``respawn``: the agent launcher, and BusyBox ``acpid`` so the ACPI power button (QEMU ``system_powerdown``)
  runs ``/etc/nexus/acpi/PWRF/00000080`` = ``busybox poweroff``; busybox init then runs ``shutdown``.
- ``shutdown``: ``/etc/nexus/rc.shutdown`` stops every process (TERM, up to 3 s, then KILL) - BusyBox init would
  only do that *after* the shutdown actions, too late to unmount - then syncs, swaps off, unmounts everything
  (``umount -a -r``: read-only when busy) and remounts / read-only. When the power button started it, it then
  powers off at once: BusyBox init itself would pause 2 s more (``sleep1()`` twice) before doing so.
Every command goes through ``/bin/busybox`` explicitly, so the guest's own PATH and tools do not matter.
Pure: functions return text.
"""

from __future__ import annotations

BUSYBOX = "/bin/busybox"
SYSINIT = "/etc/nexus/rc.sysinit"
SHUTDOWN = "/etc/nexus/rc.shutdown"
ACPI_DIR = "/etc/nexus/acpi"
ACPI_ACTIONS = "/etc/nexus/acpid.conf"
POWER_BUTTON_HANDLER = f"{ACPI_DIR}/PWRF/00000080"
DEFAULT_HOSTNAME = "nexus"
FAST_POWEROFF_FLAG = "/run/nexus-fast-poweroff"
STOP_WAIT_TENTHS = 30  # how long rc.shutdown lets processes exit after SIGTERM, in tenths of a second


def inittab(agent_launcher: str, console_shell: bool = False) -> str:
    """The complete /etc/inittab (it replaces the stock one)."""
    lines = [
        "# /etc/inittab for BusyBox init, written by Nexus; it replaces the distribution's one.",
        "# <id>::<action>:<process>  (see busybox's examples/inittab)",
        f"::sysinit:{SYSINIT}",
        f"::respawn:{agent_launcher}",
        f"::respawn:{BUSYBOX} acpid -f -c {ACPI_DIR} -a {ACPI_ACTIONS} -l /dev/null -p /run/acpid.pid",
    ]
    if console_shell:
        lines.append("ttyS0::respawn:-/bin/sh")
    lines += [
        f"::ctrlaltdel:{BUSYBOX} reboot",
        f"::shutdown:{SHUTDOWN}",
        f"::restart:{BUSYBOX} init",
    ]
    return "\n".join(lines) + "\n"


def rc_sysinit(default_hostname: str = DEFAULT_HOSTNAME) -> str:
    return f"""#!{BUSYBOX} sh
# Nexus sysinit for BusyBox init: filesystems, loopback, hostname. Shell builtins where possible: every
# command run costs a fork and exec, which is slow under TCG.
bb={BUSYBOX}
[ -r /proc/mounts ] || $bb mount -t proc -o nosuid,nodev,noexec proc /proc
mounted=" "
while read -r _ dir _; do mounted="$mounted$dir "; done < /proc/mounts
mnt() {{ # TYPE DIR OPTIONS
    case "$mounted" in *" $2 "*) return 0 ;; esac
    [ -d "$2" ] || $bb mkdir -p "$2"
    $bb mount -t "$1" -o "$3" "$1" "$2" || echo "nexus: cannot mount $1 on $2"
}}
$bb mount -o remount,rw / || echo "nexus: cannot remount / read-write"
mnt sysfs /sys nosuid,nodev,noexec
mnt devtmpfs /dev mode=0755,nosuid
mnt devpts /dev/pts gid=5,mode=620,ptmxmode=000
mnt tmpfs /dev/shm mode=1777,nosuid,nodev
mnt tmpfs /run mode=0755,nosuid,nodev
mnt tmpfs /tmp mode=1777,nosuid,nodev
[ -e /dev/fd ] || $bb ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || $bb ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || $bb ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || $bb ln -s /proc/self/fd/2 /dev/stderr
[ -d /run/lock ] || $bb mkdir -p /run/lock
$bb ip link set lo up
name={default_hostname}
[ -s /etc/hostname ] && read -r name < /etc/hostname
$bb hostname "$name"
exit 0
"""


def rc_shutdown() -> str:
    return f"""#!{BUSYBOX} sh
# Nexus shutdown for BusyBox init: stop processes, then unmount cleanly.
bb={BUSYBOX}
fast=
[ -e {FAST_POWEROFF_FLAG} ] && fast=1
others() {{ # is any process left besides init, kthreadd's children, zombies and this script?
    for dir in /proc/[0-9]*; do
        pid=${{dir#/proc/}}
        [ "$pid" = 1 ] || [ "$pid" = 2 ] || [ "$pid" = $$ ] && continue
        read -r stat 2>/dev/null < "$dir/stat" || continue
        set -- ${{stat##*) }}
        [ "$1" = Z ] || [ "$2" = 2 ] && continue
        return 0
    done
    return 1
}}
# kill is the shell's builtin on purpose: kill(-1) spares only its caller, which must be this script.
trap '' TERM
kill -TERM -1 2>/dev/null
i=0
while others && [ $i -lt {STOP_WAIT_TENTHS} ]; do $bb usleep 100000; i=$((i + 1)); done
kill -KILL -1 2>/dev/null
$bb sync
$bb swapoff -a 2>/dev/null
$bb umount -a -r 2>/dev/null
$bb mount -o remount,ro / 2>/dev/null
$bb sync
# After the power button everything is stopped and read-only: power off now rather than after init's pauses.
[ -n "$fast" ] && $bb poweroff -f
exit 0
"""


def acpid_actions() -> str:
    """BusyBox acpid action file: event key → handler path relative to the config dir."""
    return "PWRF PWRF/00000080\n"


def power_button_handler() -> str:
    return f"""#!{BUSYBOX} sh
# ACPI power button (QEMU system_powerdown): orderly power-off through init, whose shutdown action powers off
# as soon as it is done (the flag) instead of after BusyBox init's two fixed one-second pauses.
echo > {FAST_POWEROFF_FLAG}
exec {BUSYBOX} poweroff
"""
