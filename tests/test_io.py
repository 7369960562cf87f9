"""Tests for basam.io: reading every image kind, masks, atomic writes, overlays."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from basam import io as bio
from basam.errors import InputError
from basam.io import (
    atomic_write,
    read_image,
    read_mask,
    render_overlay,
    save_mask_png,
    save_masks,
    save_overlay,
)

ORIENTATION = 0x0112


def _pattern(h: int = 4, w: int = 6) -> np.ndarray:
    """A non-square RGB image where every pixel is distinct (so positions can be traced)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 40, xx * 40, np.full_like(yy, 7)], axis=-1).astype(np.uint8)


def _assert_image(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.shape == (*shape, 3)
    assert arr.dtype == np.uint8
    assert arr.flags["C_CONTIGUOUS"]


def _mode(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------
# read_image: modes and formats
# ------------------------------------------------------------------------------------------


def test_rgb_png_exact(tmp_path):
    src = _pattern()
    Image.fromarray(src).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    _assert_image(out, (4, 6))
    np.testing.assert_array_equal(out, src)
    out[0, 0] = 1  # must be writable


def test_grayscale_png(tmp_path):
    g = np.array([[0, 100, 255], [7, 8, 9]], dtype=np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    out = read_image(str(tmp_path / "g.png"))
    _assert_image(out, (2, 3))
    np.testing.assert_array_equal(out, np.repeat(g[:, :, None], 3, axis=2))


def test_rgba_png_alpha_dropped(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = 10
    rgba[..., 2] = 50
    rgba[0, 0, 3] = 0  # fully transparent: still its stored colour, not white
    rgba[0, 1, 3] = 128
    rgba[1, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    _assert_image(out, (2, 2))
    assert (out == np.array([200, 10, 50], np.uint8)).all()


def test_la_png(tmp_path):
    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 0] = 77
    la[..., 1] = 0
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert (out == 77).all()


def test_palette_png_with_transparency(tmp_path):
    im = Image.new("P", (3, 2))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (3 * 253))
    im.putdata([0, 1, 2, 2, 1, 0])
    im.info["transparency"] = 1
    im.save(tmp_path / "p.png", transparency=1)
    assert _mode(tmp_path / "p.png") == "P"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL palette-transparency warning
        out = read_image(tmp_path / "p.png")
    _assert_image(out, (2, 3))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [0, 255, 0])  # transparent index keeps its colour
    np.testing.assert_array_equal(out[1, 0], [0, 0, 255])


def test_one_bit(tmp_path):
    im = Image.new("1", (4, 2), 0)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "b.png")
    out = read_image(tmp_path / "b.png")
    _assert_image(out, (2, 4))
    assert (out[0, 1] == 255).all()
    assert out.sum() == 3 * 255


@pytest.mark.parametrize("ext", ["png", "tiff"])
def test_16bit_gray_scaled_by_bit_range(tmp_path, ext):
    a = np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / f"s.{ext}")
    assert _mode(tmp_path / f"s.{ext}").startswith("I;16")
    out = read_image(tmp_path / f"s.{ext}")
    _assert_image(out, (1, 5))
    # value >> 8, not a clip at 255 (which would make 256..65535 all white)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()


def test_16bit_big_endian_tiff(tmp_path):
    im = Image.new("I;16B", (3, 1))
    im.putdata([0, 32768, 65535])
    im.save(tmp_path / "b.tiff")
    assert _mode(tmp_path / "b.tiff") == "I;16B"
    out = read_image(tmp_path / "b.tiff")
    np.testing.assert_array_equal(out[0, :, 1], [0, 128, 255])


def test_mode_I_image(tmp_path):
    im = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32), "I")
    im.save(tmp_path / "i.tiff")
    assert _mode(tmp_path / "i.tiff") == "I"
    out = read_image(tmp_path / "i.tiff")
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0.0, 0.5, 1.0, -0.2], [0, 128, 255, 0]),  # [0, 1] data, scaled by 255
        ([0.0, 100.0, 255.0, 300.0], [0, 100, 255, 255]),  # [0, 255] data, clipped
        ([np.nan, 0.25, 0.0, 1.0], [0, 64, 0, 255]),  # NaN -> 0
    ],
)
def test_float_tiff(tmp_path, values, expected):
    Image.fromarray(np.array([values], dtype=np.float32), "F").save(tmp_path / "f.tiff")
    out = read_image(tmp_path / "f.tiff")
    _assert_image(out, (1, 4))
    np.testing.assert_array_equal(out[0, :, 0], expected)


