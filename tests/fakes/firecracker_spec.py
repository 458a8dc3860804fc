"""The Firecracker OpenAPI (Swagger 2.0) spec, loaded from the shared folder beside the repo, as JSON-schema validators.

The spec is never copied into the repo: it is read from ``<repo>/../shared/firecracker/firecracker-v1.16.1.yaml``;
:func:`load_spec` returns ``None`` when it is absent so tests can skip with :data:`SPEC_MISSING`.

``$ref`` values point into ``#/definitions``; a definition is validated by wrapping it as
``{"$ref": "#/definitions/X", "definitions": ...}`` under Draft 4 (Swagger 2.0's schema dialect; Draft 4 also
refuses ``1.0`` where an integer is asked, as Firecracker's serde does). The spec never sets
``additionalProperties: false``, yet Firecracker's structs are ``#[serde(deny_unknown_fields)]``; ``closed=True``
adds ``additionalProperties: false`` to every object definition to model that.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.helpers import REPO

SPEC_PATH = (REPO / ".." / "shared" / "firecracker" / "firecracker-v1.16.1.yaml").resolve()
SPEC_MISSING = f"the Firecracker v1.16.1 OpenAPI spec is not at {SPEC_PATH} (shared folder beside the repo)"


@cache
def load_spec(path: Path = SPEC_PATH) -> dict[str, Any] | None:
    """The parsed spec, or ``None`` when the file is absent."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    if not isinstance(spec, dict) or "definitions" not in spec:
        raise ValueError(f"{path} is not a Swagger 2.0 document with definitions")
    return spec


def _closed(definitions: dict[str, Any]) -> dict[str, Any]:
    closed = copy.deepcopy(definitions)

    def close(schema: Any) -> None:
        if isinstance(schema, dict):
            if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
                schema["additionalProperties"] = False
            for value in schema.values():
                close(value)
        elif isinstance(schema, list):
            for value in schema:
                close(value)

    close(closed)
    return closed


class SpecValidator:
    """Validators for the spec's definitions (by name) and for the body of each ``(method, path)`` operation."""

    def __init__(self, spec: dict[str, Any], *, closed: bool = False) -> None:
        self.spec = spec
        self.closed = closed
        self.definitions: dict[str, Any] = _closed(spec["definitions"]) if closed else spec["definitions"]
        self._validators: dict[str, jsonschema.Draft4Validator] = {}

    def validator(self, definition: str) -> jsonschema.Draft4Validator:
        if definition not in self.definitions:
            raise KeyError(f"the spec has no definition {definition!r}")
        if definition not in self._validators:
            schema = {"$ref": f"#/definitions/{definition}", "definitions": self.definitions}
            self._validators[definition] = jsonschema.Draft4Validator(schema)
        return self._validators[definition]

    def errors(self, definition: str, body: object) -> list[str]:
        """Every violation of ``definition`` by ``body`` (empty when valid), as ``path: message`` lines."""
        found = sorted(self.validator(definition).iter_errors(body), key=lambda e: list(e.absolute_path))
        return [f"{'/'.join(str(p) for p in e.absolute_path) or '<body>'}: {e.message}" for e in found]

    def body_definition(self, method: str, spec_path: str) -> str | None:
        """The definition name of the body parameter of ``method spec_path`` (``/drives/{drive_id}``), if any."""
        operation = self.spec["paths"].get(spec_path, {}).get(method.lower())
        if operation is None:
            raise KeyError(f"the spec has no operation {method} {spec_path}")
        for param in operation.get("parameters", []):
            if param.get("in") == "body":
                ref: str = param["schema"]["$ref"]
                return ref.rsplit("/", 1)[-1]
        return None


@cache
def spec_validator(*, closed: bool = False) -> SpecValidator | None:
    spec = load_spec()
    return None if spec is None else SpecValidator(spec, closed=closed)
