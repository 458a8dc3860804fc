"""The Firecracker OpenAPI (Swagger 2.0) spec, vendored under ``tests/vendor/firecracker/``, as JSON-schema validators.

The file is Firecracker v1.16.1's ``src/firecracker/swagger/firecracker.yaml``, unmodified (origin and license in
that folder's README). :func:`load_spec` checks its sha256 against :data:`SPEC_SHA256`, so an edit to the vendored
copy fails the tests instead of quietly changing what the driver is checked against; a missing file is an error
too, never a skip: a fresh clone carries it.

``$ref`` values point into ``#/definitions``; a definition is validated by wrapping it as
``{"$ref": "#/definitions/X", "definitions": ...}`` under Draft 4 (Swagger 2.0's schema dialect; Draft 4 also
refuses ``1.0`` where an integer is asked, as Firecracker's serde does). The spec never sets
``additionalProperties: false``, yet Firecracker's structs are ``#[serde(deny_unknown_fields)]``; ``closed=True``
adds ``additionalProperties: false`` to every object definition to model that.
"""

from __future__ import annotations

import copy
import hashlib
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.helpers import REPO

SPEC_PATH = REPO / "tests" / "vendor" / "firecracker" / "firecracker-v1.16.1.yaml"
# sha256 of the upstream file at tag v1.16.1 (commit 2038188f145f) of firecracker-microvm/firecracker.
SPEC_SHA256 = "a514abec7b29700c5ca8bdaebbb960e4ffb46fe1fd4869094c6c63630a6fa41c"


@cache
def load_spec(path: Path = SPEC_PATH, sha256: str = SPEC_SHA256) -> dict[str, Any]:
    """The parsed spec. Raises ``FileNotFoundError`` when it is absent and ``ValueError`` when it is not the
    unmodified upstream file."""
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path} has sha256 {digest}, not {sha256}: the vendored spec must be the upstream file")
    spec = yaml.safe_load(raw)
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
def spec_validator(*, closed: bool = False) -> SpecValidator:
    return SpecValidator(load_spec(), closed=closed)
