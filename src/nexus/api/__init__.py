"""The REST API edge (FastAPI): routers, schemas, and the one error-to-status table."""

from nexus.api.app import create_app
from nexus.api.deps import Services

__all__ = ["Services", "create_app"]
