"""VM use cases: create, inspect, start, stop, remove, tag, history, logs.

The only code that coordinates the store, the settings and the VMM driver. It does not know HTTP or the CLI.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from collections import deque

from nexus.domain import (
    InvalidState,
    Layout,
    StateChange,
    Unavailable,
    Vm,
    VmFilter,
    VmmDriver,
    VmSpec,
    VmState,
)
from nexus.domain.validation import check_mem_mib, check_name, check_tag, check_vcpus
from nexus.services.settings import SettingsService
from nexus.store import VmRepo, now

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0


def new_vm_id() -> str:
    return secrets.token_hex(6)


class VmService:
    def __init__(self, repo: VmRepo, settings: SettingsService, layout: Layout, driver: VmmDriver | None) -> None:
        self._repo = repo
        self._settings = settings
        self._layout = layout
        self._driver = driver

    def create(self, spec: VmSpec) -> Vm:
        check_name(spec.name)
        tags = tuple(sorted({check_tag(t) for t in spec.tags}))
        vcpus = check_vcpus(spec.vcpus if spec.vcpus is not None else self._settings.int_value("default_vcpus"))
        mem_mib = check_mem_mib(
            spec.mem_mib if spec.mem_mib is not None else self._settings.int_value("default_mem_mib")
        )
        created = now()
        vm = Vm(
            id=new_vm_id(),
            name=spec.name,
            role=spec.role,
            vcpus=vcpus,
            mem_mib=mem_mib,
            image=spec.image or self._settings.str_value("default_image"),
            kernel=spec.kernel or self._settings.str_value("default_kernel"),
            state=VmState.CREATED,
            created_at=created,
            updated_at=created,
            tags=tags,
        )
        self._repo.insert(vm, reason="created")
        log.info("vm created id=%s name=%s", vm.id, vm.name)
        return vm

    def get(self, ref: str) -> Vm:
        return self._repo.get(ref)

    def find(self, flt: VmFilter) -> list[Vm]:
        return self._repo.find(flt)

    def count(self) -> int:
        return self._repo.count()

    async def remove(self, ref: str, force: bool) -> None:
        vm = self._repo.get(ref)
        if vm.state.has_process:
            if not force:
                raise InvalidState(f"VM {vm.name} is {vm.state}; stop it first or remove it with force")
            await self.stop(vm.id)
        self._repo.delete(vm.id)
        shutil.rmtree(self._layout.vm_dir(vm.id), ignore_errors=True)
        log.info("vm removed id=%s name=%s", vm.id, vm.name)

    async def start(self, ref: str, wait: bool = True) -> Vm:
        vm = self._repo.get(ref)
        if vm.state.has_process:
            raise InvalidState(f"VM {vm.name} is already {vm.state}")
        driver = self._require_driver()
        self._repo.set_state(vm.id, vm.state, VmState.STARTING, reason="start requested")
        await driver.start(vm)
        return self._repo.get(vm.id)

    async def stop(self, ref: str) -> Vm:
        vm = self._repo.get(ref)
        if not vm.state.has_process:
            raise InvalidState(f"VM {vm.name} is {vm.state}; there is nothing to stop")
        driver = self._require_driver()
        if vm.state is not VmState.STOPPING:
            self._repo.set_state(vm.id, vm.state, VmState.STOPPING, reason="stop requested")
        await driver.stop(vm, STOP_TIMEOUT_S)
        self._repo.set_state(vm.id, VmState.STOPPING, VmState.STOPPED, reason="stopped")
        return self._repo.get(vm.id)

    def history(self, ref: str) -> list[StateChange]:
        return self._repo.history(self._repo.get(ref).id)

    def logs(self, ref: str, tail: int | None) -> list[str]:
        """The VM's console log lines (the last ``tail`` of them when given); empty before its first boot."""
        vm = self._repo.get(ref)
        try:
            with self._layout.console_log(vm.id).open(encoding="utf-8", errors="replace") as fh:
                lines = deque(fh, maxlen=tail) if tail is not None else list(fh)
        except FileNotFoundError:
            return []
        return [line.rstrip("\n") for line in lines]

    def add_tags(self, ref: str, tags: list[str]) -> Vm:
        vm = self._repo.get(ref)
        self._repo.add_tags(vm.id, sorted({check_tag(t) for t in tags}))
        return self._repo.get(vm.id)

    def remove_tags(self, ref: str, tags: list[str]) -> Vm:
        vm = self._repo.get(ref)
        self._repo.remove_tags(vm.id, tags)
        return self._repo.get(vm.id)

    def driver_name(self) -> str | None:
        return self._driver.name if self._driver else None

    def _require_driver(self) -> VmmDriver:
        if self._driver is None:
            raise Unavailable("no VMM driver available")
        return self._driver
