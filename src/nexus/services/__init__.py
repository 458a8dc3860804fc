"""Use cases. The only layer that coordinates stores, drivers and the rest."""

from nexus.services.assets import AssetService, BootFiles
from nexus.services.drives import DriveService
from nexus.services.network import NetworkService
from nexus.services.runtime import RuntimeTimeouts, VmRuntime
from nexus.services.settings import SettingsService
from nexus.services.snapshots import SnapshotService
from nexus.services.vms import VmService

__all__ = [
    "AssetService",
    "BootFiles",
    "DriveService",
    "NetworkService",
    "RuntimeTimeouts",
    "SettingsService",
    "SnapshotService",
    "VmRuntime",
    "VmService",
]
