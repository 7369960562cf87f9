"""Tests for basam.data: dataset layouts, pairing, and prompts from ground-truth masks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from basam.data import (
    LAYOUTS,
    PROMPT_KINDS,
    Prompt,
    Sample,
    SegmentationDataset,
    detect_layout,
    make_prompt,
    open_datasets,
    parse_data_arg,
)
from basam.errors import InputError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SRC = Path(__file__).resolve().parents[1] / "src"
ORIENTATION = 0x0112


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _write_image(path: Path, w: int = 8, h: int = 6, value: int = 90, exif: Image.Exif | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((h, w, 3), value, np.uint8)
    arr[0, 0] = (255, 0, 0)
    img = Image.fromarray(arr)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}[
        path.suffix.lower()
    ]
    if exif is not None:
        img.save(path, format=fmt, exif=exif)
    else:
        img.save(path, format=fmt)
    return path


def _write_mask(path: Path, w: int = 8, h: int = 6, arr: np.ndarray | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr is None:
        arr = np.zeros((h, w), np.uint8)
        arr[1 : h - 1, 1 : w - 1] = 255
    Image.fromarray(arr.astype(np.uint8)).save(path, format="PNG")
    return path


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dst)
    except OSError:  # no symlinks here (e.g. Windows without privilege): a copy will do
        shutil.copyfile(src, dst)


def _real_pairs(folder: str, n: int) -> list[tuple[Path, Path]]:
    """``n`` real (image, mask) pairs from ../shared/data/<folder>, or skip."""
    images = SHARED_DATA / folder / "images"
    masks = SHARED_DATA / folder / "masks"
    if not images.is_dir() or not masks.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA / folder} (../shared/data is absent)")
    by_stem = {p.stem: p for p in masks.iterdir() if not p.name.startswith(".")}
    pairs = [
        (p, by_stem[p.stem])
        for p in sorted(images.iterdir())
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.stem in by_stem
    ][:n]
    if len(pairs) < n:
        pytest.skip(f"fewer than {n} image/mask pairs in {SHARED_DATA / folder}")
    return pairs


def _arrange(pairs, image_dir: Path, mask_dir: Path, mask_name=lambda stem, suffix: stem + suffix):
    for img, msk in pairs:
        _link(img, image_dir / img.name)
        _link(msk, mask_dir / mask_name(img.stem, msk.suffix))


def _by_name(datasets):
    return {d.name: d for d in datasets}


def _assert_paired(ds: SegmentationDataset, key=lambda s: s):
    """Every sample's image and mask belong together, and the order is sorted by name."""
    names = [s.name for s in ds.samples]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for s in ds.samples:
        assert s.image_path.stem == s.name.split("/")[-1]
        assert key(s.mask_path.stem) == s.image_path.stem


# --------------------------------------------------------------------------------------------
# parse_data_arg
# --------------------------------------------------------------------------------------------


def test_parse_data_arg_layout_suffix():
    assert parse_data_arg("/data/DUTS") == (Path("/data/DUTS"), None)
    assert parse_data_arg("/data/DUTS:duts") == (Path("/data/DUTS"), "duts")
    assert parse_data_arg("/data/DIS5K:DIS5K") == (Path("/data/DIS5K"), "dis5k")
    for layout in LAYOUTS:
        assert parse_data_arg(f"rel/dir:{layout}") == (Path("rel/dir"), layout)


def test_parse_data_arg_colon_in_directory_name(tmp_path):
    # ':' inside the path, layout after the last one
    assert parse_data_arg("/data/run:2024/DIS5K:dis5k") == (Path("/data/run:2024/DIS5K"), "dis5k")
    # ':' inside the path, no layout: what follows the ':' has a separator
    assert parse_data_arg("/data/run:2024/DIS5K") == (Path("/data/run:2024/DIS5K"), None)
    # an existing folder really named 'x:y' is a path, not a layout request
    odd = tmp_path / "backup:old"
    odd.mkdir()
    assert parse_data_arg(str(odd)) == (odd, None)
    assert parse_data_arg(f"{odd}:generic") == (odd, "generic")


