"""The HTTP server: FastAPI routes over one Engine (see engine.server.app.create_app)."""

from .app import create_app

__all__ = ["create_app"]
