"""/v1/settings: preferences such as the default image, kernel, vCPUs, memory and VMM.

Each known setting is a resource of its own, ``/v1/settings/<key>`` with GET and PUT, made from
``domain.settings.SETTINGS``, so that the OpenAPI document states the value each one takes
(``api.schemas.SETTING_VALUES``). An unknown key reaches the generic ``/v1/settings/{key}`` routes, left out of the
document since the keys they serve are exactly those that do not exist: 404 with the known keys.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import create_model

from nexus.api.deps import SettingsDep
from nexus.domain.settings import SETTINGS
from nexus.schemas import SETTING_VALUES, SettingIn, SettingOut, Strict

router = APIRouter(prefix="/v1/settings", tags=["settings"])


@router.get("")
async def list_settings(settings: SettingsDep) -> list[SettingOut]:
    return [SettingOut.of(s) for s in settings.all()]


def _add_routes(key: str) -> None:
    body_model = create_model(
        "".join(part.title() for part in key.split("_")) + "In", __base__=Strict, value=(SETTING_VALUES[key], ...)
    )

    async def get(settings: Any) -> SettingOut:
        return SettingOut.of(settings.get(key))

    async def put(body: Any, settings: Any) -> SettingOut:
        return SettingOut.of(settings.set(key, body.value))

    # Set at run time (the body's model is made here); FastAPI reads the types from the signature.
    get.__annotations__ = {"settings": SettingsDep, "return": SettingOut}
    put.__annotations__ = {"body": body_model, "settings": SettingsDep, "return": SettingOut}
    description = SETTINGS[key].description
    router.get(f"/{key}", name=f"get_setting_{key}", summary=f"Get {key}", description=description)(get)
    router.put(f"/{key}", name=f"put_setting_{key}", summary=f"Set {key}", description=description)(put)


for _key in SETTINGS:
    _add_routes(_key)


@router.get("/{key}", include_in_schema=False)
async def get_setting(key: str, settings: SettingsDep) -> SettingOut:
    """Any other key: the service answers 404 with the known keys."""
    return SettingOut.of(settings.get(key))


@router.put("/{key}", include_in_schema=False)
async def put_setting(key: str, body: SettingIn, settings: SettingsDep) -> SettingOut:
    """Any other key: the service answers 404 with the known keys."""
    return SettingOut.of(settings.set(key, body.value))
