"""Image and mask input/output: robust reading, atomic writing, and overlay rendering.

Everything here depends on numpy and Pillow only.

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
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from basam.errors import InputError

__all__ = [
    "MAX_PIXELS",
    "read_image",
    "read_mask",
    "atomic_write",
    "save_mask_png",
    "save_masks",
    "render_overlay",
    "save_overlay",
    "PALETTE",
]

#: Images with more pixels than this are refused (before decoding). PIL's own
#: decompression-bomb limit (~179 Mpx, which a 200 Mpx phone photo exceeds) is lifted while we
#: decode, and replaced by this one.
MAX_PIXELS = 2**31

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

# PIL.Image.MAX_IMAGE_PIXELS is a module global; we swap it out while opening/decoding and put
# it back afterwards. The lock keeps two of our own reads from restoring each other's value
# (it also serialises decoding between threads, an acceptable cost for a CLI/library reader).
_PIL_LIMIT_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


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


def _open_decoded(path: Any, what: str) -> Image.Image:
    """Open ``path`` with PIL, fully decode it, and apply its EXIF orientation.

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
                w, h = img.size
                if w <= 0 or h <= 0:
                    raise InputError(f"{where}: image has zero size ({w}x{h})")
                if w * h > MAX_PIXELS:
                    raise InputError(
                        f"{where}: image is too large ({w}x{h} = {w * h} pixels, "
                        f"limit {MAX_PIXELS})"
                    )
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


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as RGB.

    Handles JPEG, PNG, TIFF, WebP (and anything else Pillow decodes); modes 1, L, LA, P (with
    or without transparency), RGB, RGBA, CMYK, YCbCr, 16-bit gray (I;16, I;16B, I), 32-bit
    float (F); and all eight EXIF orientations. Alpha is dropped (not composited). See the
    module docstring for how 16-bit and float data are scaled.

    Args:
        path: file path.

    Returns:
        ``(H, W, 3)`` ``uint8`` RGB array, C-contiguous and writable, in display orientation.

    Raises:
        InputError: missing file, directory, empty/truncated/corrupt file, non-image file,
            unsupported mode, or an image over :data:`MAX_PIXELS` pixels.
    """
    img = _open_decoded(path, "image")
    try:
        arr = _to_rgb(img, f"cannot read image {_show(path)}")
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


# --------------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------------


def _current_umask() -> int:
    # os.umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _stage(path: Path, write_fn: Callable[[BinaryIO], Any]) -> Path:
    """Write via ``write_fn`` to a synced temp file next to ``path``; return the temp path.

    On any exception the temp file is removed and the exception propagates (OSError from the
    file system becomes InputError). ``path`` itself is not touched.
    """
    where = f"cannot write {_show(path)}"
    directory = path.parent
    if path.is_dir():
        raise InputError(f"{where}: is a directory")
    if not directory.is_dir():
        raise InputError(f"{where}: directory {_show(directory)} does not exist")
    try:
        # Same directory, so os.replace is a rename on one file system (atomic); the leading
        # dot hides the temp file from globbing such as `*.png`.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise InputError(f"{where}: {_one_line(e)}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        try:
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_current_umask()
            os.chmod(tmp, mode)
        except OSError:
            pass
    except BaseException as e:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise InputError(f"{where}: {_one_line(e)}") from e
        raise
    return tmp


def _commit(tmp: Path, path: Path) -> None:
    """Atomically move the staged ``tmp`` onto ``path`` and sync the directory entry."""
    try:
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise InputError(f"cannot write {_show(path)}: {_one_line(e)}") from e
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry so a rename into it is durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write_fn: Callable[[BinaryIO], Any]) -> Path:
    """Write a file atomically: readers see the old content or the complete new one.

    ``write_fn(f)`` is called with a binary file object opened on a temp file in the same
    directory (named ``.<name>.<random>.tmp``). The temp file is flushed and fsynced, then
    ``os.replace``\\ d onto ``path``. If anything raises, the temp file is removed and ``path``
    is left as it was (absent, or byte-identical).

    Args:
        path: destination file; its directory must exist.
        write_fn: writes the whole content to the given file object.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: the destination is a directory, its directory is missing, or the file
            system refuses the write (permission, disk full...). Other exceptions raised by
            ``write_fn`` propagate unchanged.
    """
    p = Path(os.fsdecode(path))
    tmp = _stage(p, write_fn)
    _commit(tmp, p)
    return p


# --------------------------------------------------------------------------------------------
# Mask writing
# --------------------------------------------------------------------------------------------


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

    staged: list[Path] = []
    try:
        for i, target in enumerate(targets):
            staged.append(_stage(target, _png_writer(u8[i])))
    except BaseException:
        for tmp in staged:
            try:
                tmp.unlink()
            except OSError:
                pass
        raise

    committed: list[Path] = []
    try:
        for tmp, target in zip(staged, targets):
            _commit(tmp, target)
            committed.append(target)
    except BaseException:
        for target in committed:
            try:
                target.unlink()
            except OSError:
                pass
        for tmp in staged[len(committed) + 1 :]:
            try:
                tmp.unlink()
            except OSError:
                pass
        raise
    return targets


# --------------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------------


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
    p = Path(os.fsdecode(path))
    fmt = _require_suffix(p, {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}, "overlay")
    rendered = render_overlay(image, masks, points, point_labels, boxes, alpha)

    def write(f: BinaryIO) -> None:
        pil = Image.fromarray(rendered)
        if fmt == "JPEG":
            pil.save(f, format="JPEG", quality=int(quality))
        else:
            pil.save(f, format="PNG")

    return atomic_write(p, write)