def test_cmyk_jpeg(tmp_path):
    # Pure red in CMYK (C=0, M=255, Y=255, K=0) and a 50% gray via K.
    im = Image.new("CMYK", (32, 16), (0, 255, 255, 0))
    im.paste((0, 0, 0, 128), (16, 0, 32, 16))
    im.save(tmp_path / "c.jpg", quality=95)
    assert _mode(tmp_path / "c.jpg") == "CMYK"
    out = read_image(tmp_path / "c.jpg")
    _assert_image(out, (16, 32))
    assert np.abs(out[8, 4].astype(int) - [255, 0, 0]).max() <= 12
    assert np.abs(out[8, 28].astype(int) - [127, 127, 127]).max() <= 12


def test_cmyk_tiff(tmp_path):
    Image.new("CMYK", (4, 4), (255, 0, 255, 0)).save(tmp_path / "c.tiff")
    out = read_image(tmp_path / "c.tiff")
    assert (out == np.array([0, 255, 0], np.uint8)).all()


def test_ycbcr(tmp_path):
    im = Image.new("RGB", (4, 4), (10, 200, 30)).convert("YCbCr")
    im.save(tmp_path / "y.tiff")
    assert _mode(tmp_path / "y.tiff") == "YCbCr"
    out = read_image(tmp_path / "y.tiff")
    assert np.abs(out.astype(int) - [10, 200, 30]).max() <= 3


def test_webp_lossless(tmp_path):
    src = _pattern(8, 12)
    Image.fromarray(src).save(tmp_path / "w.webp", lossless=True)
    out = read_image(tmp_path / "w.webp")
    _assert_image(out, (8, 12))
    np.testing.assert_array_equal(out, src)


def test_jpeg(tmp_path):
    Image.new("RGB", (40, 30), (20, 120, 220)).save(tmp_path / "j.jpg", quality=95)
    out = read_image(tmp_path / "j.jpg")
    _assert_image(out, (30, 40))
    assert np.abs(out.astype(int) - [20, 120, 220]).max() <= 4


# ------------------------------------------------------------------------------------------
# EXIF orientation
# ------------------------------------------------------------------------------------------


def _save_with_orientation(path: Path, arr: np.ndarray, orientation: int, **kw) -> None:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(arr).save(path, exif=exif, **kw)


# Display = how a viewer shows a stored array with the given orientation (EXIF spec).
_DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),  # rotate 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),  # rotate 90 degrees counter-clockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_all_values_png(tmp_path, orientation):
    src = _pattern(4, 6)
    _save_with_orientation(tmp_path / "o.png", src, orientation)
    out = read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(out, _DISPLAY[orientation](src))


@pytest.mark.parametrize(
    "orientation, shape, corner",
    [
        (3, (40, 64), (39, 63)),  # 180: stored top-left -> bottom-right
        (6, (64, 40), (0, 39)),  # 90 CW: stored top-left -> top-right, H/W swapped
        (8, (64, 40), (63, 0)),  # 90 CCW: stored top-left -> bottom-left, H/W swapped
    ],
)
def test_exif_orientation_jpeg_corner(tmp_path, orientation, shape, corner):
    src = np.full((40, 64, 3), (0, 0, 255), np.uint8)  # H=40, W=64, blue
    src[:8, :8] = (255, 0, 0)  # distinctive red block in the stored top-left corner
    _save_with_orientation(tmp_path / "o.jpg", src, orientation, quality=95)
    out = read_image(tmp_path / "o.jpg")
    _assert_image(out, shape)
    r, c = corner
    assert out[r, c, 0] > 200 and out[r, c, 2] < 60  # red landed here
    # and the opposite corner is blue
    assert out[shape[0] - 1 - r, shape[1] - 1 - c, 2] > 200


