"""Image and mask decoding: any format, mode and orientation -> RGB ``uint8`` or a bool mask.

Depends on numpy and Pillow only.

Conventions
-----------
* Images are ``np.ndarray`` of shape ``(H, W, 3)``, dtype ``uint8``, RGB, C-contiguous,
  in the orientation a viewer shows (EXIF orientation applied).
* Masks are ``np.ndarray`` of shape ``(H, W)`` (one mask) or ``(K, H, W)`` (K masks), dtype
  ``bool`` (``uint8``/integer masks are accepted on writing: non-zero is foreground).
* Points are ``(N, 2)`` pixel coordinates in ``(x, y)`` order (column, row), as in SAM.
  Boxes are ``(B, 4)`` pixel coordinates ``(x0, y0, x1, y1)``.
* Every bad input raises :class:`basam.errors.InputError` with a one-line message that names
  the file and the problem.

Choices worth knowing
---------------------
* Alpha is dropped, not composited: a transparent pixel shows its stored colour. The model
  sees the colour data the file holds; compositing would invent a background colour.
* 16-bit data (``I;16*`` modes, and mode ``I`` whose values fit in ``[0, 65535]``) is scaled
  by its bit range, ``value >> 8`` (65535 -> 255, 32768 -> 128), never clipped. Mode ``I``
  data outside that range is stretched linearly from its min..max to 0..255.
* 32-bit float (mode ``F``): if the largest finite value is <= 1 the data is taken as
  ``[0, 1]`` and scaled by 255; otherwise it is taken as ``[0, 255]`` and clipped.
  NaN becomes 0. Values are rounded to nearest.
* Multi-frame files (GIF, multi-page TIFF) give their first frame.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from basam.errors import InputError

from ._messages import _one_line, _show

__all__ = ["MAX_PIXELS", "decode_bytes", "read_image", "read_mask"]


#: Images with more pixels than this are refused from the header, before anything is decoded.
#: 2**28 px (a 16384 x 16384 image) lets a 200 Mpx phone photo (16320 x 12240) through; decoding
#: one that large to RGB peaks at about 8 bytes per pixel (PIL's 4-byte RGB image plus the
#: 3-byte array), 2 GiB. PIL's own decompression-bomb limit (~179 Mpx, which that photo exceeds)
#: is lifted while we decode and replaced by this one and by :func:`decode_bytes` against the
#: memory the machine has available. (It was 2**31 px, which let a 1.7 MB PNG of 40000 x 40000 px
#: through to use 11 GB before failing.)
MAX_PIXELS = 2**28

# PIL.Image.MAX_IMAGE_PIXELS is a module global; we swap it out while opening/decoding and put
# it back afterwards. The lock keeps two of our own reads from restoring each other's value
# (it also serialises decoding between threads, an acceptable cost for a CLI/library reader).
_PIL_LIMIT_LOCK = threading.Lock()

#: Bytes per pixel PIL holds for a decoded image of each mode (multi-band and 32-bit modes use a
#: 4-byte pixel; RGB too). Modes not listed: 4.
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "BGR;15": 2, "BGR;16": 2}

#: Extra bytes per pixel the conversion to the output takes at its peak, by source mode: the
#: integer and float paths go through int64 / float64 numpy temporaries; every other mode through
#: at most two PIL images (e.g. P -> RGBA -> RGB) and the output array.
_CONVERT_BYTES = {"I": 20, "I;16": 20, "I;16B": 20, "I;16L": 20, "I;16N": 20, "F": 32}
_CONVERT_DEFAULT = 8


def decode_bytes(width: int, height: int, mode: str) -> int:
    """Conservative peak memory, in bytes, to decode a ``width`` x ``height`` image of PIL ``mode``
    and convert it to the ``(H, W, 3)`` uint8 array :func:`read_image` returns."""
    n = int(width) * int(height)
    return n * (_PIL_BYTES.get(mode, 4) + _CONVERT_BYTES.get(mode, _CONVERT_DEFAULT))


def _check_size(img: Image.Image, where: str) -> None:
    """Refuse, from the header, an image that has no pixels, too many, or no memory to decode in."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InputError(f"{where}: image has zero size ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise InputError(
            f"{where}: image is too large ({w}x{h} = {w * h} pixels; the limit is {MAX_PIXELS} pixels)"
        )
    from basam.memory import cpu_available_bytes

    need = decode_bytes(w, h, img.mode)
    free = cpu_available_bytes()
    if free is not None and need > free:
        raise InputError(
            f"{where}: decoding it ({w}x{h} pixels, mode {img.mode}) needs about {need / 2**30:.1f} GiB "
            f"of memory; {free / 2**30:.1f} GiB is available"
        )