def test_parse_data_arg_unknown_layout():
    with pytest.raises(InputError) as e:
        parse_data_arg("/data/COCO:coco")
    msg = str(e.value)
    assert "coco" in msg
    for layout in LAYOUTS:
        assert layout in msg
    assert "\n" not in msg
    with pytest.raises(InputError):
        parse_data_arg("")


# --------------------------------------------------------------------------------------------
# generic layout
# --------------------------------------------------------------------------------------------


def test_generic_synthetic_pairs_by_stem_any_suffix(tmp_path):
    root = tmp_path / "mydata"
    _write_image(root / "images" / "b.JPG", 8, 6)
    _write_image(root / "images" / "a.png", 5, 4)
    _write_image(root / "images" / "c.bmp", 7, 3)
    _write_image(root / "images" / "d.tiff", 4, 4)
    _write_image(root / "images" / "sub" / "e.jpeg", 6, 6)
    (root / "images" / "notes.txt").write_text("not an image")
    (root / "images" / ".hidden.png").write_bytes(b"junk")
    _write_mask(root / "masks" / "b.png", 8, 6)
    _write_mask(root / "masks" / "a.PNG", 5, 4)
    _write_mask(root / "masks" / "c.png", 7, 3)
    _write_mask(root / "masks" / "d.tif", 4, 4)
    _write_mask(root / "masks" / "sub" / "e.png", 6, 6)

    assert detect_layout(root) == "generic"
    (ds,) = open_datasets(root)
    assert (ds.name, ds.layout, ds.root) == ("mydata", "generic", root)
    assert [s.name for s in ds.samples] == ["a", "b", "c", "d", "sub/e"]
    assert ds.skipped == []
    assert len(ds) == 5 and ds[1].image_path == root / "images" / "b.JPG"
    assert ds[1].mask_path == root / "masks" / "b.png"
    _assert_paired(ds)
    image, mask = ds.load(2)
    assert image.shape == (3, 7, 3) and image.dtype == np.uint8
    assert mask.shape == (3, 7) and mask.dtype == bool
    assert mask[1, 1] and not mask[0, 0]


def test_generic_one_level_down_one_dataset_per_folder(tmp_path):
    for name, n in (("set-a", 2), ("set-b", 3)):
        for i in range(n):
            _write_image(tmp_path / name / "images" / f"im{i}.png")
            _write_mask(tmp_path / name / "masks" / f"im{i}.png")
    (tmp_path / "unrelated").mkdir()
    assert detect_layout(tmp_path) == "generic"
    ds = _by_name(open_datasets(tmp_path))
    assert sorted(ds) == ["set-a", "set-b"]
    assert len(ds["set-a"]) == 2 and len(ds["set-b"]) == 3


