"""The QEMU driver records a VMM the moment it exists: a nexusd that dies between spawning QEMU and reaching its
QMP socket has already stored the pid and start time, so the next one adopts that QEMU instead of orphaning it.

The "QEMU" here is a stand-in that takes the real argv and never opens its sockets (as a QEMU still starting)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from nexus.domain import LaunchSpec, VmmRecord
from nexus.vmm.process import proc_stat
from nexus.vmm.qemu.accel import AccelChoice
from nexus.vmm.qemu.argv import Accel
from nexus.vmm.qemu.driver import QemuDriver


def test_the_pid_is_on_record_before_qmp_answers_and_a_new_driver_adopts_it(tmp_path: Path) -> None:
    slow_qemu = tmp_path / "qemu-system-x86_64"
    slow_qemu.write_text("#!/usr/bin/env python3\nimport time\ntime.sleep(60)\n")
    slow_qemu.chmod(slow_qemu.stat().st_mode | stat.S_IXUSR)
    spec = LaunchSpec(
        vm_id="0123456789ab",
        name="slow",
        vcpus=1,
        mem_mib=128,
        kernel=tmp_path / "vmlinux",
        kernel_version="6.1.0-test",
        initrd=tmp_path / "initrd",
        root_drive=tmp_path / "root.ext4",
        console_log=tmp_path / "console.log",
        runtime_dir=tmp_path / "run" / "0123456789ab",
    )

    async def scenario() -> None:
        driver = QemuDriver(tmp_path / "accel.json", tsc_khz=2_000_000, binary=str(slow_qemu))
        driver._choices[spec.kernel_version] = AccelChoice(Accel.TCG, "test", "k", "now")
        recorded: list[VmmRecord] = []
        launching = asyncio.create_task(driver.launch(spec, recorded.append))
        for _ in range(500):
            if recorded or launching.done():
                break
            await asyncio.sleep(0.01)
        if launching.done():
            await launching  # it failed: show why
        record = recorded[0]
        assert not launching.done()  # QMP has not answered: nexusd could die right here
        found = proc_stat(record.pid)
        assert found is not None and found.start_time == record.start_time
        adopted = await QemuDriver(tmp_path / "accel.json", tsc_khz=None).adopt(spec.vm_id, spec.name, record)
        assert adopted.pid == record.pid and adopted.exit_status is None
        launching.cancel()  # as if nexusd died: the process lives on for the adopter ...
        await asyncio.gather(launching, return_exceptions=True)
        status = await asyncio.wait_for(adopted.wait(), 5)  # ... except that a cancelled launch kills it
        assert status.code is None or status.code == -9

    asyncio.run(scenario())
    assert not os.path.exists(spec.runtime_dir)