def test_tiff_orientation_tag(tmp_path):
    src = _pattern(4, 6)
    _save_with_orientation(tmp_path / "o.tiff", src, 6)
    out = read_image(tmp_path / "o.tiff")
    np.testing.assert_array_equal(out, np.rot90(src, k=-1))


# ------------------------------------------------------------------------------------------
# read_image: bad inputs
# ------------------------------------------------------------------------------------------


def _assert_one_line_error(excinfo, name: str, *words: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert name in msg
    for w in words:
        assert w in msg


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as ei:
        read_image(tmp_path / "nope.png")
    _assert_one_line_error(ei, "nope.png", "no such file")


def test_directory(tmp_path):
    with pytest.raises(InputError) as ei:
        read_image(tmp_path)
    _assert_one_line_error(ei, str(tmp_path), "directory")


def test_empty_file(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(InputError) as ei:
        read_image(tmp_path / "e.jpg")
    _assert_one_line_error(ei, "e.jpg", "empty")


def test_text_file(tmp_path):
    (tmp_path / "t.png").write_text("this is not an image\nsecond line\n")
    with pytest.raises(InputError) as ei:
        read_image(tmp_path / "t.png")
    _assert_one_line_error(ei, "t.png", "not an image")


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_truncated_file(tmp_path, ext):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"f.{ext}")
    data = (tmp_path / f"f.{ext}").read_bytes()
    (tmp_path / f"t.{ext}").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as ei:
        read_image(tmp_path / f"t.{ext}")
    _assert_one_line_error(ei, f"t.{ext}", "truncated")


def test_input_error_is_value_error(tmp_path):
    with pytest.raises(ValueError):
        read_image(tmp_path / "nope.png")


def test_decompression_bomb_warning_does_not_crash(tmp_path, monkeypatch):
    Image.fromarray(_pattern(20, 20)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 400 px > 2 * 50: PIL would raise
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_image(tmp_path / "big.png")
    assert out.shape == (20, 20, 3)
    assert Image.MAX_IMAGE_PIXELS == 50  # PIL's setting restored


def test_too_many_pixels(tmp_path, monkeypatch):
    Image.fromarray(_pattern(20, 20)).save(tmp_path / "big.png")
    monkeypatch.setattr(bio, "MAX_PIXELS", 399)
    with pytest.raises(InputError) as ei:
        read_image(tmp_path / "big.png")
    _assert_one_line_error(ei, "big.png", "too large")


# ------------------------------------------------------------------------------------------
# read_mask
# ------------------------------------------------------------------------------------------


def _disk(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - 24) ** 2 + (xx - 30) ** 2 <= 15**2


def test_read_mask_noisy_rgb_jpeg(tmp_path):
    truth = _disk()
    rng = np.random.default_rng(1)
    rgb = np.repeat((truth * 255).astype(np.int16)[:, :, None], 3, axis=2)
    rgb = np.clip(rgb + rng.integers(-40, 41, rgb.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "m.jpg", quality=70)
    m = read_mask(tmp_path / "m.jpg")
    assert m.shape == truth.shape and m.dtype == bool
    assert (m == truth).mean() > 0.98
    assert m[24, 30] and not m[0, 0]


def test_read_mask_threshold_inclusive(tmp_path):
    Image.fromarray(np.array([[127, 128, 129, 0, 255]], np.uint8), "L").save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[False, True, True, False, True]])
    np.testing.assert_array_equal(
        read_mask(tmp_path / "m.png", threshold=200), [[False, False, False, False, True]]
    )


def test_read_mask_16bit(tmp_path):
    Image.fromarray(np.array([[0, 32767, 32768, 65535]], np.uint16)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), [[False, False, True, True]])


def test_read_mask_palette_and_1bit(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * (3 * 254))
    im.putdata([0, 1, 0])
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), [[False, True, False]])
    b = Image.new("1", (3, 1), 0)
    b.putpixel((2, 0), 1)
    b.save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), [[False, False, True]])


def test_read_mask_follows_exif_orientation(tmp_path):
    m = np.zeros((4, 6), np.uint8)
    m[0, 0] = 255
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(m, "L").save(tmp_path / "m.png", exif=exif)
    out = read_mask(tmp_path / "m.png")
    assert out.shape == (6, 4)
    assert out[0, 3] and out.sum() == 1


