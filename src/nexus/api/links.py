"""OpenAPI links: which answer names the resource other operations take, added to the generated document.

A client (or a stateful API fuzzer) reads them as "the ``id`` in POST /v1/vms's 201 is the ``{ref}`` of every
operation under /v1/vms/{ref}". They are derived from the routes, not listed by hand: each creating operation in
:data:`CREATED` links to every operation below its resource path whose path parameters the link fills. This module
only describes; nothing here changes what a request does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

# (method, path, status) of an operation whose body names a resource → (resource path, {path parameter: expression}).
CREATED: dict[tuple[str, str, str], tuple[str, dict[str, str]]] = {
    ("post", "/v1/vms", "201"): ("/v1/vms/{ref}", {"ref": "$response.body#/id"}),
    ("post", "/v1/vms/{ref}/clone", "201"): ("/v1/vms/{ref}", {"ref": "$response.body#/id"}),
    ("post", "/v1/drives", "201"): ("/v1/drives/{ref}", {"ref": "$response.body#/id"}),
    ("post", "/v1/vms/{ref}/snapshots", "201"): (
        "/v1/vms/{ref}/snapshots/{name}",
        {"ref": "$response.body#/vm_id", "name": "$response.body#/name"},
    ),
    ("post", "/v1/vms/{ref}/tags", "200"): (
        "/v1/vms/{ref}/tags/{tag}",
        {"ref": "$request.path.ref", "tag": "$response.body#/0"},
    ),
    ("put", "/v1/secrets/{name}", "200"): ("/v1/secrets/{name}", {"name": "$response.body#/name"}),
    ("post", "/v1/secrets/{name}/bindings", "201"): (
        "/v1/secrets/bindings/{binding_id}",
        {"binding_id": "$response.body#/id"},
    ),
}


def _path_params(path: str) -> set[str]:
    return {part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")}


def add_links(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the links of :data:`CREATED` to ``schema`` (an OpenAPI document) in place; adding twice changes nothing."""
    paths: dict[str, dict[str, Any]] = schema["paths"]
    for (method, path, status), (resource, parameters) in CREATED.items():
        response = paths[path][method]["responses"][status]
        for target_path, operations in paths.items():
            if not (target_path == resource or target_path.startswith(resource + "/")):
                continue
            if _path_params(target_path) != set(parameters):
                continue
            for target in operations.values():
                links = response.setdefault("links", {})
                links[target["operationId"]] = {"operationId": target["operationId"], "parameters": dict(parameters)}
    return schema


def install(app: FastAPI) -> None:
    """Serve ``app``'s OpenAPI document with the links (FastAPI regenerates it when routes change)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        return add_links(generate())

    setattr(app, "openapi", openapi)  # FastAPI's documented hook for extending the document  # noqa: B010
