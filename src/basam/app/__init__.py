"""``basam app``: a local web page to segment images interactively (the ``basam[app]`` extra).

:func:`create_app` (in :mod:`basam.app.server`) builds the ASGI application; ``basam app`` serves it
with uvicorn on 127.0.0.1. The page (``static/``) opens an image, encodes it once per (image, model,
resolution, attention preset) and answers each click with one decoder call.

Importing this package imports nothing heavy; ``create_app`` imports Starlette and torch.
"""

from __future__ import annotations

__all__ = ["create_app", "estimate_memory"]


def __getattr__(name: str):
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module 'basam.app' has no attribute {name!r}")