def test_read_mask_errors(tmp_path):
    (tmp_path / "t.png").write_text("nope")
    with pytest.raises(InputError) as ei:
        read_mask(tmp_path / "t.png")
    _assert_one_line_error(ei, "t.png", "mask")
    Image.new("L", (2, 2)).save(tmp_path / "ok.png")
    with pytest.raises(InputError):
        read_mask(tmp_path / "ok.png", threshold=300)


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def test_save_mask_png_round_trip(tmp_path):
    truth = _disk()
    out = save_mask_png(tmp_path / "m.png", truth)
    assert out == tmp_path / "m.png"
    with Image.open(out) as im:
        assert im.mode == "L" and im.format == "PNG"
        raw = np.asarray(im)
    assert set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(read_mask(out), truth)
    assert _no_temp_files(tmp_path)


def test_save_mask_png_uint8_nonzero_is_foreground(tmp_path):
    save_mask_png(tmp_path / "m.PNG", np.array([[0, 1, 255]], np.uint8))
    np.testing.assert_array_equal(_pixels(tmp_path / "m.PNG"), [[0, 255, 255]])


@pytest.mark.parametrize("name", ["m.jpg", "m.tiff", "m"])
def test_save_mask_wrong_suffix(tmp_path, name):
    with pytest.raises(InputError) as ei:
        save_mask_png(tmp_path / name, _disk())
    _assert_one_line_error(ei, name, ".png")
    assert list(tmp_path.iterdir()) == []


