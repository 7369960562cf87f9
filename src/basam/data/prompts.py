"""Reproducible prompts derived from a ground-truth mask, for benchmarks.

Kinds (:data:`PROMPT_KINDS`):

``point``
    One foreground pixel chosen uniformly at random. The choice depends only on
    ``(seed, key, mask)``: the index into the mask's foreground pixels (row-major order) is
    ``SHA-256("basam-prompt\\0<seed>\\0<key>")`` read as a 256-bit integer, modulo the number
    of foreground pixels. No process-salted ``hash()`` and no numpy RNG stream whose algorithm
    could change between versions are involved, so the same image (use its sample name as
    ``key``) gets the same point in every run, process, preset and model resolution.
``center``
    The foreground pixel farthest from the background, by the Euclidean distance transform of
    the mask padded with a background border (so the image edge counts as boundary). Ties go
    to the first such pixel in row-major order.
``box``
    The tight box of the foreground: ``(min col, min row, max col, max row)``, the extreme
    pixels' indices (inclusive), as float.
``box+point``
    The ``box`` plus the ``point`` prompt's point (the same point ``point`` gives).

Points are ``(col, row)`` = ``(x, y)`` pixel indices of the original image, with label 1
(foreground). The whole mask is used, every connected component of it: the random point can
fall in any component (with probability proportional to its area), ``center`` picks the
deepest pixel over all of them, and ``box`` encloses them all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from basam.errors import InputError

__all__ = ["PROMPT_KINDS", "Prompt", "make_prompt"]

PROMPT_KINDS: tuple[str, ...] = ("point", "center", "box", "box+point")


def _arr_eq(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _arr_key(a: np.ndarray | None) -> tuple | None:
    return None if a is None else (a.shape, a.tobytes())


@dataclass(frozen=True)
class Prompt:
    """A SAM prompt, in pixels of the original image (as :meth:`basam.predictor` takes them).

    Attributes:
        point_coords: ``(N, 2)`` float64 ``(x, y)``, or ``None``.
        point_labels: ``(N,)`` int64, 1 = foreground, or ``None``.
        box: ``(4,)`` float64 ``(x0, y0, x1, y1)``, or ``None``.

    Prompts compare equal when their arrays are equal, and are hashable.
    """

    point_coords: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Prompt):
            return NotImplemented
        return (
            _arr_eq(self.point_coords, other.point_coords)
            and _arr_eq(self.point_labels, other.point_labels)
            and _arr_eq(self.box, other.box)
        )

    def __hash__(self) -> int:
        return hash(
            (_arr_key(self.point_coords), _arr_key(self.point_labels), _arr_key(self.box))
        )


def _check_mask(mask: object) -> np.ndarray:
    try:
        m = np.asarray(mask)
    except Exception:
        raise InputError("ground-truth mask is not an array") from None
    if m.ndim != 2:
        raise InputError(f"ground-truth mask must be HxW, got shape {tuple(m.shape)}")
    if m.dtype != bool:
        if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
            raise InputError(f"ground-truth mask must be bool or numeric, got {m.dtype}")
        m = m != 0
    if not m.any():
        raise InputError("ground-truth mask is empty")
    return m


def _random_index(n: int, seed: int, key: str) -> int:
    digest = hashlib.sha256(f"basam-prompt\0{seed}\0{key}".encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % n


def _random_point(m: np.ndarray, seed: int, key: str) -> tuple[int, int]:
    flat = np.flatnonzero(m)  # row-major order
    idx = int(flat[_random_index(flat.size, seed, key)])
    row, col = divmod(idx, m.shape[1])
    return col, row


def boundary_distance(m: np.ndarray) -> np.ndarray:
    """(H, W) float64: each foreground pixel's Euclidean distance to the nearest background pixel
    of the (H, W) bool mask ``m``, the image edge counting as background; 0 on the background.
    The depth the ``center`` prompt maximises (and training's interior clicks are weighted by)."""
    return ndimage.distance_transform_edt(np.pad(m, 1, constant_values=False))[1:-1, 1:-1]


def _center_point(m: np.ndarray) -> tuple[int, int]:
    dist = boundary_distance(m)
    idx = int(np.argmax(dist))  # first maximum in row-major order
    row, col = divmod(idx, m.shape[1])
    return col, row


def tight_box(m: np.ndarray) -> np.ndarray:
    """The tight box of a non-empty (H, W) bool mask: (4,) float64 x0, y0, x1, y1 (inclusive)."""
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def _points(col: int, row: int) -> tuple[np.ndarray, np.ndarray]:
    return np.array([[col, row]], dtype=np.float64), np.ones(1, dtype=np.int64)


def make_prompt(mask: np.ndarray, kind: str, *, seed: int = 0, key: str = "") -> Prompt:
    """Derive a prompt of ``kind`` from a ground-truth mask (see the module docstring).

    Args:
        mask: ``(H, W)`` bool (or numeric: non-zero is foreground) ground truth.
        kind: one of :data:`PROMPT_KINDS`.
        seed: run-level seed of the random point (``point``, ``box+point``).
        key: per-image key of the random point, e.g. the sample's name.

    Raises:
        InputError: unknown kind, a mask that is not 2-D, or an empty mask.
    """
    if kind not in PROMPT_KINDS:
        raise InputError(f"unknown prompt kind {kind!r}: expected one of {', '.join(PROMPT_KINDS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"prompt seed must be an integer, got {seed!r}")
    if not isinstance(key, str):
        raise InputError(f"prompt key must be a string, got {type(key).__name__}")
    m = _check_mask(mask)
    if kind == "point":
        return Prompt(*_points(*_random_point(m, int(seed), key)))
    if kind == "center":
        return Prompt(*_points(*_center_point(m)))
    if kind == "box":
        return Prompt(box=tight_box(m))
    coords, labels = _points(*_random_point(m, int(seed), key))
    return Prompt(coords, labels, tight_box(m))
