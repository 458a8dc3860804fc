"""A computer for one task, with the Nexus SDK: boot a microVM, run commands and move files in it, remove it.

.venv/bin/python examples/sdk_quickstart.py            # nexusd on /run/nexus/nexusd.sock, or $NEXUS_SOCKET
"""

import os

from nexus.sdk import Nexus

with Nexus(os.environ.get("NEXUS_SOCKET")) as nx, nx.vms.run("sdk-quickstart", mem_mib=512) as vm:
    print(f"{vm.name} is {vm.info.state}")
    uname = vm.exec(["uname", "-sr"])
    print("kernel:", uname.stdout.strip())
    vm.files.write("/root/hello.py", "print(sum(range(10)))\n")
    result = vm.exec("python3 /root/hello.py", on_output=lambda stream, text: print(text, end=""))  # as it comes
    assert result.ok and result.stdout == "45\n", result
    print("read back:", vm.files.read("/root/hello.py").decode().strip())
# the VM is removed here; nx.vms.run("name", keep=True) leaves it