def test_save_mask_bad_mask(tmp_path):
    with pytest.raises(InputError):
        save_mask_png(tmp_path / "m.png", np.zeros((2, 3, 4), bool))
    with pytest.raises(InputError):
        save_mask_png(tmp_path / "m.png", np.zeros((2, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_save_mask_missing_directory(tmp_path):
    with pytest.raises(InputError) as ei:
        save_mask_png(tmp_path / "sub" / "m.png", _disk())
    _assert_one_line_error(ei, "m.png", "does not exist")


def test_save_masks_single(tmp_path):
    written = save_masks(tmp_path / "out.png", _disk()[None])
    assert written == [tmp_path / "out.png"]
    np.testing.assert_array_equal(read_mask(written[0]), _disk())


def test_save_masks_many(tmp_path):
    masks = np.stack([_disk(), ~_disk(), np.zeros_like(_disk())])
    written = save_masks(tmp_path / "out.png", masks)
    assert written == [tmp_path / f"out_{i}.png" for i in range(3)]
    assert not (tmp_path / "out.png").exists()
    for i, p in enumerate(written):
        np.testing.assert_array_equal(read_mask(p), masks[i])
    assert _no_temp_files(tmp_path)


def test_save_masks_all_or_nothing(tmp_path, monkeypatch):
    real = bio._png_writer
    calls = {"n": 0}

    def flaky(u8):
        calls["n"] += 1
        if calls["n"] == 3:

            def boom(f):
                raise RuntimeError("disk on fire")

            return boom
        return real(u8)

    monkeypatch.setattr(bio, "_png_writer", flaky)
    (tmp_path / "out_0.png").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        save_masks(tmp_path / "out.png", np.stack([_disk()] * 4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out_0.png"]
    assert (tmp_path / "out_0.png").read_bytes() == b"old"


def test_save_masks_empty(tmp_path):
    with pytest.raises(InputError):
        save_masks(tmp_path / "out.png", np.zeros((0, 4, 4), bool))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_success(tmp_path):
    target = tmp_path / "f.bin"
    seen = {}

    def write(f):
        seen["names"] = [q.name for q in tmp_path.iterdir()]  # the temp file, mid-write
        f.write(b"hello")

    assert atomic_write(target, write) == target
    assert target.read_bytes() == b"hello"
    (name,) = seen["names"]
    assert name.startswith(".") and name.endswith(".tmp")
    assert _no_temp_files(tmp_path)


def test_atomic_write_failure_leaves_nothing(tmp_path):
    def write(f):
        f.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(tmp_path / "f.bin", write)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_existing_target(tmp_path):
    target = tmp_path / "f.bin"
    original = bytes(range(256)) * 3
    target.write_bytes(original)

    def write(f):
        f.write(b"new content that must not appear")
        raise KeyboardInterrupt  # even BaseException cleans up

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write)
    assert target.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_replaces_existing(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert _no_temp_files(tmp_path)


# ------------------------------------------------------------------------------------------
# Overlays
# ------------------------------------------------------------------------------------------


def test_render_overlay_masks(tmp_path):
    img = np.full((100, 120, 3), 128, np.uint8)
    mask = np.zeros((100, 120), bool)
    mask[20:50, 30:70] = True
    before = img.copy()
    out = render_overlay(img, mask[None])
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(img, before)  # input untouched
    assert (out[35, 50] != img[35, 50]).any()  # inside the mask: tinted
    np.testing.assert_array_equal(out[90, 110], img[90, 110])  # far away: unchanged
    # interior blend = 0.5 * image + 0.5 * palette colour
    expected = np.rint(0.5 * 128 + 0.5 * np.array(bio.PALETTE[0])).astype(np.uint8)
    np.testing.assert_array_equal(out[35, 50], expected)
    # outline is the opaque palette colour
    np.testing.assert_array_equal(out[20, 50], bio.PALETTE[0])
    np.testing.assert_array_equal(out[35, 30], bio.PALETTE[0])


def test_render_overlay_two_masks_distinct_colours():
    img = np.zeros((50, 50, 3), np.uint8)
    masks = np.zeros((2, 50, 50), bool)
    masks[0, 5:20, 5:20] = True
    masks[1, 30:45, 30:45] = True
    out = render_overlay(img, masks)
    assert (out[12, 12] != out[37, 37]).any()


def test_render_overlay_points_and_boxes():
    img = np.full((200, 300, 3), 100, np.uint8)
    out = render_overlay(
        img,
        np.zeros((0, 200, 300), bool),
        points=[[50, 40], [250, 150], [10, 190]],
        point_labels=[1, 0, -1],
        boxes=[[100, 20, 200, 180]],
    )
    assert out.shape == img.shape and out.dtype == np.uint8
    g = out[40, 50]
    assert g[1] > 150 and g[0] < 50  # positive point: green, at (x=50, y=40)
    r = out[150, 250]
    assert r[0] > 150 and r[1] < 50  # negative point: red
    np.testing.assert_array_equal(out[190, 10], img[190, 10])  # label -1 not drawn
    assert (out[100, 100] != img[100, 100]).any()  # left edge of the box
    np.testing.assert_array_equal(out[100, 150], img[100, 150])  # box interior untouched


def test_render_overlay_marker_scales_with_image():
    small = render_overlay(np.zeros((100, 100, 3), np.uint8), None, points=[[50, 50]])
    large = render_overlay(np.zeros((2000, 2000, 3), np.uint8), None, points=[[1000, 1000]])
    small_r = (small[50, :, 1] > 0).sum()
    large_r = (large[1000, :, 1] > 0).sum()
    assert small_r <= 9
    assert large_r >= 30


def test_render_overlay_bad_inputs():
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(InputError):
        render_overlay(img, np.zeros((1, 5, 5), bool))
    with pytest.raises(InputError):
        render_overlay(img.astype(np.float32), None)
    with pytest.raises(InputError):
        render_overlay(img, None, alpha=1.5)
    with pytest.raises(InputError):
        render_overlay(img, None, points=[[1, 2]], point_labels=[1, 0])


@pytest.mark.parametrize("name, fmt", [("o.png", "PNG"), ("o.jpg", "JPEG"), ("o.JPEG", "JPEG")])
def test_save_overlay(tmp_path, name, fmt):
    img = np.full((40, 60, 3), 90, np.uint8)
    mask = np.zeros((40, 60), bool)
    mask[10:30, 10:30] = True
    p = save_overlay(tmp_path / name, img, mask[None], points=[[20, 20]], point_labels=[1])
    with Image.open(p) as im:
        assert im.format == fmt and im.size == (60, 40)
    back = read_image(p)
    ref = render_overlay(img, mask[None], points=[[20, 20]], point_labels=[1])
    err = np.abs(back.astype(int) - ref.astype(int))
    if fmt == "PNG":
        assert err.max() == 0
    else:  # lossy, with chroma subsampling at sharp edges: judge the average
        assert err.mean() <= 6
    assert _no_temp_files(tmp_path)


def test_save_overlay_wrong_suffix(tmp_path):
    with pytest.raises(InputError):
        save_overlay(tmp_path / "o.gif", np.zeros((4, 4, 3), np.uint8), None)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# The package: one module per purpose, every old name still importable from basam.io
# ------------------------------------------------------------------------------------------


def test_io_is_a_package_split_by_purpose():
    import importlib

    import basam.io

    assert Path(basam.io.__file__).name == "__init__.py"
    assert not (Path(basam.io.__file__).parents[1] / "io.py").exists()
    homes = {
        "decode": ("read_image", "read_mask", "MAX_PIXELS", "decode_bytes", "_open_decoded", "_to_rgb", "_to_gray"),
        "atomic": ("atomic_write", "atomic_write_all", "fsync_dir", "check_writable_dir", "_stage", "_commit"),
        "masks": ("save_mask_png", "save_masks", "_png_writer", "_mask_u8", "_require_suffix"),
        "overlay": ("render_overlay", "save_overlay", "PALETTE", "_outline"),
    }
    for module, names in homes.items():
        sub = importlib.import_module(f"basam.io.{module}")
        for name in names:
            assert getattr(basam.io, name) is getattr(sub, name), name
            if callable(getattr(sub, name)):
                assert getattr(sub, name).__module__ == f"basam.io.{module}", name
    # what the rest of the package imports from basam.io (coco: _show; checkpointing: fsync_dir)
    from basam.io import _show, atomic_write, fsync_dir, read_image, read_mask  # noqa: F401


def test_assigning_on_the_package_reaches_the_submodules(monkeypatch):
    import basam.io
    import basam.io.decode
    import basam.io.masks

    monkeypatch.setattr(basam.io, "MAX_PIXELS", 12)
    assert basam.io.decode.MAX_PIXELS == 12
    sentinel = lambda u8: None  # noqa: E731
    monkeypatch.setattr(basam.io, "_png_writer", sentinel)
    assert basam.io.masks._png_writer is sentinel
    monkeypatch.undo()
    assert basam.io.decode.MAX_PIXELS == basam.io.MAX_PIXELS == 2**28


# ------------------------------------------------------------------------------------------
# Bounded decoding: sizes from the header, downscaled reading
# ------------------------------------------------------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG header claiming width x height RGB, with a tiny (truncated) IDAT: 1.7 MB of
    zeros would decode to the same size; the header is all the check may look at."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * width) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_huge_image_is_refused_from_its_header(tmp_path, monkeypatch):
    _png_header_only(tmp_path / "huge.png", 40000, 40000)
    from PIL import ImageFile

    decoded = []

    def no_decoding(self, *args, **kwargs):
        decoded.append(self)
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for reader in (read_image, read_mask):
        with pytest.raises(InputError) as ei:
            reader(tmp_path / "huge.png")
        _assert_one_line_error(ei, "huge.png", "too large")
        assert "40000x40000" in str(ei.value) and f"limit is {bio.MAX_PIXELS} pixels" in str(ei.value)
    assert decoded == []  # refused before a pixel was decoded


def test_image_over_the_available_memory_is_refused(tmp_path, monkeypatch):
    import basam.memory

    Image.fromarray(_pattern(20, 30)).save(tmp_path / "a.png")
    assert bio.decode_bytes(30, 20, "RGB") == 600 * (4 + 8)
    monkeypatch.setattr(basam.memory, "cpu_available_bytes", lambda: 1000)
    with pytest.raises(InputError) as ei:
        read_image(tmp_path / "a.png")
    _assert_one_line_error(ei, "a.png", "30x20 pixels")
    assert "GiB is available" in str(ei.value)
    monkeypatch.setattr(basam.memory, "cpu_available_bytes", lambda: None)  # unknown: not refused
    assert read_image(tmp_path / "a.png").shape == (20, 30, 3)


def _smooth(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 255 // h, xx * 255 // w, (yy + xx) * 255 // (h + w)], axis=-1).astype(np.uint8)


def test_read_image_max_side_jpeg_uses_dct_scaling(tmp_path, monkeypatch):
    arr = _smooth(600, 800)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    reduced = []
    real_reduce = Image.Image.reduce
    monkeypatch.setattr(Image.Image, "reduce", lambda self, *a, **k: reduced.append(a) or real_reduce(self, *a, **k))
    small = read_image(tmp_path / "a.jpg", max_side=100)
    assert small.shape == (75, 100, 3) and small.dtype == np.uint8 and small.flags["C_CONTIGUOUS"]
    assert reduced == []  # the decoder produced 1/8 scale itself: the full-size pixels never existed
    expected = np.asarray(Image.fromarray(arr).reduce(8), dtype=np.float64)
    assert np.abs(small.astype(np.float64) - expected).mean() < 4
    # longest side kept >= max_side: 800 // 300 = 2, JPEG scales are powers of two
    assert read_image(tmp_path / "a.jpg", max_side=300).shape == (300, 400, 3)
    assert read_image(tmp_path / "a.jpg", max_side=500).shape == (600, 800, 3)  # < 2x: as it is


def test_read_image_max_side_other_formats_and_orientation(tmp_path):
    arr = _smooth(60, 90)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png", max_side=30)
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(arr).reduce(3)))
    # 16-bit gray: converted before averaging (I;16 has no reduce), scaled as read_image does
    Image.fromarray(np.full((40, 40), 65535, np.uint16)).save(tmp_path / "g16.png")
    assert (read_image(tmp_path / "g16.png", max_side=10) == 255).all()
    # a palette image is averaged in colour, not in palette indices
    pal = Image.fromarray(np.array([[0, 1] * 8] * 16, np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png", max_side=8)[0, 0], [128, 0, 128])
    # EXIF orientation still applies: stored 80 wide x 40 tall, shown 40 x 80
    _save_with_orientation(tmp_path / "r.jpg", _smooth(40, 80), 6, quality=95)
    assert read_image(tmp_path / "r.jpg").shape == (80, 40, 3)
    assert read_image(tmp_path / "r.jpg", max_side=20).shape == (20, 10, 3)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "100"])
def test_read_image_bad_max_side(tmp_path, bad):
    Image.fromarray(_pattern()).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="max_side"):
        read_image(tmp_path / "a.png", max_side=bad)


def test_atomic_write_all_is_all_or_nothing(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(InputError) as ei:
        bio.atomic_write_all([(tmp_path / "a.txt", lambda f: f.write(b"A")), (tmp_path / "b.txt", boom)])
    _assert_one_line_error(ei, "b.txt", "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"] and (tmp_path / "b.txt").read_bytes() == b"old"
    written = bio.atomic_write_all([(tmp_path / "a.txt", lambda f: f.write(b"A")), (tmp_path / "b.txt", lambda f: f.write(b"B"))])
    assert written == [tmp_path / "a.txt", tmp_path / "b.txt"] and (tmp_path / "b.txt").read_bytes() == b"B"


def test_check_writable_dir(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        bio.check_writable_dir(tmp_path / "file")
    with pytest.raises(InputError, match="is a file, not a folder"):
        bio.check_writable_dir(tmp_path / "file" / "sub")
    assert bio.check_writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing created
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path)  # root passes os.access: simulate
    with pytest.raises(InputError, match="is not writable"):
        bio.check_writable_dir(tmp_path / "new")


def test_canonical_path(tmp_path, monkeypatch):
    (tmp_path / "data" / "DUTS").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    (tmp_path / "other").symlink_to(tmp_path / "data" / "DUTS")
    monkeypatch.chdir(tmp_path)
    want = bio.canonical_path(tmp_path / "data" / "DUTS")
    assert want.is_absolute()
    for spelling in ("data/DUTS", "./data/DUTS/", "data/../data/DUTS", str(tmp_path / "link" / "DUTS")):
        assert bio.canonical_path(spelling) == want, spelling
    # a link named otherwise keeps its name: datasets are named after the last component
    assert bio.canonical_path("other").name == "other"
