"""Optional fused GPU kernels for :func:`basam.attention.attend`.

Importing this package is free: it imports neither triton nor the kernels. Call
:func:`maybe_register` to load the fused Triton backend (``"triton"``), which
:mod:`basam.attention` then registers from :func:`fused_backends`; it is idempotent, cheap after the first call, and never raises (a missing
or broken triton simply leaves the ``sdpa`` backend in charge).
"""

from __future__ import annotations

import os

__all__ = ["maybe_register", "fused_backends"]

_state = {"registered": False, "failed": False, "error": None}


def _interpreter_requested() -> bool:
    """The tests' CPU mode: Triton's interpreter, explicitly enabled for basam."""
    return os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("BASAM_TRITON_ON_CPU") == "1"


def maybe_register() -> bool:
    """Register the ``triton`` attention backend if it can run here. Returns whether it is registered.

    Does nothing (and imports nothing heavy) when there is no CUDA device and the CPU interpreter
    mode (``TRITON_INTERPRET=1`` and ``BASAM_TRITON_ON_CPU=1``) is off. Set ``BASAM_TRITON=0`` to
    keep the kernel out of ``backend="auto"``.
    """
    if _state["registered"]:
        return True
    if _state["failed"] or os.environ.get("BASAM_TRITON") == "0":
        return False
    try:
        import torch

        if not (_interpreter_requested() or torch.cuda.is_available()):
            return False
        from . import triton_attention  # noqa: F401 - compiles nothing yet; fails here if triton is broken
    except Exception as exc:  # triton absent, too old, or broken: stay on sdpa
        _state["failed"] = True
        _state["error"] = repr(exc)
        return False
    _state["registered"] = True
    return True


def fused_backends() -> list:
    """``(name, fn, supports)`` of every fused backend :func:`maybe_register` loaded (fastest first)."""
    if not _state["registered"]:
        return []
    from . import triton_attention

    return [triton_attention.BACKEND]
