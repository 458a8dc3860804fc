"""/v1/kernels and /v1/images: list, pull or build (NDJSON progress), inspect, remove."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse

from nexus.api.deps import Assets, Via
from nexus.api.streaming import Emit, ndjson, progress_emitter
from nexus.domain import ImageRequest, names_host_file, require_host_access
from nexus.schemas import ImageBuildIn, ImageOut, KernelOut, KernelPullIn, KernelRef

router = APIRouter(tags=["assets"])
_NDJSON: dict[int | str, dict[str, Any]] = {200: {"content": {"application/x-ndjson": {}}}}


@router.get("/v1/kernels")
async def list_kernels(assets: Assets) -> list[KernelOut]:
    return [KernelOut.of(k) for k in assets.kernels()]


@router.post("/v1/kernels/pull", response_class=StreamingResponse, responses=_NDJSON)
async def pull_kernel(request: Request, body: KernelPullIn, assets: Assets) -> StreamingResponse:
    """Fetch (or refresh) a kernel: NDJSON progress events, then the kernel."""

    async def work(emit: Emit) -> object:
        kernel = await assets.pull_kernel(body.version, progress_emitter(emit))
        return KernelOut.of(kernel).model_dump(mode="json")

    return await ndjson(request, work)


@router.delete("/v1/kernels/{version}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_kernel(version: KernelRef, assets: Assets) -> Response:
    """A full version removes that kernel; an ABI or a flavour, the newest cached one it names."""
    assets.remove_kernel(version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/v1/images")
async def list_images(assets: Assets) -> list[ImageOut]:
    return [ImageOut.of(i) for i in assets.images()]


@router.get("/v1/images/{ref}")
async def get_image(ref: str, assets: Assets) -> ImageOut:
    return ImageOut.of(assets.image(ref))


def _default_name(base: str) -> str:
    stem = Path(urlparse(base).path).name if "://" in base else Path(base).name
    for suffix in (".gz", ".xz", ".zst", ".tgz", ".tar"):
        stem = stem.removesuffix(suffix)
    return stem.lower().replace("_", "-").replace(".", "-")[:63] or "image"


@router.post("/v1/images", response_class=StreamingResponse, responses=_NDJSON)
async def build_image(request: Request, body: ImageBuildIn, assets: Assets, via: Via) -> StreamingResponse:
    """Build an image (with Debian packages and profiles), or save a stopped VM's root drive as one (``from_vm``):
    NDJSON progress events, then the image. A tarball base on the host: Unix socket only."""
    from_vm = body.from_vm
    if from_vm is not None:

        async def work(emit: Emit) -> object:
            image = await assets.image_from_vm(body.name, from_vm, progress_emitter(emit))
            return ImageOut.of(image).model_dump(mode="json")

        return await ndjson(request, work)
    if names_host_file(body.base):
        require_host_access(via, f"building an image from the host file {body.base}")
    wanted = ImageRequest(
        name=body.name or _default_name(body.base),
        base=body.base,
        size_mib=body.size_mib,
        sha256=body.sha256,
        packages=tuple(body.packages),
    )

    async def build(emit: Emit) -> object:
        image = await assets.build_image(wanted, progress_emitter(emit), tuple(body.profiles))
        return ImageOut.of(image).model_dump(mode="json")

    return await ndjson(request, build)


@router.delete("/v1/images/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_image(ref: str, assets: Assets) -> Response:
    assets.remove_image(ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
