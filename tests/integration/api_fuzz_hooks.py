"""Schemathesis hooks for the API fuzz test (``test_api_fuzz.py``), loaded by the schemathesis CLI through
``SCHEMATHESIS_HOOKS``.

A tar body (``PUT /v1/vms/{ref}/archive``) is sent as the raw bytes it is drawn as, like any binary body.

One hook, ``before_call``, and it keeps every request what it was (valid stays valid, invalid stays invalid):

- A valid name of something to create gets a unique suffix. Hypothesis draws the same few short names over and
  over, so without it nearly every create after the first is a 409 for the name, and a 409 would hide what the rest
  of the body deserved (``vcpus: "2"`` must be a 422, not pass as a name clash), and leave the stateful phase
  nothing to follow its links from.
- A drive size the schema allows is capped (:data:`CAP_MIB`). An empty drive is formatted with its inode tables
  written out (see ``nexus.workspaces.ext4``), so a valid 1 TiB drive would write ~16 GiB to the test machine's
  disk per example. A resize is capped higher than a create, so that resizing a drive the fuzz made mostly grows
  it (a shrink is refused, 422).

Names and sizes outside the schema are left alone: they must still be refused.
"""

from __future__ import annotations

import itertools
from typing import Any

import schemathesis

from nexus.domain.validation import DRIVE_SIZE_MIB_RANGE, NAME_RE

CAP_MIB = {("POST", "/v1/drives"): 32, ("POST", "/v1/drives/{ref}/resize"): 64}
NAMED = {
    ("POST", "/v1/vms"),
    ("POST", "/v1/drives"),
    ("POST", "/v1/vms/{ref}/clone"),
    ("POST", "/v1/vms/{ref}/snapshots"),
}
_serial = itertools.count()

schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case[Any], kwargs: dict[str, Any]) -> None:
    operation = (case.method.upper(), case.path)
    if not isinstance(case.body, dict):
        return
    name = case.body.get("name")
    if operation in NAMED and isinstance(name, str) and NAME_RE.fullmatch(name):
        case.body["name"] = f"{name[:50]}-{next(_serial)}"  # still 1-63 of [a-z0-9-], starting as it did
    size = case.body.get("size_mib")
    low, high = DRIVE_SIZE_MIB_RANGE
    if operation in CAP_MIB and type(size) is int and low <= size <= high:
        case.body["size_mib"] = min(size, CAP_MIB[operation])
