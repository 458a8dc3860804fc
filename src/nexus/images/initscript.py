"""The text of the initramfs ``/init`` (a BusyBox ``sh`` script), rendered from the module plan.

What the script does: mount /proc, /sys, /dev; insert the planned modules in order, each with its
``<module>.<param>=`` arguments taken from the kernel command line (``insmod`` does not read them itself);
wait for ``root=`` (default /dev/vda; ``LABEL=``/``UUID=`` via findfs); mount it (``rootfstype=`` default
ext4, ``ro``/``rw`` default rw, ``rootflags=``); move /dev /proc /sys into it; ``exec switch_root`` to
``init=`` (default /sbin/init). With ``nexus.ip=ADDR/PREFIX,GATEWAY,MAC`` it first configures the NIC with
that MAC (address, link up, default route): Debian's cloud kernels lack CONFIG_IP_PNP, so the kernel's own
``ip=`` would be ignored, and doing it here serves every init system alike. A NIC that cannot be configured is
a warning on the console, not a failed boot. On any failure it prints the reason, /dev and the dmesg tail on the
console and powers off at once, so a broken boot ends instead of hanging. With ``nexus.probe`` on the command line
it only prints :data:`PROBE_MARKER` and powers off (the accelerator probe boots it that way).
Pure: returns a string, touches nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from nexus.images.kmods import KernelModule

PROBE_MARKER = "NEXUS-PROBE-OK"
MODULES_PATH = "lib/modules"
DEFAULT_ROOTWAIT_S = 10

_HEAD = r"""#!/bin/sh
# Nexus initramfs /init: load drivers, mount the root drive, switch_root to its init.
export PATH=/bin
set -f
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
cmdline=$(cat /proc/cmdline)

fail() {
    echo "nexus-initramfs: FATAL: $*"
    echo "nexus-initramfs: /dev holds:"
    ls /dev
    echo "nexus-initramfs: last kernel messages:"
    dmesg | tail -n 30
    echo "nexus-initramfs: powering off"
    sync
    poweroff -f
    sleep 10
}

root=/dev/vda
rootfstype=ext4
rootflags=
mode=rw
init=/sbin/init
rootwait=__ROOTWAIT__
netconf=
for arg in $cmdline; do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
        rootflags=*) rootflags="${arg#rootflags=}" ;;
        init=*) init="${arg#init=}" ;;
        ro) mode=ro ;;
        rw) mode=rw ;;
        nexus.rootwait=*) rootwait="${arg#nexus.rootwait=}" ;;
        nexus.ip=*) netconf="${arg#nexus.ip=}" ;;
        nexus.probe|nexus.probe=*)
            echo "__MARKER__"
            poweroff -f
            sleep 10 ;;
    esac
done

# load NAME FILE DASHED-NAME: insmod FILE with the NAME.param=value arguments of the kernel command line
load() {
    params=
    for arg in $cmdline; do
        case "$arg" in "$1".*=*|"$3".*=*) params="$params ${arg#*.}" ;; esac
    done
    insmod "$2" $params
}

# net ADDR/PREFIX,GATEWAY,MAC: configure the interface with that MAC
net() {
    addr="${1%%,*}"; rest="${1#*,}"; gw="${rest%%,*}"; mac="${rest#*,}"
    dev=
    i=0
    while [ -z "$dev" ] && [ "$i" -lt 100 ]; do
        for d in $(ls /sys/class/net); do  # not a glob: globbing is off (set -f)
            [ "$(cat "/sys/class/net/$d/address" 2>/dev/null)" = "$mac" ] && dev="$d"
        done
        [ -n "$dev" ] || usleep 20000
        i=$((i + 1))
    done
    [ -n "$dev" ] || { echo "nexus-initramfs: warning: no network interface with MAC $mac"; return 1; }
    ip link set "$dev" up && ip addr add "$addr" dev "$dev" && ip route add default via "$gw" dev "$dev" \
        || { echo "nexus-initramfs: warning: cannot configure $dev as $addr via $gw"; return 1; }
}

"""

_TAIL = r"""
[ -n "$netconf" ] && net "$netconf"
i=0
while :; do
    case "$root" in
        LABEL=*|UUID=*) dev=$(findfs "$root" 2>/dev/null) ;;
        *) dev="$root" ;;
    esac
    [ -n "$dev" ] && [ -b "$dev" ] && break
    i=$((i + 1))
    [ "$i" -ge $((rootwait * 50)) ] && fail "root device $root did not appear within ${rootwait}s"
    usleep 20000
done

mount -t "$rootfstype" -o "$mode${rootflags:+,$rootflags}" "$dev" /newroot \
    || fail "cannot mount $dev ($rootfstype, $mode) on /newroot"
if [ ! -e "/newroot$init" ] && [ ! -L "/newroot$init" ]; then
    fail "init $init is missing from the root filesystem on $dev"
fi
for fs in dev proc sys; do
    if [ -d "/newroot/$fs" ]; then
        mount --move "/$fs" "/newroot/$fs"
    else
        umount "/$fs"
    fi
done
exec switch_root /newroot "$init"
"""


def module_file(module: KernelModule) -> str:
    """Where a module lives inside the initramfs (absolute, as /init sees it)."""
    return f"/{MODULES_PATH}/{module.name}.ko"


def render_init(modules: Sequence[KernelModule], required: Sequence[str], rootwait_s: int = DEFAULT_ROOTWAIT_S) -> str:
    """The /init script. ``required`` names modules whose failure to load is fatal; others only warn."""
    lines = []
    for module in modules:
        call = f"load {module.name} {module_file(module)} {module.name.replace('_', '-')}"
        if module.name in required:
            lines.append(f'{call} || fail "cannot load kernel module {module.name}"')
        else:
            lines.append(f'{call} || echo "nexus-initramfs: warning: kernel module {module.name} did not load"')
    head = _HEAD.replace("__ROOTWAIT__", str(int(rootwait_s))).replace("__MARKER__", PROBE_MARKER)
    return head + "\n".join(lines) + "\n" + _TAIL
