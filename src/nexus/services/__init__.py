"""Use cases. The only layer that coordinates store, drivers and the rest."""

from nexus.services.settings import Setting, SettingsService
from nexus.services.vms import VmService

__all__ = ["Setting", "SettingsService", "VmService"]