def test_unpaired_and_mismatched_files_are_skipped(tmp_path):
    root = tmp_path / "d"
    _write_image(root / "images" / "good.png", 8, 6)
    _write_mask(root / "masks" / "good.png", 8, 6)
    _write_image(root / "images" / "lonely.jpg", 8, 6)  # no mask
    _write_mask(root / "masks" / "orphan.png", 8, 6)  # no image
    _write_image(root / "images" / "wrong.png", 8, 6)
    _write_mask(root / "masks" / "wrong.png", 6, 8)  # transposed size
    _write_image(root / "images" / "twice.png", 8, 6)  # two images with one stem
    _write_image(root / "images" / "twice.jpg", 8, 6)
    _write_mask(root / "masks" / "twice.png", 8, 6)
    _write_image(root / "images" / "broken.png", 8, 6)
    (root / "masks" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")

    (ds,) = open_datasets(root, "generic")
    assert [s.name for s in ds.samples] == ["good"]
    reasons = dict(ds.skipped)
    assert reasons["images/lonely.jpg"] == "no mask"
    assert reasons["masks/orphan.png"] == "no image"
    assert reasons["images/wrong.png"].startswith("size mismatch: image 8x6, mask 6x8")
    assert reasons["images/twice.png"].startswith("ambiguous")
    assert reasons["images/twice.jpg"].startswith("ambiguous")
    assert reasons["masks/broken.png"].startswith("unreadable header")
    assert all("\n" not in r for r in reasons.values())
    assert ds.skipped == sorted(ds.skipped)


def test_dataset_with_every_pair_skipped_is_still_returned(tmp_path):
    _write_image(tmp_path / "images" / "a.png", 8, 6)
    _write_mask(tmp_path / "masks" / "a.png", 9, 6)
    (ds,) = open_datasets(tmp_path)
    assert len(ds) == 0
    assert [f for f, _ in ds.skipped] == ["images/a.png"]


def test_exif_orientation_counts_in_the_size_check(tmp_path):
    # The JPEG is stored 12x6 but displays 6x12 (orientation 6); its mask is drawn 6x12.
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    _write_image(tmp_path / "images" / "rot.jpg", 12, 6, exif=exif)
    _write_mask(tmp_path / "masks" / "rot.png", 6, 12)
    _write_image(tmp_path / "images" / "raw.jpg", 12, 6, exif=exif)
    _write_mask(tmp_path / "masks" / "raw.png", 12, 6)  # raw size: would not line up
    (ds,) = open_datasets(tmp_path)
    assert [s.name for s in ds.samples] == ["rot"]
    assert dict(ds.skipped)["images/raw.jpg"].startswith("size mismatch")
    image, mask = ds.load(0)
    assert image.shape[:2] == mask.shape == (12, 6)


def test_load_raises_when_decoded_sizes_differ(tmp_path):
    img = _write_image(tmp_path / "a.png", 8, 6)
    msk = _write_mask(tmp_path / "b.png", 5, 5)
    ds = SegmentationDataset("x", tmp_path, "generic", [Sample("a", img, msk)], [])
    with pytest.raises(InputError, match="8x6.*5x5"):
        ds.load(0)
    (tmp_path / "c.png").write_bytes(b"")
    ds.samples.append(Sample("c", tmp_path / "c.png", msk))
    with pytest.raises(InputError):
        ds.load(1)


def test_mask_threshold_is_128(tmp_path):
    _write_image(tmp_path / "images" / "t.png", 4, 1)
    _write_mask(tmp_path / "masks" / "t.png", arr=np.array([[0, 127, 128, 255]], np.uint8))
    (ds,) = open_datasets(tmp_path)
    _, mask = ds.load(0)
    assert mask.tolist() == [[False, False, True, True]]


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        open_datasets(tmp_path / "nope")
    with pytest.raises(InputError, match="folder not found"):
        detect_layout(tmp_path / "nope")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as e:
        detect_layout(empty)
    for what in ("images/ + masks/", "im/", "Imgs/", "_GroundTruth", "-Image/"):
        assert what in str(e.value)
    with pytest.raises(InputError, match="no generic dataset"):
        open_datasets(empty, "generic")

    (empty / "images").mkdir()
    (empty / "masks").mkdir()
    with pytest.raises(InputError, match="no images found in"):
        open_datasets(empty)
    _write_image(empty / "images" / "a.png")
    with pytest.raises(InputError, match="no masks found in"):
        open_datasets(empty)

    only_images = tmp_path / "only_images"
    _write_image(only_images / "images" / "a.png")
    with pytest.raises(InputError, match="folder not found: .*masks"):
        open_datasets(only_images, "generic")

    with pytest.raises(InputError, match="unknown dataset layout"):
        open_datasets(only_images, "coco")


# --------------------------------------------------------------------------------------------
# duts layout
# --------------------------------------------------------------------------------------------


def test_duts_layout_real_pairs(tmp_path):
    te = _real_pairs("duts-te", 5)
    tr = _real_pairs("duts-tr", 3)
    root = tmp_path / "DUTS"
    _arrange(te, root / "DUTS-TE" / "DUTS-TE-Image", root / "DUTS-TE" / "DUTS-TE-Mask")
    _arrange(tr, root / "DUTS-TR" / "DUTS-TR-Image", root / "DUTS-TR" / "DUTS-TR-Mask")

    assert detect_layout(root) == "duts"
    ds = _by_name(open_datasets(root))
    assert sorted(ds) == ["DUTS-TE", "DUTS-TR"]
    assert [s.name for s in ds["DUTS-TE"].samples] == sorted(p.stem for p, _ in te)
    assert len(ds["DUTS-TR"]) == 3
    for d in ds.values():
        assert d.layout == "duts" and d.skipped == []
        _assert_paired(d)

    # the split folder itself
    assert detect_layout(root / "DUTS-TE") == "duts"
    (only,) = open_datasets(root / "DUTS-TE")
    assert only.name == "DUTS-TE" and len(only) == 5

    image, mask = only.load(0)
    assert image.shape[:2] == mask.shape and mask.dtype == bool
    raw = np.asarray(Image.open(only[0].mask_path).convert("L"))
    np.testing.assert_array_equal(mask, raw >= 128)
    assert 0 < mask.sum() < mask.size


# --------------------------------------------------------------------------------------------
# dis5k layout
# --------------------------------------------------------------------------------------------


def test_dis5k_layout_real_pairs(tmp_path):
    pairs = _real_pairs("duts-te", 6)
    dis = tmp_path / "data" / "DIS5K"
    _arrange(pairs[:3], dis / "DIS-TE1" / "im", dis / "DIS-TE1" / "gt")
    _arrange(pairs[3:5], dis / "DIS-TE2" / "im", dis / "DIS-TE2" / "gt")
    _arrange(pairs[5:], dis / "DIS-VD" / "im", dis / "DIS-VD" / "gt")

    for root in (dis, dis.parent):  # the DIS5K folder, or the folder holding it
        assert detect_layout(root) == "dis5k"
        ds = _by_name(open_datasets(root))
        assert sorted(ds) == ["DIS-TE1", "DIS-TE2", "DIS-VD"]
        assert [len(ds[n]) for n in ("DIS-TE1", "DIS-TE2", "DIS-VD")] == [3, 2, 1]
        assert ds["DIS-TE2"].root == dis / "DIS-TE2"
        for d in ds.values():
            _assert_paired(d)
        assert {s.name for d in ds.values() for s in d.samples} == {p.stem for p, _ in pairs}

    # one subset folder
    assert detect_layout(dis / "DIS-TE1") == "dis5k"
    (te1,) = open_datasets(dis / "DIS-TE1")
    assert te1.name == "DIS-TE1" and len(te1) == 3
    image, mask = te1.load(2)
    assert image.shape[:2] == mask.shape


# --------------------------------------------------------------------------------------------
# cod10k layout
# --------------------------------------------------------------------------------------------


def test_cod10k_layouts(tmp_path):
    test_sets = tmp_path / "TestDataset"
    for name, n in (("COD10K", 3), ("CAMO", 2)):
        for i in range(n):
            _write_image(test_sets / name / "Imgs" / f"camourflage_{i:05d}.jpg", 10, 7)
            _write_mask(test_sets / name / "GT" / f"camourflage_{i:05d}.png", 10, 7)
    assert detect_layout(test_sets) == "cod10k"
    ds = _by_name(open_datasets(test_sets))
    assert sorted(ds) == ["CAMO", "COD10K"]
    assert (len(ds["COD10K"]), len(ds["CAMO"])) == (3, 2)
    _assert_paired(ds["COD10K"])

    assert [d.name for d in open_datasets(test_sets / "CAMO")] == ["CAMO"]

    v3 = tmp_path / "COD10K-v3" / "Test"
    _write_image(v3 / "Image" / "COD10K-CAM-1-Aquatic-3-Crab-32.jpg", 9, 5)
    _write_mask(v3 / "GT_Object" / "COD10K-CAM-1-Aquatic-3-Crab-32.png", 9, 5)
    _write_mask(v3 / "GT_Edge" / "COD10K-CAM-1-Aquatic-3-Crab-32.png", 9, 5)
    assert detect_layout(v3) == "cod10k"
    (d,) = open_datasets(v3)
    assert d.name == "COD10K-v3-Test"  # a bare split name gets its parent's in front
    assert d[0].mask_path.parent.name == "GT_Object"


# --------------------------------------------------------------------------------------------
# isic layout
# --------------------------------------------------------------------------------------------


def test_isic_2017_layout_pairs_folders_and_ignores_superpixels(tmp_path):
    root = tmp_path / "ISIC2017"
    for split, gt, ids in (
        ("ISIC-2017_Test_v2", "ISIC-2017_Test_v2_Part1_GroundTruth", ("0012086", "0012092")),
        ("ISIC-2017_Training", "ISIC-2017_Training_Part1_GroundTruth", ("0000000", "0000001", "0000002")),
    ):
        for i in ids:
            _write_image(root / f"{split}_Data" / f"ISIC_{i}.jpg", 12, 9)
            _write_mask(root / f"{split}_Data" / f"ISIC_{i}_superpixels.png", 12, 9)
            _write_mask(root / gt / f"ISIC_{i}_segmentation.png", 12, 9)
        (root / f"{split}_Data" / "ATTRIBUTION.txt").write_text("x")
    # an image whose mask is missing, in the test split
    _write_image(root / "ISIC-2017_Test_v2_Data" / "ISIC_0099999.jpg", 12, 9)

    assert detect_layout(root) == "isic"
    assert detect_layout(tmp_path) == "isic"  # one level down
    ds = _by_name(open_datasets(root))
    assert sorted(ds) == ["ISIC-2017_Test_v2", "ISIC-2017_Training"]
    test = ds["ISIC-2017_Test_v2"]
    assert [s.name for s in test.samples] == ["ISIC_0012086", "ISIC_0012092"]
    assert test[0].mask_path.name == "ISIC_0012086_segmentation.png"
    assert test.skipped == [("ISIC-2017_Test_v2_Data/ISIC_0099999.jpg", "no mask")]
    assert len(ds["ISIC-2017_Training"]) == 3 and ds["ISIC-2017_Training"].skipped == []
    for d in ds.values():
        _assert_paired(d, key=lambda stem: stem[: -len("_segmentation")])
        assert not any("superpixels" in str(s.image_path) for s in d.samples)
        assert not any("superpixels" in f for f, _ in d.skipped)


def test_isic_2016_and_2018_naming(tmp_path):
    r16 = tmp_path / "isic2016"
    _write_image(r16 / "ISBI2016_ISIC_Part1_Test_Data" / "ISIC_0000003.jpg", 6, 5)
    _write_mask(r16 / "ISBI2016_ISIC_Part1_Test_GroundTruth" / "ISIC_0000003_Segmentation.png", 6, 5)
    (d16,) = open_datasets(r16, "isic")
    assert d16.name == "ISBI2016_ISIC_Part1_Test"
    assert [s.name for s in d16.samples] == ["ISIC_0000003"]

    r18 = tmp_path / "isic2018"
    _write_image(r18 / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000010.jpg", 6, 5)
    _write_mask(r18 / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000010_segmentation.png", 6, 5)
    _write_image(r18 / "ISIC2018_Task1-2_Validation_Input" / "ISIC_0012255.jpg", 6, 5)
    _write_mask(r18 / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0012255_segmentation.png", 6, 5)
    assert detect_layout(r18) == "isic"
    ds = _by_name(open_datasets(r18))
    assert sorted(ds) == ["ISIC2018_Task1-2_Training", "ISIC2018_Task1-2_Validation"]
    assert ds["ISIC2018_Task1-2_Validation"][0].name == "ISIC_0012255"
    assert ds["ISIC2018_Task1-2_Training"][0].mask_path.parent.name == "ISIC2018_Task1_Training_GroundTruth"


# --------------------------------------------------------------------------------------------
# detection preference, real generic data
# --------------------------------------------------------------------------------------------


def test_detection_prefers_the_most_specific_layout(tmp_path):
    _write_image(tmp_path / "images" / "a.png")
    _write_mask(tmp_path / "masks" / "a.png")
    assert detect_layout(tmp_path) == "generic"
    _write_image(tmp_path / "Imgs" / "a.png")
    _write_mask(tmp_path / "GT" / "a.png")
    assert detect_layout(tmp_path) == "cod10k"
    _write_image(tmp_path / "X-Image" / "a.png")
    _write_mask(tmp_path / "X-Mask" / "a.png")
    assert detect_layout(tmp_path) == "duts"
    _write_image(tmp_path / "ISIC_Test_Data" / "ISIC_1.png")
    _write_mask(tmp_path / "ISIC_Test_GroundTruth" / "ISIC_1_segmentation.png")
    assert detect_layout(tmp_path) == "isic"
    _write_image(tmp_path / "DIS-TE1" / "im" / "a.png")
    _write_mask(tmp_path / "DIS-TE1" / "gt" / "a.png")
    assert detect_layout(tmp_path) == "dis5k"
    # an explicit layout still reads the others
    assert [d.name for d in open_datasets(tmp_path, "duts")] == ["X"]
    assert [d.name for d in open_datasets(tmp_path, "generic")] == [tmp_path.name]


def test_kvasir_jpeg_masks_in_generic_layout(tmp_path):
    pairs = _real_pairs("kvasir-seg", 4)
    root = tmp_path / "kvasir"
    _arrange(pairs, root / "images", root / "masks")
    assert detect_layout(root) == "generic"
    (ds,) = open_datasets(root)
    assert ds.name == "kvasir" and len(ds) == 4 and ds.skipped == []
    _assert_paired(ds)
    image, mask = ds.load(0)
    assert mask.dtype == bool and mask.shape == image.shape[:2]
    gray = np.asarray(Image.open(ds[0].mask_path).convert("L"))
    levels = np.unique(gray)
    assert len(levels) > 2  # JPEG noise: more than the two levels the mask stands for
    np.testing.assert_array_equal(mask, gray >= 128)
    assert 0 < mask.sum() < mask.size


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------


def _blob(h: int = 40, w: int = 50) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - 18) ** 2 / 144 + (xx - 27) ** 2 / 400) <= 1  # an ellipse, ~750 pixels


def test_point_prompt_inside_and_deterministic():
    m = _blob()
    p = make_prompt(m, "point", seed=3, key="img_001")
    assert p.box is None
    assert p.point_coords.shape == (1, 2) and p.point_coords.dtype == np.float64
    assert p.point_labels.tolist() == [1]
    x, y = p.point_coords[0]
    assert x == int(x) and y == int(y)
    assert m[int(y), int(x)]  # (col, row) lands on the foreground
    again = make_prompt(m.copy(), "point", seed=3, key="img_001")
    np.testing.assert_array_equal(again.point_coords, p.point_coords)
    assert again == p and hash(again) == hash(p)

    by_key = {tuple(make_prompt(m, "point", seed=3, key=f"img_{i:03d}").point_coords[0]) for i in range(8)}
    by_seed = {tuple(make_prompt(m, "point", seed=s, key="img_001").point_coords[0]) for s in range(8)}
    assert len(by_key) > 4 and len(by_seed) > 4
    for x, y in by_key | by_seed:
        assert m[int(y), int(x)]


def test_point_prompt_is_uniform_over_the_foreground():
    m = np.zeros((4, 4), bool)
    m[0, 1] = m[2, 3] = True
    picks = [tuple(make_prompt(m, "point", key=str(i)).point_coords[0]) for i in range(200)]
    assert set(picks) == {(1.0, 0.0), (3.0, 2.0)}
    assert 60 < picks.count((1.0, 0.0)) < 140


def test_point_prompt_same_in_a_fresh_process():
    m = _blob()
    here = [make_prompt(m, "point", seed=7, key=k).point_coords[0].tolist() for k in ("a", "ILSVRC_1")]
    code = (
        "import numpy as np\n"
        "from basam.data.prompts import make_prompt\n"
        "yy, xx = np.mgrid[0:40, 0:50]\n"
        "m = ((yy - 18) ** 2 / 144 + (xx - 27) ** 2 / 400) <= 1\n"
        "print([make_prompt(m, 'point', seed=7, key=k).point_coords[0].tolist() for k in ('a', 'ILSVRC_1')])\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = "12345"  # a different str-hash salt must not matter
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(here)


def test_center_prompt_on_rectangles():
    m = np.zeros((20, 20), bool)
    m[5:12, 6:13] = True  # 7x7 square: the centre pixel is the only deepest one
    p = make_prompt(m, "center")
    assert p.point_coords.tolist() == [[9.0, 8.0]] and p.point_labels.tolist() == [1]
    assert p.box is None

    m = np.zeros((20, 20), bool)
    m[5:12, 3:12] = True  # 7 rows x 9 cols: rows 8, cols 6..8 tie at distance 4
    (x, y), = make_prompt(m, "center").point_coords
    assert (x, y) == (6.0, 8.0)  # first of the tie in row-major order, on the middle row

    full = np.ones((5, 5), bool)  # the image edge counts as boundary
    assert make_prompt(full, "center").point_coords.tolist() == [[2.0, 2.0]]


def test_center_prompt_on_an_l_shape():
    m = np.zeros((30, 30), bool)
    m[2:28, 2:8] = True
    m[20:28, 2:28] = True
    (x, y), = make_prompt(m, "center").point_coords
    x, y = int(x), int(y)
    assert m[y, x]
    dist = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    assert dist[y, x] == dist.max()
    # deeper than anywhere in the straight parts (arm: 3, foot: 4): the inner corner of the L
    assert dist[y, x] > 4.0
    assert 20 <= y <= 27 and 2 <= x <= 7
    assert (x, y) == (6, 23)


def test_box_prompt():
    m = np.zeros((20, 30), bool)
    m[3:8, 4:10] = True
    m[12, 25] = True  # a second component counts too
    p = make_prompt(m, "box")
    assert p.point_coords is None and p.point_labels is None
    assert p.box.dtype == np.float64
    assert p.box.tolist() == [4.0, 3.0, 25.0, 12.0]
    m[12, 25] = False
    assert make_prompt(m, "box").box.tolist() == [4.0, 3.0, 9.0, 7.0]


def test_box_plus_point_prompt():
    m = _blob()
    bp = make_prompt(m, "box+point", seed=1, key="k")
    pt = make_prompt(m, "point", seed=1, key="k")
    bx = make_prompt(m, "box")
    np.testing.assert_array_equal(bp.point_coords, pt.point_coords)
    np.testing.assert_array_equal(bp.point_labels, pt.point_labels)
    np.testing.assert_array_equal(bp.box, bx.box)
    (x, y), = bp.point_coords
    x0, y0, x1, y1 = bp.box
    assert x0 <= x <= x1 and y0 <= y <= y1


def test_prompt_on_a_real_mask():
    pairs = _real_pairs("duts-te", 1)
    from basam.io import read_mask

    m = read_mask(pairs[0][1])
    for kind in PROMPT_KINDS:
        p = make_prompt(m, kind, key=pairs[0][0].stem)
        if p.point_coords is not None:
            x, y = p.point_coords[0]
            assert m[int(y), int(x)]
        if p.box is not None:
            rows, cols = np.nonzero(m)
            assert p.box.tolist() == [cols.min(), rows.min(), cols.max(), rows.max()]


def test_prompt_errors():
    with pytest.raises(InputError, match="ground-truth mask is empty"):
        make_prompt(np.zeros((5, 5), bool), "center")
    with pytest.raises(InputError) as e:
        make_prompt(np.ones((5, 5), bool), "scribble")
    for kind in PROMPT_KINDS:
        assert kind in str(e.value)
    with pytest.raises(InputError):
        make_prompt(np.ones((2, 5, 5), bool), "box")
    assert make_prompt(np.ones((3, 3), bool), "box") != make_prompt(np.ones((3, 4), bool), "box")
    assert Prompt(box=np.zeros(4)) != Prompt(point_coords=np.zeros((1, 2)), point_labels=np.ones(1, int))


# --------------------------------------------------------------------------------------------
# Seeded train/test splits
# --------------------------------------------------------------------------------------------


def _generic(root: Path, n: int) -> Path:
    for i in range(n):
        _write_image(root / "images" / f"im{i:03d}.png")
        _write_mask(root / "masks" / f"im{i:03d}.png")
    return root


def test_split_is_deterministic_disjoint_and_covers_all(tmp_path):
    import hashlib

    from basam.data import open_data_spec, parse_data_spec, split_samples
    from basam.data.datasets import SPLIT_SEED, SPLIT_TEST_FRACTION

    root = _generic(tmp_path / "kv", 37)
    whole = open_datasets(root)[0]
    (train,) = open_data_spec(f"{root}:split=train")
    (test,) = open_data_spec(f"{root}:generic:split=test")
    tr, te = [s.name for s in train], [s.name for s in test]
    assert train.name == "kv-train" and test.name == "kv-test"
    assert not set(tr) & set(te)
    assert sorted(tr + te) == [s.name for s in whole]
    assert len(te) == round(SPLIT_TEST_FRACTION * 37) == 7
    assert tr == sorted(tr) and te == sorted(te)
    # The documented rule, recomputed here: sort by stem, order by SHA-256 of the seeded name.
    names = sorted(s.name for s in whole)
    order = sorted(names, key=lambda n: hashlib.sha256(f"basam-split\0{SPLIT_SEED}\0{n}".encode()).digest())
    assert set(te) == set(order[:7])
    # No dependence on the order the names come in, nor on the run.
    assert split_samples(reversed(names)) == split_samples(names) == (tr, te)
    assert parse_data_spec(f"{root}:split=test").split == "test"
    with pytest.raises(InputError, match="unknown split"):
        parse_data_spec(f"{root}:split=val")


def test_split_is_the_same_in_a_fresh_process(tmp_path):
    from basam.data import open_data_spec

    root = _generic(tmp_path / "kv", 20)
    code = "import sys; from basam.data import open_data_spec; print(' '.join(s.name for s in open_data_spec(sys.argv[1])[0]))"
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code, f"{root}:split=test"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [s.name for s in open_data_spec(f"{root}:split=test")[0]]


def test_the_test_part_never_reaches_training(tmp_path):
    from basam.data import open_data_spec
    from basam.train.data import TrainSet, open_weighted

    root = _generic(tmp_path / "kv", 25)
    test_names = {s.name for s in open_data_spec(f"{root}:split=test")[0]}
    with pytest.raises(InputError, match="held out"):
        open_weighted([f"{root}:split=test"])
    datasets, weights = open_weighted([f"{root}:split=train@2"])
    assert [d.name for d in datasets] == ["kv-train"] and weights == [2.0]
    ts = TrainSet(datasets, weights, resolution=64, seed=0)
    seen = {datasets[0][ts.plan.locate(p)[1]].name for p in range(3 * len(ts))}
    assert seen and not seen & test_names
    assert len(seen) == 25 - len(test_names)


def test_evaluate_reads_a_split_and_keys_it(tmp_path):
    from basam.evaluate import _canonical_data

    root = _generic(tmp_path / "kv", 10)
    key = _canonical_data(f"{root}:split=test")
    assert key.endswith(":split=test") and key != _canonical_data(str(root))


@pytest.mark.skipif(not (SHARED_DATA / "kvasir-seg").is_dir(), reason="../shared/data/kvasir-seg absent")
def test_kvasir_split_sizes():
    from basam.data import open_data_spec

    (train,) = open_data_spec(f"{SHARED_DATA / 'kvasir-seg'}:split=train")
    (test,) = open_data_spec(f"{SHARED_DATA / 'kvasir-seg'}:split=test")
    assert (len(train), len(test)) == (640, 160)