def _check_max_side(max_side: Any) -> int | None:
    if max_side is None:
        return None
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side <= 0:
        raise InputError(f"max_side must be a positive integer or None, got {max_side!r}")
    return int(max_side)


def _draft(img: Image.Image, max_side: int) -> None:
    """Ask a JPEG decoder for a 1/2, 1/4 or 1/8 scale (DCT scaling: the full-size pixels are
    never decoded) whose longest side stays >= ``max_side``. Other formats ignore it."""
    w, h = img.size
    factor = max(w, h) // max_side
    if factor < 2 or img.format != "JPEG":
        return
    try:
        # draft picks the largest power-of-two scale s <= min(w // req_w, h // req_h)
        img.draft(None, (max(1, w // factor), max(1, h // factor)))
    except Exception:  # a decoder without draft support: decode at full size
        pass


#: Modes whose pixels can be box-averaged as they are (Image.reduce); others are converted first.
_REDUCIBLE = {"L", "RGB", "I", "F"}


def _reduce(img: Image.Image, max_side: int) -> Image.Image:
    """Box-downscale a loaded image by the largest integer factor that keeps its longest side
    >= ``max_side`` (none if it is already smaller than twice that)."""
    factor = max(img.size) // max_side
    if factor < 2:
        return img
    mode = img.mode
    # Alpha is dropped anyway (not composited, see the module doc); palette indices and 1-bit
    # values must not be averaged as numbers; I;16 has no reduce kernel.
    if mode in ("P", "PA"):
        work = img.convert("RGBA").convert("RGB")
    elif mode.startswith("I;16"):
        work = img.convert("I")
    elif mode in ("1", "LA", "La"):
        work = img.convert("L")
    elif mode not in _REDUCIBLE:
        try:
            work = img.convert("RGB")
        except ValueError:
            work = img.convert("RGBA").convert("RGB")
    else:
        work = img
    out = work.reduce(factor)
    if work is not img:
        work.close()
    return out


def _check_readable_file(path: Any, what: str) -> Path:
    """Fail early, with a precise message, on the cases PIL would report vaguely."""
    try:
        p = Path(os.fsdecode(path))
    except TypeError:
        raise InputError(f"cannot read {what} {path!r}: expected a file path") from None
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"cannot read {what} {_show(p)}: no such file") from None
    except PermissionError:
        raise InputError(f"cannot read {what} {_show(p)}: permission denied") from None
    except OSError as e:
        raise InputError(f"cannot read {what} {_show(p)}: {_one_line(e)}") from None
    if p.is_dir():
        raise InputError(f"cannot read {what} {_show(p)}: is a directory, not a file")
    if not p.is_file():
        raise InputError(f"cannot read {what} {_show(p)}: not a regular file")
    if st.st_size == 0:
        raise InputError(f"cannot read {what} {_show(p)}: file is empty")
    return p


def _open_decoded(path: Any, what: str, max_side: int | None = None) -> Image.Image:
    """Open ``path`` with PIL, fully decode it, and apply its EXIF orientation.

    The header's size is checked first (:func:`_check_size`), so a huge image is refused before
    a pixel is decoded. With ``max_side`` a JPEG is decoded at a reduced DCT scale (see
    :func:`_draft`) and the size check applies to that scale.

    Returns a PIL image in the file's own mode (not yet converted), in display orientation.
    Every failure becomes an :class:`InputError`.
    """
    p = _check_readable_file(path, what)
    where = f"cannot read {what} {_show(p)}"
    with _PIL_LIMIT_LOCK:
        saved_limit = Image.MAX_IMAGE_PIXELS
        # None disables PIL's DecompressionBombWarning/Error (a warning turned into an error by
        # `-W error` would otherwise crash a legitimate large photo); MAX_PIXELS replaces it.
        Image.MAX_IMAGE_PIXELS = None
        try:
            try:
                img = Image.open(p)
            except UnidentifiedImageError:
                raise InputError(f"{where}: not an image, or a format Pillow cannot read") from None
            except PermissionError:
                raise InputError(f"{where}: permission denied") from None
            except MemoryError:
                raise InputError(f"{where}: not enough memory to open it") from None
            except Exception as e:  # PIL plugins raise many types on malformed headers
                raise InputError(f"{where}: corrupt header ({_one_line(e)})") from None
            try:
                if max_side is not None:
                    _draft(img, max_side)
                _check_size(img, where)
                w, h = img.size
                try:
                    # Force the full decode here: PIL is lazy, and a truncated file would
                    # otherwise only fail later, far from this path's name.
                    img.load()
                except MemoryError:
                    raise InputError(
                        f"{where}: not enough memory to decode it ({w}x{h} pixels)"
                    ) from None
                except Exception as e:  # OSError 'image file is truncated', SyntaxError...
                    raise InputError(f"{where}: file is truncated or corrupt") from e
            except BaseException:
                img.close()
                raise
        finally:
            Image.MAX_IMAGE_PIXELS = saved_limit

    try:
        # Rotate/flip into display orientation (all 8 EXIF values; also TIFF's own tag).
        oriented = ImageOps.exif_transpose(img)
    except Exception:
        # A malformed EXIF block should not make a decodable picture unreadable: show it as
        # stored, which is what viewers that cannot parse the EXIF do as well.
        oriented = img
    if oriented is not img:
        img.close()
    return oriented


def _sixteen_or_int_to_u8(arr: np.ndarray) -> np.ndarray:
    """Integer gray data wider than 8 bits -> uint8 by its bit range (see module docstring)."""
    a = arr.astype(np.int64, copy=False)
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi <= 0xFFFF:
        # 16-bit data: keep the top byte, so 65535 -> 255 and 32768 -> 128 (no clipping).
        return (a >> 8).astype(np.uint8)
    # Signed or >16-bit data has no fixed range we can trust: stretch what is there.
    if hi == lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _float_to_u8(arr: np.ndarray) -> np.ndarray:
    """Float gray data -> uint8: [0, 1] data if max <= 1, else [0, 255] (see module docstring)."""
    a = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(a)
    peak = float(a[finite].max()) if finite.any() else 0.0
    a = np.nan_to_num(a, nan=0.0, posinf=np.inf, neginf=-np.inf)
    scale = 255.0 if peak <= 1.0 else 1.0
    return np.rint(np.clip(a * scale, 0.0, 255.0)).astype(np.uint8)


def _gray_u8(img: Image.Image) -> np.ndarray | None:
    """(H, W) uint8 for single-channel modes that PIL's own convert() would clip; else None."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_or_int_to_u8(np.asarray(img))
    if mode == "F":
        return _float_to_u8(np.asarray(img))
    if mode == "1":
        return np.asarray(img, dtype=bool).astype(np.uint8) * np.uint8(255)
    return None


def _to_rgb(img: Image.Image, where: str) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB, alpha dropped."""
    gray = _gray_u8(img)
    if gray is not None:
        return np.repeat(gray[:, :, None], 3, axis=2)
    mode = img.mode
    if mode == "RGB":
        rgb = img
    elif mode in ("P", "PA"):
        # Via RGBA so a palette with transparency converts without PIL's warning; the alpha is
        # then dropped like for any other image.
        rgb = img.convert("RGBA").convert("RGB")
    else:
        try:
            rgb = img.convert("RGB")  # L, LA, RGBA, CMYK (incl. Adobe-inverted), YCbCr, HSV...
        except ValueError:
            try:
                rgb = img.convert("RGBA").convert("RGB")  # e.g. La (premultiplied)
            except ValueError:
                raise InputError(f"{where}: unsupported colour mode {mode!r}") from None
    return np.array(rgb, dtype=np.uint8)


def _to_gray(img: Image.Image, where: str) -> np.ndarray:
    """Any PIL mode -> (H, W) uint8 luminance (ITU-R 601-2 for colour), alpha dropped."""
    gray = _gray_u8(img)
    if gray is not None:
        return gray
    mode = img.mode
    if mode == "L":
        return np.array(img, dtype=np.uint8)
    if mode in ("P", "PA"):
        return np.array(img.convert("RGBA").convert("L"), dtype=np.uint8)
    try:
        return np.array(img.convert("L"), dtype=np.uint8)
    except ValueError:
        try:
            return np.array(img.convert("RGBA").convert("L"), dtype=np.uint8)
        except ValueError:
            raise InputError(f"{where}: unsupported colour mode {mode!r}") from None


def read_image(path: str | os.PathLike[str], max_side: int | None = None) -> np.ndarray:
    """Read an image file as RGB.

    Handles JPEG, PNG, TIFF, WebP (and anything else Pillow decodes); modes 1, L, LA, P (with
    or without transparency), RGB, RGBA, CMYK, YCbCr, 16-bit gray (I;16, I;16B, I), 32-bit
    float (F); and all eight EXIF orientations. Alpha is dropped (not composited). See the
    module docstring for how 16-bit and float data are scaled.

    The size in the file's header is checked before anything is decoded: more than
    :data:`MAX_PIXELS` pixels, or more memory than the machine has available for decoding
    (:func:`decode_bytes`), is refused with one line naming the size and the limit.

    Args:
        path: file path.
        max_side: ``None`` (default): the image at its own size, which masks and overlays need.
            An integer R: the image downscaled by the largest integer factor ``f`` that keeps its
            longest side ``>= R`` (so between R and 2R - 1 px when it was larger; unchanged when
            it is smaller than 2R): a JPEG is decoded at a 1/2, 1/4 or 1/8 DCT scale (its
            full-size pixels are never held), then any format is box-averaged
            (``Image.reduce``). Enough for a model that resizes to R anyway; the result is not
            at the image's own size.

    Returns:
        ``(H, W, 3)`` ``uint8`` RGB array, C-contiguous and writable, in display orientation.

    Raises:
        InputError: missing file, directory, empty/truncated/corrupt file, non-image file,
            unsupported mode, an image over :data:`MAX_PIXELS` pixels or over the available
            memory, or a ``max_side`` that is not a positive integer.
    """
    max_side = _check_max_side(max_side)
    where = f"cannot read image {_show(path)}"
    img = _open_decoded(path, "image", max_side)
    try:
        if max_side is not None:
            try:
                small = _reduce(img, max_side)
            except ValueError:
                raise InputError(f"{where}: unsupported colour mode {img.mode!r}") from None
            if small is not img:
                img.close()
                img = small
        arr = _to_rgb(img, where)
    finally:
        img.close()
    return np.ascontiguousarray(arr)


def read_mask(path: str | os.PathLike[str], threshold: float = 128) -> np.ndarray:
    """Read a mask image of any mode and threshold it.

    The image is reduced to one 8-bit channel first: colour (RGB, e.g. a JPEG mask with
    compression noise, CMYK, palette...) via luminance ``L = 0.299 R + 0.587 G + 0.114 B``;
    16-bit data by ``value >> 8``; float and 1-bit as in :func:`read_image`. Alpha is ignored.
    EXIF orientation is applied, so the mask lines up with :func:`read_image` of its image.

    Note: a coloured label map (e.g. a palette PNG whose object colour is dark red
    ``(128, 0, 0)``, luminance 38) falls below the default threshold; pass a lower one.

    Args:
        path: file path.
        threshold: 8-bit level in ``[0, 255]``; pixels with ``value >= threshold`` are
            foreground.

    Returns:
        ``(H, W)`` ``bool`` array, C-contiguous.

    Raises:
        InputError: unreadable file (as :func:`read_image`) or a threshold outside ``[0, 255]``.
    """
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float, np.integer, np.floating))
        or not (0 <= float(threshold) <= 255)
    ):
        raise InputError(f"mask threshold must be a number in [0, 255], got {threshold!r}")
    img = _open_decoded(path, "mask")
    try:
        gray = _to_gray(img, f"cannot read mask {_show(path)}")
    finally:
        img.close()
    return np.ascontiguousarray(gray >= threshold)
