"""basam.AutomaticMaskGenerator == segment_anything.SamAutomaticMaskGenerator, and its folder runner.

Parity: the same random weights (reduced ViT-B, 1024 px, vanilla) in both. Random weights give
masks that cover the whole image, which no filter or NMS would ever separate; so a forward hook,
put on *both* models alike, adds a bump centred on each prompt point to the decoder's low-res
logits (three sizes, one per mask token) and squashes the IoU predictions into (0, 1). The
records then have local masks of many sizes, some near crop edges, some overlapping, and every
stage of the pipeline (IoU and stability filters, boxes, edge filter, NMS within and between
crops, RLE) decides something. Bar: same count, masks matched at IoU >= 0.99, predicted_iou and
stability_score within 1e-4 x scale.
"""

import csv
import json

import numpy as np
import pytest
import torch

import basam
import oracles
from basam.amg import (
    METADATA_COLUMNS,
    AutomaticMaskGenerator,
    generate_crop_boxes,
    remove_small_regions,
    run_folder,
)
from conftest import shared_images

REL_TOL = 1e-4


def scene(h=480, w=640, seed=0):
    """Flat background with a few coloured discs (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40.0)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(8):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(30, 90)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(120, 255, 3)
    img += rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def localise(sam, radii=(6.0, 12.0, 24.0), slope=2.0, texture=5.0):
    """Hook ``sam`` (official or basam) so point prompts give local masks (see the module docstring).

    The prompt encoder's points (B, 1, 2), in the padded input frame, are remembered; the decoder's
    low-res logits (B, 3, h, w) become ``slope * (r_k - distance)`` (low-res px) plus ``texture`` x the
    random logits (irregular edges, varied stability); IoU predictions become ``sigmoid(4 x iou)``.
    """
    seen = {}

    def keep_points(module, args, kwargs):
        points = args[0] if args else kwargs.get("points")  # the official predictor passes keywords
        seen["points"] = None if points is None else points[0]

    def bump(module, args, output):
        low, iou = output[0], output[1]
        pts = seen["points"]
        if pts is None:
            return output
        h, w = low.shape[-2:]
        stride = 1024 / w  # low-res px -> input px (both models encode at 1024 here)
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        p = pts[:, 0, :].float() / stride - 0.5  # (B, 2) in low-res pixel centres
        d = ((xx[None] - p[:, 0, None, None]) ** 2 + (yy[None] - p[:, 1, None, None]) ** 2).sqrt()  # (B, h, w)
        r = torch.tensor(radii[: low.shape[1]])[None, :, None, None]
        new = slope * (r - d[:, None]) + texture * low
        return (new, torch.sigmoid(4 * iou), *output[2:])

    sam.prompt_encoder.register_forward_pre_hook(keep_points, with_kwargs=True)
    sam.mask_decoder.register_forward_hook(bump)
    return sam


@pytest.fixture(scope="module")
def vit_b(tmp_path_factory):
    """(official, basam) reduced ViT-B with the same random weights, both localised."""
    name, arch = "sam_vit_b", oracles.REDUCED["sam_vit_b"]
    official, ckpt = oracles.official_checkpoint(name, arch, tmp_path_factory.mktemp("vit_b"), seed=1)
    ours = basam.load_model(name, checkpoint=ckpt, architecture=arch)
    return localise(official), localise(ours)


def mask_of(seg):
    from pycocotools import mask as mask_utils

    if isinstance(seg, np.ndarray):
        return seg
    if isinstance(seg["counts"], list):
        h, w = seg["size"]
        return mask_utils.decode(mask_utils.frPyObjects(seg, h, w)).astype(bool)
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def assert_same_records(ours, theirs, what):
    assert len(ours) == len(theirs), f"{what}: {len(ours)} records vs official {len(theirs)}"
    assert len(theirs) > 0, f"{what}: the official generator produced nothing; the test checks nothing"
    iou_scale = max(abs(r["predicted_iou"]) for r in theirs)
    stab_scale = max(abs(r["stability_score"]) for r in theirs)
    free = list(range(len(ours)))
    for k, t in enumerate(theirs):
        tm = mask_of(t["segmentation"])
        # best match among ours from the same point and crop
        cands = [j for j in free if ours[j]["point_coords"] == t["point_coords"] and ours[j]["crop_box"] == t["crop_box"]]
        assert cands, f"{what}: official record {k} (point {t['point_coords']}) has no counterpart"
        scores = [iou(mask_of(ours[j]["segmentation"]), tm) for j in cands]
        j = cands[int(np.argmax(scores))]
        free.remove(j)
        o = ours[j]
        assert max(scores) >= 0.99, f"{what}: record {k} mask IoU {max(scores):.4f} < 0.99"
        assert abs(o["predicted_iou"] - t["predicted_iou"]) <= REL_TOL * iou_scale, f"{what}: record {k} predicted_iou"
        assert abs(o["stability_score"] - t["stability_score"]) <= REL_TOL * stab_scale, f"{what}: record {k} stability_score"
        assert abs(o["area"] - t["area"]) <= 0.01 * max(t["area"], 1), f"{what}: record {k} area {o['area']} vs {t['area']}"
        assert np.allclose(o["bbox"], t["bbox"], atol=1), f"{what}: record {k} bbox {o['bbox']} vs {t['bbox']}"
    return len(theirs)


PARITY_CASES = {
    # crops off: 16 points, every filter active
    "crops_off": dict(points_per_side=4, pred_iou_thresh=0.3, stability_score_thresh=0.6, box_nms_thresh=0.5),
    # crops on: the whole image (3x3 points) + 4 crops (1 point each), NMS within and between crops
    "crops_on": dict(points_per_side=3, crop_n_layers=1, crop_n_points_downscale_factor=2, pred_iou_thresh=0.3,
                     stability_score_thresh=0.6, box_nms_thresh=0.5, crop_nms_thresh=0.5),
}
# Ours only: decoder sub-batches of 3 points and upsampling 5 masks at a time must not change anything.
OURS_ONLY = {"crops_off": {}, "crops_on": dict(max_decode_pixels=3 * 256 * 256 * 16, upsample_chunk=5)}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_with_official(vit_b, case):
    from segment_anything import SamAutomaticMaskGenerator

    official, ours = vit_b
    kw = PARITY_CASES[case]
    image = scene()
    with torch.no_grad():
        theirs = SamAutomaticMaskGenerator(official, **kw).generate(image)
    mine = AutomaticMaskGenerator(ours, **kw, **OURS_ONLY[case]).generate(image)
    n = assert_same_records(mine, theirs, case)
    if case == "crops_on":
        assert len({tuple(r["crop_box"]) for r in theirs}) > 1, "no record came from a crop: the crop path is untested"
    assert n >= 3
    # The exact path also keeps the official order (NMS order, best first).
    assert [r["point_coords"] for r in mine] == [r["point_coords"] for r in theirs]
    if case == "crops_off":
        # mask_scoring="lowres" is not the official order: its records are close, not equal.
        low = AutomaticMaskGenerator(ours, mask_scoring="lowres", **kw).generate(image)
        matched = sum(max((iou(mask_of(t["segmentation"]), mask_of(b["segmentation"])) for b in low), default=0) >= 0.9 for t in theirs)
        assert matched >= 0.7 * len(theirs), f"lowres recovered {matched} of {len(theirs)} official records"


def test_parity_min_mask_region_area(vit_b):
    """Holes and islands under 400 px removed as the official (OpenCV) code does, NMS rerun."""
    pytest.importorskip("cv2", reason="the official small-region removal needs OpenCV")
    from scipy import ndimage
    from segment_anything import SamAutomaticMaskGenerator

    official, ours = vit_b
    kw = dict(points_per_side=3, pred_iou_thresh=0.3, stability_score_thresh=0.6, box_nms_thresh=0.5, min_mask_region_area=400)
    image = scene(seed=3)
    with torch.no_grad():
        theirs = SamAutomaticMaskGenerator(official, **kw).generate(image)
    mine = AutomaticMaskGenerator(ours, **kw).generate(image)
    assert_same_records(mine, theirs, "min_mask_region_area")
    eight = np.ones((3, 3), bool)
    for r in mine:
        m = r["segmentation"]
        labels, n = ndimage.label(m, structure=eight)
        assert n <= 1 or np.bincount(labels.ravel())[1:].min() >= 400, "a small island survived"
        holes, nh = ndimage.label(~m, structure=eight)
        assert nh == 0 or np.bincount(holes.ravel())[1:].min() >= 400, "a small hole survived"


# --- output modes, regions, HQ, real model --------------------------------------------------


def test_output_modes_round_trip(vit_b):
    from pycocotools import mask as mask_utils

    _, ours = vit_b
    kw = dict(points_per_side=2, pred_iou_thresh=0.3, stability_score_thresh=0.6)
    image = scene(h=300, w=400, seed=5)
    binary = AutomaticMaskGenerator(ours, output_mode="binary_mask", **kw).generate(image)
    assert binary
    for mode in ("uncompressed_rle", "coco_rle"):
        recs = AutomaticMaskGenerator(ours, output_mode=mode, **kw).generate(image)
        assert len(recs) == len(binary)
        for r, b in zip(recs, binary):
            seg = r["segmentation"]
            assert seg["size"] == [300, 400]
            if mode == "uncompressed_rle":
                assert all(isinstance(c, int) for c in seg["counts"]) and sum(seg["counts"]) == 300 * 400
                rle = mask_utils.frPyObjects(seg, 300, 400)
            else:
                assert isinstance(seg["counts"], str)
                json.dumps(seg)  # serialisable, as the official coco_rle is
                rle = {"size": seg["size"], "counts": seg["counts"].encode()}
            m = mask_utils.decode(rle).astype(bool)
            assert np.array_equal(m, b["segmentation"])
            assert r["area"] == int(m.sum()) == b["area"]
    for b in binary:
        assert b["segmentation"].dtype == np.bool_ and b["segmentation"].shape == (300, 400)
        x, y, w, h = b["bbox"]
        ys, xs = np.nonzero(b["segmentation"])
        assert [x, y, x + w, y + h] == [xs.min(), ys.min(), xs.max(), ys.max()]  # the official inclusive-end XYWH


def test_remove_small_regions():
    m = np.zeros((60, 60), bool)
    m[10:50, 10:50] = True
    m[20:23, 20:23] = False  # a 9 px hole
    m[55:57, 55:57] = True  # a 4 px island
    filled, changed = remove_small_regions(m, 20, "holes")
    assert changed and filled[20:23, 20:23].all() and filled[55:57, 55:57].all()
    cleaned, changed = remove_small_regions(filled, 20, "islands")
    assert changed and not cleaned[55:57, 55:57].any() and cleaned[10:50, 10:50].all()
    same, changed = remove_small_regions(cleaned, 20, "islands")
    assert not changed and np.array_equal(same, cleaned)
    # every island small: the largest stays
    tiny = np.zeros((30, 30), bool)
    tiny[2:4, 2:4] = True
    tiny[10:13, 10:13] = True
    kept, _ = remove_small_regions(tiny, 100, "islands")
    assert kept[10:13, 10:13].all() and not kept[2:4, 2:4].any()
    # diagonal neighbours are one component (8-connectivity, as OpenCV's)
    diag = np.zeros((10, 10), bool)
    diag[2, 2] = diag[3, 3] = True
    kept, changed = remove_small_regions(diag, 2, "islands")
    assert not changed


def test_hq_token_only(tmp_path):
    from segment_anything_hq import SamAutomaticMaskGenerator as HQGenerator

    name, arch = "sam_hq_vit_b", oracles.REDUCED["sam_hq_vit_b"]
    official, ckpt = oracles.official_checkpoint(name, arch, tmp_path, seed=4)
    ours = basam.load_model(name, checkpoint=ckpt, architecture=arch)
    localise(official), localise(ours)
    kw = dict(points_per_side=3, pred_iou_thresh=0.3, stability_score_thresh=0.6, box_nms_thresh=0.5)
    image = scene(seed=6)
    with torch.no_grad():
        theirs = HQGenerator(official, **kw).generate(image)  # the official HQ AMG: hq_token_only=False
    assert_same_records(AutomaticMaskGenerator(ours, hq_token_only=False, **kw).generate(image), theirs, "HQ add")
    only = AutomaticMaskGenerator(ours, hq_token_only=True, **kw).generate(image)
    assert only and (len(only) != len(theirs) or any(iou(a["segmentation"], mask_of(b["segmentation"])) < 0.999 for a, b in zip(only, theirs)))
    with pytest.raises(basam.InputError, match="hq_token_only"):
        AutomaticMaskGenerator(basam.load_model("basam_tiny"), hq_token_only=True)


def test_basam_tiny_real_image():
    from basam.io import read_image

    path = shared_images("duts-te", 1)[0]
    image = read_image(path)
    model = basam.load_model("basam_tiny")
    # basam_tiny's IoU head is not calibrated like SAM's (its predictions stay around 0.4-0.7), so the
    # official thresholds (0.88 / 0.95) keep nothing on DUTS images: lower ones are used here.
    recs = AutomaticMaskGenerator(model, points_per_side=8, pred_iou_thresh=0.3, stability_score_thresh=0.5).generate(image)
    assert recs, f"basam_tiny found no mask in {path.name}"
    H, W = image.shape[:2]
    for r in recs:
        assert r["segmentation"].shape == (H, W) and r["area"] == int(r["segmentation"].sum()) > 0
        assert r["predicted_iou"] > 0.3 and r["stability_score"] >= 0.5
        assert r["crop_box"] == [0, 0, W, H]
    # native resolution: the whole image encoded at its own longest side
    g = AutomaticMaskGenerator(model, resolution="native", points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.5)
    native = g.generate(image)
    assert g.predictor_for(image.shape[:2]).resolution == max(H, W)
    assert all(r["segmentation"].shape == (H, W) for r in native)


@pytest.mark.parametrize("preset", ["nsf", "basam"])
def test_attention_presets_run(preset):
    model = basam.load_model("basam_tiny", attention=preset)
    image = scene(h=200, w=260, seed=7)
    recs = AutomaticMaskGenerator(model, resolution=384, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0).generate(image)
    assert all(r["segmentation"].shape == (200, 260) for r in recs)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((20, 20, 3), np.float32), np.zeros((20, 20), np.uint8), np.zeros((20, 20, 4), np.uint8), np.zeros((0, 5, 3), np.uint8), [[0, 0, 0]]],
    ids=["float", "gray", "rgba", "empty", "list"],
)
def test_bad_image(bad):
    g = AutomaticMaskGenerator(basam.load_model("basam_tiny"), points_per_side=2)
    with pytest.raises(basam.InputError) as e:
        g.generate(bad)
    assert "\n" not in str(e.value)


def test_bad_arguments():
    model = basam.load_model("basam_tiny")
    for kw in (dict(points_per_side=None), dict(point_grids=[np.zeros((4, 2))]), dict(output_mode="png"),
               dict(resolution=10), dict(points_per_batch=0), dict(mask_scoring="fast")):
        with pytest.raises(basam.InputError):
            AutomaticMaskGenerator(model, **kw)


def test_crop_boxes_match_official():
    from segment_anything.utils.amg import generate_crop_boxes as official

    for size in ((480, 640), (1001, 333)):
        for layers in (0, 1, 2):
            assert generate_crop_boxes(size, layers, 512 / 1500) == official(size, layers, 512 / 1500)


def test_exported():
    assert basam.AutomaticMaskGenerator is AutomaticMaskGenerator


# --- folder runner ------------------------------------------------------------------------------


class FakeGenerator:
    """Two square masks per image, fast (the runner is what is under test)."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on

    def generate(self, image):
        self.calls.append(image.shape)
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise KeyboardInterrupt  # a run killed mid-way
        H, W = image.shape[:2]
        recs = []
        for k, (x0, y0, s) in enumerate(((1, 2, 5), (6, 4, 3))):
            m = np.zeros((H, W), bool)
            m[y0 : y0 + s, x0 : x0 + s] = True
            recs.append(dict(segmentation=m, area=int(m.sum()), bbox=[x0, y0, s - 1, s - 1], predicted_iou=0.9 - k / 10,
                             point_coords=[[x0 + 1.0, y0 + 1.0]], stability_score=0.97, crop_box=[0, 0, W, H]))
        return recs


