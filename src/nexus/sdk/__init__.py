"""The typed Python SDK of Nexus::

    from nexus.sdk import Nexus

    with Nexus() as nx, nx.vms.run("box") as vm:
        print(vm.exec(["uname", "-a"]).stdout)
        vm.files.write("/root/hello.txt", "hi")

Sync (``Nexus``) and async (``AsyncNexus``) alike; results are ``nexus.schemas`` models; errors are the domain's
(``nexus.domain``: ``NotFound``, ``Conflict``, ``Invalid``...) plus ``DaemonUnreachable``.
"""

from nexus.client.client import DaemonUnreachable, Unauthorized
from nexus.sdk.calls import ExecResult, FileChunk
from nexus.sdk.client import AsyncFiles, AsyncNexus, AsyncVm, AsyncVms, Files, Nexus, Processes, Vm, Vms
from nexus.sdk.terminal import Shell

__all__ = [
    "AsyncFiles",
    "AsyncNexus",
    "AsyncVm",
    "AsyncVms",
    "DaemonUnreachable",
    "ExecResult",
    "FileChunk",
    "Files",
    "Nexus",
    "Processes",
    "Shell",
    "Unauthorized",
    "Vm",
    "Vms",
]
