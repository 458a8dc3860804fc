"""/v1/settings: preferences such as the default image, kernel, vCPUs, memory and VMM."""

from __future__ import annotations

from fastapi import APIRouter

from nexus.api.deps import SettingsDep
from nexus.api.schemas import SettingIn, SettingOut

router = APIRouter(prefix="/v1/settings", tags=["settings"])


@router.get("")
async def list_settings(settings: SettingsDep) -> list[SettingOut]:
    return [SettingOut.of(s) for s in settings.all()]


@router.get("/{key}")
async def get_setting(key: str, settings: SettingsDep) -> SettingOut:
    return SettingOut.of(settings.get(key))


@router.put("/{key}")
async def put_setting(key: str, body: SettingIn, settings: SettingsDep) -> SettingOut:
    return SettingOut.of(settings.set(key, body.value))