def _folder(tmp_path, n=3):
    from PIL import Image

    d = tmp_path / "images"
    d.mkdir()
    for i in range(n):
        Image.fromarray(np.full((12, 16, 3), 30 * i, np.uint8)).save(d / f"img{i}.png")
    return d


def test_run_folder_png(tmp_path):
    from PIL import Image

    images = _folder(tmp_path)
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    res = run_folder(FakeGenerator(), images, out, progress=False)
    assert res["done"] == ["img0", "img1", "img2"] and list(res["failed"]) == ["broken.jpg"]
    assert "\n" not in res["failed"]["broken.jpg"]
    assert not (out / "broken").exists()
    for stem in res["done"]:
        d = out / stem
        assert sorted(p.name for p in d.iterdir()) == ["0.png", "1.png", "metadata.csv", "overlay.png"]
        m0 = np.array(Image.open(d / "0.png"))
        assert m0.shape == (12, 16) and set(np.unique(m0)) == {0, 255} and (m0 == 255).sum() == 25
        rows = list(csv.reader((d / "metadata.csv").open()))
        assert tuple(rows[0]) == METADATA_COLUMNS and len(rows) == 3
        assert rows[1][:6] == ["0", "25", "1", "2", "4", "4"]
        ov = np.array(Image.open(d / "overlay.png"))
        assert ov.shape == (12, 16, 3)
        assert not np.array_equal(ov[3, 2], ov[5, 7])  # each mask its own colour
    # resume: nothing is redone
    gen = FakeGenerator()
    again = run_folder(gen, images, out, progress=False)
    assert again["skipped"] == ["img0", "img1", "img2"] and gen.calls == []


