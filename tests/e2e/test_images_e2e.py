"""Images with tools, with real VMs under QEMU through the e2e session's nexusd and ``nexusctl``.

``image build --packages git``: debootstrap's plain base (cached) with git installed by apt-get in a chroot, the
layer cached under the state dir's cache (only the first run on a machine downloads it: about a minute more),
then a VM from the image runs ``git --version``. ``image build --from-vm``: a file written in that VM, the VM
stopped, its root drive saved as an image, a new VM from it finds the file (and git). Two boots; every image and
VM made here is removed, also on failure.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import AGENT_IMAGE, nexusctl, nexusctl_json
from tests.helpers import Daemon

pytestmark = pytest.mark.vm

GIT_IMAGE = "e2e-img-git"
SAVED_IMAGE = "e2e-img-saved"
VMS = ("e2e-img-src", "e2e-img-dst")


def _sh(daemon: Daemon, vm: str, script: str) -> str:
    return nexusctl(daemon, "vm", "exec", "--shell", vm, "--", script).stdout.decode()


@pytest.fixture
def clean(e2e_daemon: Daemon) -> Iterator[Daemon]:
    """Nothing of this module before or after it (VMs first: they hold the images)."""

    def sweep() -> None:
        for vm in VMS:
            nexusctl(e2e_daemon, "vm", "rm", "--force", vm, check=False)
        for image in (SAVED_IMAGE, GIT_IMAGE):
            nexusctl(e2e_daemon, "image", "rm", image, check=False)

    sweep()
    try:
        yield e2e_daemon
    finally:
        with contextlib.suppress(Exception):
            sweep()


def test_an_image_with_git_and_one_saved_from_a_vm(clean: Daemon) -> None:
    d = clean
    started = time.monotonic()
    image = nexusctl_json(d, "image", "build", "--name", GIT_IMAGE, "--packages", "git")
    took = time.monotonic() - started
    print(f"image build --packages git took {took:.0f} s")
    assert (image["packages"], image["origin"], image["size_mib"]) == (["git"], None, 1024)
    assert nexusctl_json(d, "image", "inspect", GIT_IMAGE)["packages"] == ["git"]

    vm = nexusctl_json(d, "vm", "run", VMS[0], "--image", GIT_IMAGE, "--mem", "384")
    assert vm["state"] == "ready"
    assert nexusctl(d, "vm", "exec", VMS[0], "--", "git", "--version").stdout.startswith(b"git version 2.")
    _sh(d, VMS[0], "echo 'made in the source VM' > /root/made-here.txt && git init -q /root/repo && sync")

    refused = nexusctl(d, "image", "build", "--from-vm", VMS[0], "--name", SAVED_IMAGE, check=False)
    assert refused.returncode != 0 and b"stop it" in refused.stderr
    nexusctl(d, "vm", "stop", VMS[0])
    saved = nexusctl_json(d, "image", "build", "--from-vm", VMS[0], "--name", SAVED_IMAGE)
    assert saved["origin"]["vm_name"] == VMS[0] and saved["origin"]["image"] == GIT_IMAGE
    assert saved["packages"] == ["git"] and saved["agent_version"] == image["agent_version"]

    nexusctl(d, "vm", "rm", VMS[0])  # the saved image does not need its VM
    nexusctl_json(d, "vm", "run", VMS[1], "--image", SAVED_IMAGE, "--mem", "384")
    assert _sh(d, VMS[1], "cat /root/made-here.txt") == "made in the source VM\n"
    assert _sh(d, VMS[1], "git -C /root/repo rev-parse --is-inside-work-tree") == "true\n"
    guest = _sh(d, VMS[1], "cat /etc/nexus/image.json")
    assert f'"id": "{saved["id"]}"' in guest and f'"vm_name": "{VMS[0]}"' in guest
    # while VMs[1] uses it the image stays; the default image the session built is not touched
    in_use = nexusctl(d, "image", "rm", SAVED_IMAGE, check=False)
    assert in_use.returncode == 5 and VMS[1].encode() in in_use.stderr
    assert nexusctl_json(d, "image", "inspect", AGENT_IMAGE)["origin"] is None
