"""Decode once: training images and masks decoded (and optionally shrunk) into an on-disk cache.

Decoding a JPEG (Kvasir's reach 1920 x 1072) every step costs the 2 CPU cores more than the
augmentation; a cached sample is one uncompressed ``.npz`` read from the page cache.

:func:`prepare` is what a sample is, cache or not: ``dataset.load`` (RGB uint8 + mask thresholded
at 128), then, with ``side`` > 0 and a longer side above it, the image shrunk to longest side
``side`` (PIL bilinear with its antialiasing support) and the mask shrunk the same way as 0/255
and thresholded at 128 again (smoother than nearest). :class:`DecodeCache` stores its result.

Cache files: ``<dir>/<sha256(key)[:32]>.npz`` holding ``key`` (the key's JSON as uint8 bytes),
``image`` (H, W, 3) uint8 and ``mask`` (H, W) uint8 0/1. The key names the format version, both
source files' resolved paths, byte sizes and mtimes (ns), and ``side``: an edited source gets a
new entry. Files are written with :func:`basam.io.atomic_write` (whole or absent). A file that
does not load, holds another key, or whose arrays have the wrong dtype or shape is not trusted:
it is rebuilt from the source and rewritten. Loading never unpickles (``allow_pickle=False``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..errors import InputError

__all__ = ["CACHE_FORMAT", "DecodeCache", "prepare", "shrink"]

CACHE_FORMAT = 1


def shrink(image: np.ndarray, mask: np.ndarray, side: int) -> Tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 + (H, W) bool -> the same shrunk to longest side ``side`` (never enlarged)."""
    from PIL import Image

    h, w = mask.shape
    if side <= 0 or max(h, w) <= side:
        return image, mask
    scale = side / max(h, w)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    img = np.array(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))  # a writable copy
    m = np.array(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)) >= 128
    return np.ascontiguousarray(img), m


def prepare(ds, i: int, side: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Sample ``i`` of ``ds`` as training reads it: decoded, then shrunk to ``side`` (0: as is)."""
    image, mask = ds.load(i)
    return shrink(image, mask, side)


def _stat_key(path: Path) -> dict:
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


class DecodeCache:
    """``cache.load(ds, i)`` returns :func:`prepare`'s arrays, from ``folder`` when it has them."""

    def __init__(self, folder: "str | os.PathLike[str]", side: int = 0) -> None:
        self.folder = Path(folder)
        self.side = int(side)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the cache folder {self.folder}: {e.strerror or e}") from None
        self.hits = 0
        self.misses = 0

    def key(self, ds, i: int) -> str:
        s = ds[i]
        return json.dumps({"format": CACHE_FORMAT, "image": _stat_key(s.image_path), "mask": _stat_key(s.mask_path),
                           "side": self.side}, sort_keys=True)

    def path_for(self, key: str) -> Path:
        return self.folder / (hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".npz")

    def _read(self, path: Path, key: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """The cached arrays, or None when the file is absent, unreadable, partial or not ours."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if set(z.files) != {"key", "image", "mask"} or bytes(z["key"].astype(np.uint8)).decode("utf-8") != key:
                    return None
                image, mask = z["image"], z["mask"]
        except Exception:  # absent, a truncated zip, a bad header, ...: rebuilt by the caller
            return None
        if (image.dtype != np.uint8 or mask.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3
                or mask.shape != image.shape[:2] or mask.max(initial=0) > 1):
            return None
        return image, mask.astype(bool)

    def load(self, ds, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) bool mask of sample ``i`` (InputError as ``ds.load``)."""
        from ..io import atomic_write

        try:
            key = self.key(ds, i)
        except OSError as e:
            raise InputError(f"cannot read {ds[i].image_path}: {e.strerror or e}") from None
        path = self.path_for(key)
        got = self._read(path, key)
        if got is not None:
            self.hits += 1
            return got
        self.misses += 1
        image, mask = prepare(ds, i, self.side)
        payload = dict(key=np.frombuffer(key.encode("utf-8"), dtype=np.uint8), image=image, mask=mask.astype(np.uint8))
        try:
            atomic_write(path, lambda f: np.savez(f, **payload))
        except (OSError, InputError):
            pass  # a full or read-only cache folder costs speed, not correctness
        return image, mask
