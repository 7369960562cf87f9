"""Mask writing: 8-bit grayscale PNGs (0 / 255), one or K at a time, atomically (all or nothing)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Tuple

import numpy as np
from PIL import Image

from basam.errors import InputError

from ._messages import _one_line, _show
from .atomic import atomic_write, atomic_write_all

__all__ = ["save_mask_png", "save_masks"]


def _require_suffix(path: Path, allowed: dict[str, str], what: str) -> str:
    """PIL format name for ``path``'s suffix, or InputError (checked before anything is written)."""
    fmt = allowed.get(path.suffix.lower())
    if fmt is None:
        names = ", ".join(sorted(allowed))
        got = path.suffix or "no suffix"
        raise InputError(
            f"cannot write {what} {_show(path)}: suffix must be one of {names}, got {got}"
        )
    return fmt


def _mask_u8(mask: Any, where: str, ndim: int) -> np.ndarray:
    """bool/integer mask -> uint8 0/255 (non-zero is foreground)."""
    try:
        m = np.asarray(mask)
    except Exception as e:
        raise InputError(f"{where}: mask is not an array ({_one_line(e)})") from None
    if m.ndim != ndim:
        shape = "HxW" if ndim == 2 else "KxHxW"
        raise InputError(f"{where}: mask must be {shape}, got shape {tuple(m.shape)}")
    if m.dtype != bool and not np.issubdtype(m.dtype, np.integer):
        raise InputError(f"{where}: mask must be bool or integer, got {m.dtype}")
    if min(m.shape[-2:], default=0) == 0:
        raise InputError(f"{where}: mask is empty, shape {tuple(m.shape)}")
    return np.where(m != 0, np.uint8(255), np.uint8(0))


def _png_writer(u8: np.ndarray) -> Callable[[BinaryIO], None]:
    def write(f: BinaryIO) -> None:
        Image.fromarray(np.ascontiguousarray(u8)).save(f, format="PNG")

    return write


def save_mask_png(path: str | os.PathLike[str], mask: Any) -> Path:
    """Save one mask as an 8-bit grayscale PNG (0 = background, 255 = foreground), atomically.

    Args:
        path: destination; the suffix must be ``.png`` (any case).
        mask: ``(H, W)`` bool or integer array; non-zero is foreground.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: wrong suffix, bad mask shape/dtype, or an unwritable destination. Nothing
            is created in those cases.
    """
    p = Path(os.fsdecode(path))
    _require_suffix(p, {".png": "PNG"}, "mask")
    u8 = _mask_u8(mask, f"cannot write mask {_show(p)}", ndim=2)
    return atomic_write(p, _png_writer(u8))


def save_masks(path: str | os.PathLike[str], masks: Any) -> list[Path]:
    """Save K masks as PNGs, all or nothing.

    With ``K == 1`` the mask goes to ``path``; otherwise mask ``k`` goes to
    ``<stem>_<k>.png`` next to ``path`` (``path`` itself is not written). All files are first
    written to temp files; only when every one succeeded are they renamed into place, so a
    failed write leaves no new file behind. Files already renamed are removed if a later
    rename fails.

    Args:
        path: destination; the suffix must be ``.png``.
        masks: ``(K, H, W)`` bool or integer array (an ``(H, W)`` array counts as ``K == 1``).

    Returns:
        The written paths, in mask order.

    Raises:
        InputError: wrong suffix, ``K == 0``, bad shape/dtype, or an unwritable destination.
    """
    return atomic_write_all(mask_writers(path, masks))


def mask_writers(path: str | os.PathLike[str], masks: Any) -> list[Tuple[Path, Callable[[BinaryIO], None]]]:
    """The ``(destination, write_fn)`` pairs :func:`save_masks` writes, for callers that commit them
    together with other files (:func:`basam.io.atomic_write_all`). Checks as :func:`save_masks`."""
    p = Path(os.fsdecode(path))
    _require_suffix(p, {".png": "PNG"}, "masks")
    arr = np.asarray(masks)
    if arr.ndim == 2:
        arr = arr[None]
    u8 = _mask_u8(arr, f"cannot write masks {_show(p)}", ndim=3)
    k = u8.shape[0]
    if k == 0:
        raise InputError(f"cannot write masks {_show(p)}: no masks (K = 0)")
    targets = [p] if k == 1 else [p.with_name(f"{p.stem}_{i}{p.suffix}") for i in range(k)]
    return [(target, _png_writer(u8[i])) for i, target in enumerate(targets)]