def test_run_folder_killed_leaves_no_partial_result(tmp_path):
    images = _folder(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_folder(FakeGenerator(fail_on=2), images, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["img0"]  # no temp folder, no half-written img1
    # a SIGKILL leaves the hidden temp folder behind: the next run removes it and redoes the image
    stale = out / ".amg-tmp-img1-abcd1234"
    stale.mkdir()
    (stale / "0.png").write_bytes(b"half")
    res = run_folder(FakeGenerator(), images, out, progress=False)
    assert res["skipped"] == ["img0"] and res["done"] == ["img1", "img2"]
    assert sorted(p.name for p in out.iterdir()) == ["img0", "img1", "img2"]


def test_run_folder_coco_and_shards(tmp_path):
    from pycocotools import mask as mask_utils

    images = _folder(tmp_path, n=5)
    out = tmp_path / "out"
    done = []
    for rank in range(2):
        res = run_folder(FakeGenerator(), images, out, output_format="coco", overlay=False, progress=False, rank=rank, world_size=2)
        done.append(res["done"])
    assert done == [["img0", "img2", "img4"], ["img1", "img3"]]
    ids = set()
    for rank in range(2):
        doc = json.loads((out / f"annotations.{rank}-of-2.json").read_text())
        assert len(doc["annotations"]) == 2 * len(doc["images"])
        ids |= {im["id"] for im in doc["images"]}
        for a in doc["annotations"]:
            m = mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
            assert m.sum() == a["area"]
    assert ids == set(range(5))
    assert not (out / "img0" / "overlay.png").exists()
    with pytest.raises(basam.InputError):
        run_folder(FakeGenerator(), images, out, rank=2, world_size=2)


def test_run_folder_with_real_generator(tmp_path):
    images = _folder(tmp_path, n=1)
    g = AutomaticMaskGenerator(basam.load_model("basam_tiny"), points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    res = run_folder(g, images, tmp_path / "out", progress=False)
    assert res["done"] == ["img0"]
    rows = list(csv.reader((tmp_path / "out" / "img0" / "metadata.csv").open()))
    assert len(rows) - 1 == len([p for p in (tmp_path / "out" / "img0").glob("[0-9]*.png")])


def test_crop_pyramid_with_nothing_kept_returns_no_records():
    """Where no crop keeps any mask, the result is an empty list (the official generator raises
    IndexError in box_area on the empty crop_boxes there)."""
    model = basam.load_model("basam_tiny", progress=False)
    image = np.zeros((96, 128, 3), np.uint8)
    image[20:70, 30:90] = 200
    gen = AutomaticMaskGenerator(model, points_per_side=4, crop_n_layers=1, pred_iou_thresh=1.0,
                                 stability_score_thresh=1.0)
    with torch.inference_mode():
        assert gen.generate(image) == []
