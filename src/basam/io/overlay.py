"""Overlays: masks alpha-blended and outlined over the image, prompt points and boxes drawn on top."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageDraw

from basam.errors import InputError

from ._messages import _one_line
from .atomic import atomic_write
from .masks import _require_suffix

__all__ = ["PALETTE", "render_overlay", "save_overlay"]

#: Fixed, distinct colours (RGB) for masks in overlays; mask k gets PALETTE[k % len(PALETTE)].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (30, 144, 255),  # dodger blue
    (255, 140, 0),  # dark orange
    (186, 85, 211),  # medium orchid
    (0, 206, 209),  # dark turquoise
    (255, 215, 0),  # gold
    (255, 20, 147),  # deep pink
    (124, 252, 0),  # lawn green
    (139, 69, 19),  # saddle brown
    (70, 130, 180),  # steel blue
    (255, 99, 71),  # tomato
)

_POSITIVE = (0, 220, 0)
_NEGATIVE = (230, 0, 0)
_BOX = (255, 255, 0)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """Inner boundary of a bool ``(H, W)`` mask, ``width`` pixels thick (4-neighbour erosion)."""
    inner = mask.copy()
    for _ in range(width):
        # Pad with False so a mask touching the image border gets an outline there too.
        p = np.pad(inner, 1, constant_values=False)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def _finite_array(values: Any, shape_tail: tuple[int, ...], what: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must be numeric ({_one_line(e)})") from None
    if a.size == 0:
        return a.reshape((0, *shape_tail))
    if a.ndim == len(shape_tail):  # a single point/box
        a = a[None]
    if a.ndim != len(shape_tail) + 1 or a.shape[1:] != shape_tail:
        want = "x".join(["N", *map(str, shape_tail)])
        raise InputError(f"{what} must have shape {want}, got {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise InputError(f"{what} contain NaN or infinite values")
    return a


def render_overlay(
    image: Any,
    masks: Any,
    points: Any = None,
    point_labels: Any = None,
    boxes: Any = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Draw masks, prompt points and boxes over an image.

    Each mask is alpha-blended in its own colour (``PALETTE[k % len(PALETTE)]``, later masks
    over earlier ones) and outlined in that colour, opaque, 1 px (2 px when the long side is
    >= 1000 px). Points: label 1 -> green filled circle, label 0 -> red filled circle, both
    with a white rim; other labels (e.g. SAM's -1 padding) are not drawn. Boxes: yellow
    rectangles. Marker sizes scale with the image: radius ``max(3, round(0.008 * max(H, W)))``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (``(H, W, 4)`` is accepted; alpha is dropped).
        masks: ``(K, H, W)`` or ``(H, W)`` bool/integer (non-zero = inside); ``None`` or K=0
            for none.
        points: ``(N, 2)`` ``(x, y)`` pixel coordinates, or ``None``.
        point_labels: ``(N,)`` 1 (positive) / 0 (negative); ``None`` means all positive.
        boxes: ``(B, 4)`` ``(x0, y0, x1, y1)`` pixel coordinates, or ``None``.
        alpha: mask opacity in ``[0, 1]``.

    Returns:
        New ``(H, W, 3)`` uint8 array; ``image`` is not modified.

    Raises:
        InputError: shapes or values that do not fit.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise InputError(
            f"overlay image must be HxWx3 uint8, got shape {tuple(img.shape)} dtype {img.dtype}"
        )
    img = img[:, :, :3]
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise InputError(f"overlay image is empty, shape {tuple(img.shape)}")
    try:
        alpha_ok = not isinstance(alpha, bool) and 0.0 <= float(alpha) <= 1.0
    except (TypeError, ValueError):
        alpha_ok = False
    if not alpha_ok:
        raise InputError(f"overlay alpha must be a number in [0, 1], got {alpha!r}")

    if masks is None:
        m = np.zeros((0, h, w), dtype=bool)
    else:
        m = np.asarray(masks)
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3 or m.shape[1:] != (h, w):
            raise InputError(
                f"overlay masks must be KxHxW with H, W = {h}, {w}, got shape {tuple(m.shape)}"
            )
        m = m != 0

    long_side = max(h, w)
    out = img.astype(np.float32)
    edge_width = 1 if long_side < 1000 else 2
    for k in range(m.shape[0]):
        colour = np.asarray(PALETTE[k % len(PALETTE)], dtype=np.float32)
        inside = m[k]
        if not inside.any():
            continue
        out[inside] = out[inside] * (1.0 - float(alpha)) + colour * float(alpha)
        out[_outline(inside, edge_width)] = colour
    result = np.rint(out).astype(np.uint8)

    pts = _finite_array(points, (2,), "overlay points") if points is not None else None
    bxs = _finite_array(boxes, (4,), "overlay boxes") if boxes is not None else None
    if pts is None and bxs is None:
        return np.ascontiguousarray(result)

    canvas = Image.fromarray(result)
    draw = ImageDraw.Draw(canvas)
    if bxs is not None:
        box_width = max(2, round(0.003 * long_side))
        for x0, y0, x1, y1 in bxs:
            # ImageDraw requires x0 <= x1 and y0 <= y1.
            draw.rectangle(
                (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=_BOX, width=box_width
            )
    if pts is not None:
        if point_labels is None:
            labels = np.ones(len(pts), dtype=np.int64)
        else:
            labels = np.asarray(point_labels).reshape(-1)
            if labels.shape[0] != pts.shape[0]:
                raise InputError(
                    f"overlay point_labels has {labels.shape[0]} entries for {pts.shape[0]} points"
                )
        radius = max(3, round(0.008 * long_side))
        rim = max(1, radius // 3)
        for (x, y), label in zip(pts, labels):
            if label == 1:
                fill = _POSITIVE
            elif label == 0:
                fill = _NEGATIVE
            else:
                continue  # padding (-1) or box-corner labels: nothing to show as a click
            draw.ellipse(
                (x - radius, y - radius, x + radius, y + radius),
                fill=fill,
                outline=(255, 255, 255),
                width=rim,
            )
    return np.ascontiguousarray(np.asarray(canvas, dtype=np.uint8))


def save_overlay(
    path: str | os.PathLike[str],
    image: Any,
    masks: Any,
    points: Any = None,
    point_labels: Any = None,
    boxes: Any = None,
    alpha: float = 0.5,
    quality: int = 95,
) -> Path:
    """Render an overlay (see :func:`render_overlay`) and save it atomically.

    Args:
        path: destination; suffix ``.png``, ``.jpg`` or ``.jpeg`` (any case) picks the format.
        image, masks, points, point_labels, boxes, alpha: as for :func:`render_overlay`.
        quality: JPEG quality (ignored for PNG).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: wrong suffix (checked first, nothing is written), bad inputs, or an
            unwritable destination.
    """
    return atomic_write(*overlay_writer(path, image, masks, points, point_labels, boxes, alpha, quality))


def overlay_writer(path, image, masks, points=None, point_labels=None, boxes=None, alpha: float = 0.5, quality: int = 95):
    """``(destination, write_fn)`` of :func:`save_overlay`, rendered and checked, nothing written: for
    callers that commit the overlay together with other files (:func:`basam.io.atomic_write_all`)."""
    p = Path(os.fsdecode(path))
    fmt = _require_suffix(p, {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}, "overlay")
    rendered = render_overlay(image, masks, points, point_labels, boxes, alpha)

    def write(f: BinaryIO) -> None:
        pil = Image.fromarray(rendered)
        if fmt == "JPEG":
            pil.save(f, format="JPEG", quality=int(quality))
        else:
            pil.save(f, format="PNG")

    return p, write
