"""COCO box-prompted instance segmentation (Table 3): scoring, evaluation loop, dataset builder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from basam.coco import (
    STAT_KEYS,
    encode_masks,
    evaluate_coco,
    masks_to_coco,
    score_results,
    write_results,
)
from basam.errors import InputError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def box_mask(h, w, x, y, bw, bh):
    m = np.zeros((h, w), dtype=bool)
    m[y : y + bh, x : x + bw] = True
    return m


def gt_ann(ann_id, image_id, mask, category_id=1):
    ys, xs = np.nonzero(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": encode_masks(mask[None])[0],
        "area": int(mask.sum()),
        "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)],
        "iscrowd": 0,
    }


def result(image_id, mask, score, category_id=1):
    return {"image_id": image_id, "category_id": category_id, "segmentation": encode_masks(mask[None])[0], "score": score}


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


class IdentityTransform:
    def apply_boxes_torch(self, boxes, original_size):
        return boxes


class FakePredictor:
    """The interface evaluate_coco uses; prompts are in the original frame (identity transform).

    ``mask_fn(image, box_xyxy) -> HxW bool`` makes the mask for one box.
    """

    def __init__(self, mask_fn):
        self.mask_fn = mask_fn
        self.transform = IdentityTransform()
        self.device = torch.device("cpu")
        self.original_size = None
        self.n_images_set = 0
        self.boxes = []  # every box prompted, xyxy
        self.calls = []  # (batch size, extra kwargs) per predict_torch call

    def set_image(self, image):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.image = image
        self.original_size = image.shape[:2]
        self.n_images_set += 1

    def predict_torch(self, point_coords, point_labels, boxes=None, multimask_output=True, **kwargs):
        assert point_coords is None and point_labels is None and multimask_output is False
        self.calls.append((len(boxes), kwargs))
        masks = []
        for b in boxes.tolist():
            self.boxes.append(b)
            masks.append(torch.from_numpy(np.asarray(self.mask_fn(self.image, b), dtype=bool)))
        masks = torch.stack(masks)[:, None]
        return masks, torch.ones(len(masks), 1), None


def write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


H, W = 48, 64


@pytest.fixture
def tiny_set(tmp_path):
    """2 images on disk (pixel value = image id, so a fake predictor knows the image), 4 instances,
    one of them a polygon; returns (images_dir, annotations path, dataset, {image_id: [(xyxy, mask)]})."""
    from pycocotools import mask as mask_utils

    images_dir = tmp_path / "images"
    images_dir.mkdir()
    masks = {
        1: [box_mask(H, W, 2, 3, 10, 12), box_mask(H, W, 30, 10, 20, 25)],
        2: [box_mask(H, W, 5, 5, 40, 40)],
    }
    anns = []
    for image_id, ms in masks.items():
        for m in ms:
            anns.append(gt_ann(len(anns) + 1, image_id, m))
    # A polygon annotation (a triangle) on image 2: its GT mask is COCO's rasterisation.
    poly = [50.0, 2.0, 62.0, 2.0, 56.0, 20.0]
    rle = mask_utils.merge(mask_utils.frPyObjects([poly], H, W))
    anns.append({"id": len(anns) + 1, "image_id": 2, "category_id": 1, "segmentation": [poly],
                 "area": float(mask_utils.area(rle)), "bbox": [50.0, 2.0, 12.0, 18.0], "iscrowd": 0})
    data = {
        "images": [{"id": i, "file_name": f"img{i}.png", "width": W, "height": H} for i in (1, 2)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}],
    }
    for i in (1, 2):
        write_png(images_dir / f"img{i}.png", np.full((H, W, 3), i, dtype=np.uint8))
    ann_path = tmp_path / "instances.json"
    ann_path.write_text(json.dumps(data))

    by_image = {1: [], 2: []}
    for a in anns:
        x, y, w, h = a["bbox"]
        seg = a["segmentation"]
        rles = mask_utils.frPyObjects(seg, H, W) if isinstance(seg, list) else [seg]
        m = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
        by_image[a["image_id"]].append(([x, y, x + w, y + h], m))
    return images_dir, ann_path, data, by_image


def oracle_predictor(by_image):
    """Returns the GT mask of the annotation whose box was prompted."""

    def mask_fn(image, box):
        image_id = int(image[0, 0, 0])
        for xyxy, m in by_image[image_id]:
            if np.allclose(xyxy, box, atol=1e-4):
                return m
        raise AssertionError(f"box {box} is not a GT box of image {image_id}")

    return FakePredictor(mask_fn)


# --------------------------------------------------------------------------------------------
# 1. Scoring, computed by hand
# --------------------------------------------------------------------------------------------
#
# COCOeval (segm) in brief: for each IoU threshold t in {0.50, 0.55, ..., 0.95} and each category,
# detections (all images together) are sorted by score and greedily matched to an unmatched GT
# with IoU >= t. With the cumulative TP / FP counts, recall = TP / #GT and precision =
# TP / (TP + FP); precision is made monotone (p[i] = max(p[i:])), then read at the 101 recall
# points r = 0, 0.01, ..., 1.00 (the first detection whose recall >= r; 0 where recall never gets
# there). AP at t = mean of those 101 values; AP = mean over the 10 thresholds; AP50 / AP75 are
# t = 0.50 / 0.75. APs / APm / APl restrict GT (and unmatched detections) to area < 32^2,
# 32^2..96^2, > 96^2; -1 where a range holds no GT.
#
# All masks below are axis-aligned rectangles, so IoUs are exact ratios of pixel counts.

CANVAS = (64, 64)


def _gt(*masks_per_image):
    anns = []
    for image_id, ms in enumerate(masks_per_image, start=1):
        for m in ms:
            anns.append(gt_ann(len(anns) + 1, image_id, m))
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": CANVAS[1], "height": CANVAS[0]}
                   for i in range(1, len(masks_per_image) + 1)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}],
    }


A = box_mask(*CANVAS, 2, 2, 10, 10)  # 100 px: small
B = box_mask(*CANVAS, 20, 20, 10, 10)  # 100 px: small
FP = box_mask(*CANVAS, 40, 2, 8, 8)  # overlaps nothing
A64 = box_mask(*CANVAS, 2, 2, 8, 8)  # inside A: IoU(A64, A) = 64 / 100 = 0.64
M = box_mask(*CANVAS, 20, 20, 40, 40)  # 1600 px: medium (1024 <= area < 9216)


def test_perfect_masks_give_ap_1():
    # Every GT found with IoU 1 before any FP: precision 1 at every recall point, every t.
    gt = _gt([A], [B])
    s = score_results(gt, [result(1, A, 0.9), result(2, B, 0.8)])
    assert s["AP"] == pytest.approx(1.0, abs=1e-12)
    assert s["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert s["AP75"] == pytest.approx(1.0, abs=1e-12)
    assert s["APs"] == pytest.approx(1.0, abs=1e-12)
    assert s["APm"] == -1.0 and s["APl"] == -1.0  # no medium / large GT: COCO's 'no data'


def test_one_of_two_missed_gives_51_over_101():
    # 2 GT, one detection = A. Recall reaches 0.5 with precision 1 and never more. The recall
    # points 0, 0.01, ..., 0.50 (51 of 101) read precision 1, the other 50 read 0:
    # AP = 51/101 = 0.50495..., the same at every t (IoU is 1).
    gt = _gt([A], [B])
    s = score_results(gt, [result(1, A, 0.9)])
    for k in ("AP", "AP50", "AP75", "APs"):
        assert s[k] == pytest.approx(51 / 101, abs=1e-9), k


def test_false_positive_between_two_hits():
    # Sorted: A (0.9, TP), FP (0.8), B (0.7, TP). Cumulative: recall 0.5, 0.5, 1.0;
    # precision 1, 1/2, 2/3 -> monotone 1, 2/3, 2/3. Recall points 0..0.50 (51) read 1,
    # 0.51..1.00 (50) read 2/3: AP = (51 + 50 * 2/3) / 101 = 253/303 = 0.83498..., at every t.
    gt = _gt([A], [B])
    s = score_results(gt, [result(1, A, 0.9), result(1, FP, 0.8), result(2, B, 0.7)])
    for k in ("AP", "AP50", "AP75"):
        assert s[k] == pytest.approx(253 / 303, abs=1e-9), k


def test_false_positive_after_full_recall_costs_nothing():
    # Sorted: A (TP), B (TP), FP. Precision 1, 1, 2/3 at recall 0.5, 1, 1; monotone: 1, 1, 2/3.
    # Every recall point up to 1.0 is first reached with precision 1: AP = 1.
    gt = _gt([A], [B])
    s = score_results(gt, [result(1, A, 0.9), result(2, B, 0.8), result(1, FP, 0.1)])
    assert s["AP"] == pytest.approx(1.0, abs=1e-12)


def test_iou_between_thresholds():
    # One GT A, one detection with IoU 0.64: a hit at t = 0.50, 0.55, 0.60 (AP 1 each) and a
    # miss (recall 0, AP 0) at the 7 thresholds 0.65..0.95: AP = 3/10, AP50 = 1, AP75 = 0.
    s = score_results(_gt([A]), [result(1, A64, 0.9)])
    assert s["AP"] == pytest.approx(0.3, abs=1e-9)
    assert s["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert s["AP75"] == pytest.approx(0.0, abs=1e-12)

    # With B added (found exactly, score 0.8), at t >= 0.65 the list is FP (0.9), TP (0.8):
    # precision 0, 1/2 at recall 0, 0.5 -> monotone 1/2, 1/2: 51 points read 1/2, AP_t = 25.5/101.
    # At t <= 0.60 both are hits: AP_t = 1. AP = (3 * 1 + 7 * 25.5/101) / 10; AP75 = 25.5/101.
    s = score_results(_gt([A], [B]), [result(1, A64, 0.9), result(2, B, 0.8)])
    assert s["AP"] == pytest.approx((3 + 7 * 25.5 / 101) / 10, abs=1e-9)
    assert s["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert s["AP75"] == pytest.approx(25.5 / 101, abs=1e-9)


def test_area_ranges():
    # GT: A (small) on image 1, M (medium) on image 2; only A is found.
    # All areas: 1 of 2 found -> 51/101. Small: A is the only GT in range and is found -> 1.
    # Medium: M is the only GT in range and is missed (the hit on A matches a GT outside the range
    # and is ignored) -> 0. Large: no GT -> -1.
    s = score_results(_gt([A], [M]), [result(1, A, 0.9)])
    assert s["AP"] == pytest.approx(51 / 101, abs=1e-9)
    assert s["APs"] == pytest.approx(1.0, abs=1e-12)
    assert s["APm"] == pytest.approx(0.0, abs=1e-12)
    assert s["APl"] == -1.0


def test_no_results_scores_zero_and_results_are_not_modified():
    gt = _gt([A], [B])
    assert score_results(gt, [])["AP"] == 0.0
    r = [result(1, A, 0.9)]
    before = json.dumps(r, sort_keys=True)
    score_results(gt, r)
    assert json.dumps(r, sort_keys=True) == before  # loadRes adds keys: must work on copies


# --------------------------------------------------------------------------------------------
# 2. Oracle / empty predictors end to end
# --------------------------------------------------------------------------------------------


def test_oracle_predictor_gives_ap_1(tiny_set):
    images_dir, ann_path, data, by_image = tiny_set
    pred = oracle_predictor(by_image)
    out = evaluate_coco(pred, images_dir, ann_path, batch_boxes=2, progress=False)
    for k in ("AP", "AP50", "AP75"):
        assert abs(out[k] - 1.0) <= 1e-9, (k, out)
    assert out["n_images"] == 2 and out["n_instances"] == 4 and out["skipped"] == []
    assert pred.n_images_set == 2  # each image encoded once
    assert [n for n, _ in pred.calls] == [2, 2]  # image 1: 2 boxes; image 2: 2 boxes (batches of 2)
    assert all(kw == {} for _, kw in pred.calls)  # hq_token_only=None is not passed on


def test_empty_masks_give_ap_0(tiny_set, tmp_path):
    images_dir, ann_path, _, _ = tiny_set
    pred = FakePredictor(lambda image, box: np.zeros(image.shape[:2], dtype=bool))
    res_path = tmp_path / "results.json"
    out = evaluate_coco(pred, images_dir, ann_path, batch_boxes=64, progress=False, hq_token_only=True,
                        results_path=res_path)
    assert out["AP"] == 0.0 and out["AP50"] == 0.0 and out["AP75"] == 0.0
    assert out["n_instances"] == 4
    assert all(kw == {"hq_token_only": True} for _, kw in pred.calls)
    written = json.loads(res_path.read_text())
    assert len(written) == 4 and all(isinstance(r["segmentation"]["counts"], str) for r in written)
    assert {r["score"] for r in written} == {1.0}


def test_crowd_boxes_are_not_prompted_and_max_images(tiny_set):
    images_dir, ann_path, data, by_image = tiny_set
    data["annotations"][0]["iscrowd"] = 1
    ann_path.write_text(json.dumps(data))
    pred = oracle_predictor(by_image)
    out = evaluate_coco(pred, images_dir, ann_path, progress=False)
    assert out["n_instances"] == 3
    assert out["AP"] == pytest.approx(1.0, abs=1e-9)  # the crowd region is ignored, not missed
    pred = oracle_predictor(by_image)
    out = evaluate_coco(pred, images_dir, ann_path, max_images=1, progress=False)
    assert out["n_images"] == 1 and out["n_instances"] == 1 and pred.n_images_set == 1


# --------------------------------------------------------------------------------------------
# 3. Real data: masks_to_coco on DUTS-TE + a real (random-weight, reduced) Predictor
# --------------------------------------------------------------------------------------------


def _duts_pairs(n):
    d = SHARED_DATA / "duts-te"
    if not (d / "images").is_dir() or not (d / "masks").is_dir():
        pytest.skip(f"real data not found at {d} (../shared/data is absent)")
    pairs = []
    for img in sorted((d / "images").iterdir()):
        mask = d / "masks" / (img.stem + ".png")
        if mask.is_file():
            pairs.append((img, mask))
        if len(pairs) == n:
            break
    if len(pairs) < n:
        pytest.skip(f"fewer than {n} image/mask pairs in {d}")
    return pairs


def test_masks_to_coco_and_real_predictor(tmp_path):
    from pycocotools import mask as mask_utils
    from scipy import ndimage

    import oracles
    from basam import Predictor
    from basam.models.registry import create_model

    pairs = _duts_pairs(6)
    out_json = tmp_path / "duts6.json"
    data = masks_to_coco(pairs, out_json, category_name="salient", min_area=16)
    assert json.loads(out_json.read_text()) == data
    assert [im["file_name"] for im in data["images"]] == [p[0].name for p in pairs]

    # Independent count: PIL + numpy threshold, 8-connected labelling, components >= 16 px.
    expected = 0
    for image_id, (img_path, mask_path) in enumerate(pairs, start=1):
        with Image.open(img_path) as im:
            w, h = im.size
        entry = data["images"][image_id - 1]
        assert (entry["width"], entry["height"]) == (w, h)
        fg = np.asarray(Image.open(mask_path).convert("L")) >= 128
        labels, n = ndimage.label(fg, structure=ndimage.generate_binary_structure(2, 2))
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= 16) + 1
        expected += len(keep)
        # The instances of this image, decoded, are exactly the kept components.
        anns = [a for a in data["annotations"] if a["image_id"] == image_id]
        union = np.zeros((h, w), dtype=np.int32)
        for a in anns:
            m = mask_utils.decode(a["segmentation"]).astype(bool)
            assert a["area"] == int(m.sum()) >= 16 and a["iscrowd"] == 0 and a["category_id"] == 1
            assert a["bbox"] == [int(v) for v in mask_utils.toBbox(a["segmentation"])]
            union += m
        assert union.max() <= 1
        assert np.array_equal(union.astype(bool), np.isin(labels, keep))
    assert len(data["annotations"]) == expected > 0

    model = create_model("mobile_sam", **oracles.REDUCED["mobile_sam"]).eval()
    predictor = Predictor(model, resolution=256)
    images_dir = pairs[0][0].parent
    out = evaluate_coco(predictor, images_dir, out_json, batch_boxes=4, progress=False)
    for k in STAT_KEYS:
        assert isinstance(out[k], float)
        assert out[k] == -1.0 or 0.0 <= out[k] <= 1.0, (k, out[k])
    assert out["n_images"] == 6 and out["skipped"] == []
    assert out["n_instances"] == expected


# --------------------------------------------------------------------------------------------
# 4. Detections instead of GT boxes
# --------------------------------------------------------------------------------------------


def test_detections_file(tiny_set, tmp_path):
    images_dir, ann_path, _, _ = tiny_set
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [30, 10, 20, 25], "score": 0.2},  # below 0.5
        {"image_id": 1, "category_id": 1, "bbox": [50, 40, 30, 30], "score": 0.6},  # clipped to 64x48
        {"image_id": 2, "category_id": 1, "bbox": [5, 5, 0, 10], "score": 0.99},  # w = 0: dropped
        {"image_id": 2, "category_id": 1, "bbox": [5.5, 5.25, 40, 40], "score": 0.7},
    ]
    det_path = tmp_path / "dets.json"
    det_path.write_text(json.dumps(dets))
    pred = FakePredictor(lambda image, box: box_mask(H, W, int(box[0]), int(box[1]),
                                                     int(box[2] - box[0]), int(box[3] - box[1])))
    res_path = tmp_path / "res.json"
    out = evaluate_coco(pred, images_dir, ann_path, det_path, score_threshold=0.5, batch_boxes=1,
                        progress=False, results_path=res_path)
    assert out["n_instances"] == 3 and len(pred.boxes) == 3
    assert out["below_threshold"] == 1 and out["dropped_boxes"] == 1
    # xywh -> xyxy, clipped to the image
    assert pred.boxes == [[2, 3, 12, 15], [50, 40, 64, 48], [5.5, 5.25, 45.5, 45.25]]
    assert [n for n, _ in pred.calls] == [1, 1, 1]
    written = json.loads(res_path.read_text())
    assert [(r["image_id"], r["score"]) for r in written] == [(1, 0.9), (1, 0.6), (2, 0.7)]
    for k in STAT_KEYS:
        assert out[k] == -1.0 or 0.0 <= out[k] <= 1.0


# --------------------------------------------------------------------------------------------
# 5. Bad input
# --------------------------------------------------------------------------------------------


def test_missing_images_dir(tiny_set, tmp_path):
    _, ann_path, _, by_image = tiny_set
    with pytest.raises(InputError) as e:
        evaluate_coco(oracle_predictor(by_image), tmp_path / "nope", ann_path, progress=False)
    assert "no such directory" in one_line(e)


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2, 3]", "not a COCO annotations file"),
        (json.dumps({"images": [], "annotations": []}), "'categories'"),
        (json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}), "lacks"),
    ],
)
def test_annotations_not_coco(tiny_set, tmp_path, content, needle):
    images_dir, _, _, by_image = tiny_set
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(InputError) as e:
        evaluate_coco(oracle_predictor(by_image), images_dir, bad, progress=False)
    assert needle in one_line(e)
    with pytest.raises(InputError) as e:
        evaluate_coco(oracle_predictor(by_image), images_dir, tmp_path / "absent.json", progress=False)
    assert "no such file" in one_line(e)


@pytest.mark.parametrize(
    "dets, needle",
    [
        ([{"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}], "image_id 99"),
        ([{"image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "score": 0.5}], "category_id 7"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}], "'score'"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "score": 0.5}], "invalid bbox"),
        ([[1, 1, 0, 0, 5, 5, 0.5]], "not an object"),
        ({"image_id": 1}, "expected a JSON list"),
    ],
)
def test_bad_detections(tiny_set, tmp_path, dets, needle):
    images_dir, ann_path, _, by_image = tiny_set
    det_path = tmp_path / "dets.json"
    det_path.write_text(json.dumps(dets))
    pred = oracle_predictor(by_image)
    with pytest.raises(InputError) as e:
        evaluate_coco(pred, images_dir, ann_path, det_path, progress=False)
    assert needle in one_line(e)
    assert pred.n_images_set == 0  # validated before any work


def test_missing_corrupt_or_resized_images_are_skipped(tiny_set):
    images_dir, ann_path, data, by_image = tiny_set
    data["images"].append({"id": 3, "file_name": "absent.png", "width": W, "height": H})
    data["images"].append({"id": 4, "file_name": "corrupt.png", "width": W, "height": H})
    data["images"].append({"id": 5, "file_name": "small.png", "width": W, "height": H})
    data["annotations"].append(gt_ann(100, 3, box_mask(H, W, 1, 1, 5, 5)))
    data["annotations"].append(gt_ann(101, 5, box_mask(H, W, 1, 1, 5, 5)))
    (images_dir / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    write_png(images_dir / "small.png", np.zeros((H // 2, W, 3), dtype=np.uint8))
    ann_path.write_text(json.dumps(data))
    out = evaluate_coco(oracle_predictor(by_image), images_dir, ann_path, progress=False)
    assert out["n_images"] == 2 and out["n_instances"] == 4
    skipped = dict(out["skipped"])
    assert set(skipped) == {"absent.png", "corrupt.png", "small.png"}
    assert "no such file" in skipped["absent.png"]
    assert f"{W}x{H // 2}" in skipped["small.png"] and f"{W}x{H}" in skipped["small.png"]
    assert all("\n" not in r for r in skipped.values())
    # Skipped images are left out of the scoring: their GT does not count as missed.
    assert out["AP"] == pytest.approx(1.0, abs=1e-9)


def test_bad_arguments(tiny_set):
    images_dir, ann_path, _, by_image = tiny_set
    for kwargs in ({"batch_boxes": 0}, {"max_images": 0}, {"score_threshold": float("nan")}):
        with pytest.raises(InputError) as e:
            evaluate_coco(oracle_predictor(by_image), images_dir, ann_path, progress=False, **kwargs)
        one_line(e)


def test_write_results_roundtrip(tmp_path):
    r = [result(1, A, 0.5)]
    p = write_results(r, tmp_path / "r.json")
    assert json.loads(p.read_text()) == r
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind
    with pytest.raises(InputError) as e:
        write_results(r, tmp_path / "missing_dir" / "r.json")
    one_line(e)


def test_evaluate_coco_command(tmp_path, capsys):
    """`basam evaluate-coco` end to end on a COCO set built from synthetic masks."""
    import json as _json

    import numpy as _np
    from PIL import Image as _Image

    import oracles
    from basam.cli import main

    imgs = tmp_path / "images"
    imgs.mkdir()
    pairs = []
    for i in range(2):
        img = _np.random.default_rng(i).integers(0, 255, (80, 100, 3), dtype=_np.uint8)
        m = _np.zeros((80, 100), _np.uint8)
        m[10:40, 10:50] = 255
        m[50:75, 60:95] = 255
        _Image.fromarray(img).save(imgs / f"im{i}.png")
        _Image.fromarray(m).save(tmp_path / f"im{i}_mask.png")
        pairs.append((imgs / f"im{i}.png", tmp_path / f"im{i}_mask.png"))
    ann = tmp_path / "instances.json"
    masks_to_coco(pairs, ann)
    arch = oracles.REDUCED["mobile_sam"]
    _, ckpt = oracles.official_checkpoint("mobile_sam", arch, tmp_path)
    out = tmp_path / "ap.json"
    argv = ["evaluate-coco", "--images", str(imgs), "--annotations", str(ann), "--model", "mobile_sam", "--checkpoint", str(ckpt),
            "--architecture", _json.dumps(arch), "--resolution", "128", "--out", str(out), "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "instances 4" in printed
    result = _json.loads(out.read_text())
    assert result["n_images"] == 2 and set(STAT_KEYS) <= set(result)
    assert (tmp_path / "ap_segm_results.json").is_file()
    assert main(argv[:2] + [str(tmp_path / "nope")] + argv[3:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("basam: error:")
