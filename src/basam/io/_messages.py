"""One-line message helpers shared by the readers and writers of :mod:`basam.io`."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["_show", "_one_line"]


def _show(path: Any) -> str:
    """Quote a path for a one-line message (control characters escaped, so it stays one line)."""
    s = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    if s.isprintable():
        return f"'{s}'"
    return repr(s)


def _one_line(exc: BaseException) -> str:
    """An exception's text squeezed onto one line (PIL messages sometimes span lines)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
