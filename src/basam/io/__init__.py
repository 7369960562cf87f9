"""Image and mask input/output, by purpose:

* :mod:`basam.io.decode`: :func:`read_image`, :func:`read_mask` (any format, mode, orientation;
  sizes checked from the header before decoding; optional downscaled reading);
* :mod:`basam.io.atomic`: :func:`atomic_write`, :func:`fsync_dir` (write, fsync, rename);
* :mod:`basam.io.masks`: :func:`save_mask_png`, :func:`save_masks` (PNG, all or nothing);
* :mod:`basam.io.overlay`: :func:`render_overlay`, :func:`save_overlay`, :data:`PALETTE`.

Every name is importable from ``basam.io`` as it was when this was one module. Assigning one of
them on ``basam.io`` (``basam.io.MAX_PIXELS = ...``, or a test's monkeypatch) also assigns it in
the submodules that use it, so the package behaves as the single module did.
"""

from __future__ import annotations

import sys
import types

# Every name the single module had, private ones included (the rest of the package and its tests
# import them from here).
from . import _messages, atomic, decode, masks, overlay
from ._messages import _one_line, _show  # noqa: F401
from .atomic import (  # noqa: F401
    _commit, _current_umask, _stage, atomic_write, atomic_write_all, canonical_path, check_writable_dir, fsync_dir, os_error_text,
)
from .decode import (  # noqa: F401
    MAX_PIXELS, _check_readable_file, decode_bytes, _float_to_u8, _gray_u8, _open_decoded, _sixteen_or_int_to_u8, _to_gray, _to_rgb,
    read_image, read_mask,
)
from .masks import _mask_u8, _png_writer, _require_suffix, mask_writers, save_mask_png, save_masks  # noqa: F401
from .overlay import _BOX, _NEGATIVE, _POSITIVE, PALETTE, _finite_array, _outline, overlay_writer, render_overlay, save_overlay  # noqa: F401

__all__ = [
    "MAX_PIXELS",
    "read_image",
    "read_mask",
    "atomic_write",
    "atomic_write_all",
    "canonical_path",
    "check_writable_dir",
    "fsync_dir",
    "decode_bytes",
    "save_mask_png",
    "save_masks",
    "mask_writers",
    "overlay_writer",
    "render_overlay",
    "save_overlay",
    "PALETTE",
]

_SUBMODULES = (_messages, atomic, decode, masks, overlay)
_MISSING = object()


class _Package(types.ModuleType):
    """``basam.io`` whose attribute assignments reach the submodules holding the same object."""

    def __setattr__(self, name: str, value) -> None:
        old = self.__dict__.get(name, _MISSING)
        if old is not _MISSING and not isinstance(old, types.ModuleType):
            for sub in _SUBMODULES:
                # Identity, not equality: only the submodules that imported this very object.
                if sub.__dict__.get(name, _MISSING) is old:
                    setattr(sub, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
