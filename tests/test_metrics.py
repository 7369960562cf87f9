"""Tests for basam.metrics: hand-worked cases, and agreement with pysodmetrics run directly."""

import json
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

import py_sod_metrics as sod
from basam.metrics import (
    CURVE_KEYS,
    LOWER_IS_BETTER,
    METRICS,
    boundary_iou,
    image_metrics,
    mask_to_boundary,
    summarize,
)


def rect(shape, r0, r1, c0, c1):
    """Bool mask with rows r0..r1-1 and cols c0..c1-1 set."""
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


# --------------------------------------------------------------------------- hand-worked cases


def test_metric_names():
    assert len(METRICS) == len(set(METRICS)) == 10
    assert LOWER_IS_BETTER == {"mae"}
    rec = image_metrics(rect((8, 8), 2, 6, 2, 6).astype(float), rect((8, 8), 2, 6, 2, 6))
    assert set(rec) == set(METRICS) | set(CURVE_KEYS)
    assert all(type(rec[k]) is float for k in METRICS)
    assert rec["f_curve"].shape == rec["e_curve"].shape == (256,)


def test_mae_known_prob_map():
    # gt = left two columns. Values are multiples of 1/255 (0.2 = 51/255, 0.6 = 153/255) and the map
    # spans [0, 1], so neither the uint8 rounding nor pysodmetrics' min-max stretch changes it.
    gt = np.zeros((4, 4), dtype=bool)
    gt[:, :2] = True
    prob = np.array(
        [
            [1.0, 1.0, 0.0, 0.0],  # errors 0 0 0 0
            [1.0, 0.6, 0.2, 0.0],  # errors 0 .4 .2 0
            [1.0, 1.0, 0.0, 0.0],  # errors 0 0 0 0
            [0.6, 1.0, 0.0, 0.2],  # errors .4 0 0 .2
        ]
    )
    # sum of errors = 0.4 + 0.2 + 0.4 + 0.2 = 1.2 over 16 pixels
    assert image_metrics(prob, gt)["mae"] == pytest.approx(1.2 / 16, abs=1e-12)


def test_mae_follows_pysodmetrics_minmax_normalisation():
    # pysodmetrics stretches a non-constant map to [0, 1] before scoring (MATLAB mapminmax):
    # 0.6 on the object and 0.2 elsewhere become 1 and 0, so MAE is 0, not the raw 0.3 ...
    gt = rect((10, 10), 2, 7, 3, 8)
    prob = np.where(gt, 0.6, 0.2)
    rec = image_metrics(prob, gt)
    assert rec["mae"] == pytest.approx(0.0, abs=1e-12)
    # ... whereas IoU binarises the raw probability: 0.6 >= 0.5 on the object, 0.2 < 0.5 elsewhere.
    assert rec["iou"] == 1.0
    # A constant map is not stretched: |0.2 - 1| on 25 object pixels, 0.2 on 75 others.
    rec = image_metrics(np.full((10, 10), 0.2), gt)
    assert rec["mae"] == pytest.approx((25 * 0.8 + 75 * 0.2) / 100, abs=1e-12)


def test_iou_dice_two_rectangles():
    gt = rect((20, 20), 2, 12, 2, 12)  # 10 x 10 = 100 px
    pred = rect((20, 20), 6, 16, 4, 14)  # 10 x 10 = 100 px
    # overlap: rows 6..11 (6) x cols 4..11 (8) = 48 px; union = 100 + 100 - 48 = 152
    rec = image_metrics(pred.astype(np.float64), gt)
    assert rec["iou"] == pytest.approx(48 / 152, abs=1e-12)  # = 6/19
    assert rec["dice"] == pytest.approx(2 * 48 / (100 + 100), abs=1e-12)  # = 0.48


def test_threshold_is_prob_ge_threshold():
    gt = rect((10, 10), 0, 5, 0, 10)  # top half
    prob = np.zeros((10, 10))
    prob[:5] = 0.5  # exactly at the threshold (logit 0): counts as foreground
    prob[5:7] = 0.49  # just below: background
    assert image_metrics(prob, gt)["iou"] == 1.0
    # with threshold 0.4 the 20 px at 0.49 join: IoU = 50 / 70
    assert image_metrics(prob, gt, threshold=0.4)["iou"] == pytest.approx(50 / 70)


def test_both_empty_conventions():
    empty = np.zeros((16, 16), dtype=bool)
    rec = image_metrics(np.zeros((16, 16)), empty)
    assert rec["iou"] == 1.0 and rec["dice"] == 1.0 and rec["boundary_iou"] == 1.0
    assert boundary_iou(empty, empty) == 1.0
    # but a prediction on an empty gt (or an empty prediction on an object) scores 0
    some = rect((16, 16), 4, 8, 4, 8)
    rec = image_metrics(some.astype(float), empty)
    assert rec["iou"] == 0.0 and rec["dice"] == 0.0 and rec["boundary_iou"] == 0.0
    rec = image_metrics(np.zeros((16, 16)), some)
    assert rec["iou"] == 0.0 and rec["dice"] == 0.0 and rec["boundary_iou"] == 0.0


def test_boundary_of_square_is_one_pixel_ring():
    # 20x20 image: diagonal 28.28, 0.02 * 28.28 = 0.57 -> dilation 1
    sq = rect((20, 20), 5, 15, 5, 15)
    b = mask_to_boundary(sq)
    assert b.dtype == bool
    assert b.sum() == 36  # 10*10 - 8*8
    assert np.array_equal(b, sq & ~rect((20, 20), 6, 14, 6, 14))


def test_image_border_counts_as_boundary():
    full = np.ones((20, 20), dtype=bool)
    b = mask_to_boundary(full)
    assert b.sum() == 20 * 20 - 18 * 18  # the outermost 1-px ring
    assert not b[1:-1, 1:-1].any()


def test_dilation_from_diagonal():
    # 100x100: diagonal 141.42, 0.02 * 141.42 = 2.83 -> round -> 3 iterations
    full = np.ones((100, 100), dtype=bool)
    assert mask_to_boundary(full).sum() == 100 * 100 - 94 * 94  # 3-px band along the border
    sq = rect((100, 100), 20, 80, 20, 80)
    assert mask_to_boundary(sq).sum() == 60 * 60 - 54 * 54
    # dilation_ratio scales it: 0.05 * 141.42 = 7.07 -> 7
    assert mask_to_boundary(sq, dilation_ratio=0.05).sum() == 60 * 60 - 46 * 46
    # and never goes below 1
    assert mask_to_boundary(sq, dilation_ratio=0.0).sum() == 60 * 60 - 58 * 58


def test_boundary_iou_identical_disjoint_shifted():
    a = rect((20, 20), 5, 15, 5, 15)
    assert boundary_iou(a, a) == 1.0
    assert boundary_iou(rect((20, 20), 0, 5, 0, 5), rect((20, 20), 10, 20, 10, 20)) == 0.0
    # shifted right by one: rings of [5..14]x[5..14] and [5..14]x[6..15] (36 px each, dilation 1)
    # share only their top and bottom rows over cols 6..14: 2 * 9 = 18 px.
    # union = 36 + 36 - 18 = 54 -> 18 / 54 = 1/3
    b = rect((20, 20), 5, 15, 6, 16)
    assert boundary_iou(b, a) == pytest.approx(1 / 3, abs=1e-12)
    assert image_metrics(b.astype(float), a)["boundary_iou"] == pytest.approx(1 / 3, abs=1e-12)


def _hqsam_mask_to_boundary(mask, dilation_ratio=0.02):
    """HQ-SAM's OpenCV implementation (train/utils/misc.py), as the reference."""
    import cv2

    h, w = mask.shape
    dilation = int(round(dilation_ratio * np.sqrt(h**2 + w**2)))
    dilation = max(dilation, 1)
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), dtype=np.uint8), iterations=dilation)[1 : h + 1, 1 : w + 1]
    return mask.astype(np.uint8) - eroded


@pytest.mark.parametrize("shape", [(7, 9), (64, 48), (150, 211)])
def test_mask_to_boundary_matches_hqsam_opencv(shape):
    rng = np.random.default_rng(sum(shape))
    for i in range(4):
        mask = ndimage.gaussian_filter(rng.standard_normal(shape), 1 + i) > 0
        if i == 3:
            mask[:, : shape[1] // 2] = True  # touches the image border
        for ratio in (0.0, 0.02, 0.05):
            ref = _hqsam_mask_to_boundary(mask, ratio).astype(bool)
            assert np.array_equal(mask_to_boundary(mask, ratio), ref)


# --------------------------------------------------------------------------- against pysodmetrics


def _random_case(rng, shape, kind):
    """A smooth random probability map and a blob ground truth."""
    h, w = shape
    sigma = max(h, w) / 10
    gt = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    gt = gt > np.quantile(gt, rng.uniform(0.5, 0.9))
    if kind == "empty_gt":
        gt[:] = False
    elif kind == "full_gt":
        gt[:] = True
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma / 2)
    logits = 6 * (gt.astype(float) - 0.5) + 40 * noise
    logits = ndimage.gaussian_filter(logits, 1.5)
    prob = 1 / (1 + np.exp(-logits))
    if kind == "narrow":  # a map that does not span [0, 1]
        prob = 0.3 + 0.4 * prob
    if kind == "constant":
        prob = np.full(shape, 0.3)
    return prob, gt


CASES = [
    ((48, 64), "normal"),
    ((97, 80), "normal"),
    ((128, 128), "normal"),
    ((33, 171), "normal"),
    ((64, 64), "narrow"),
    ((120, 90), "normal"),
    ((40, 40), "empty_gt"),
    ((50, 30), "full_gt"),
    ((60, 70), "constant"),
    ((200, 160), "normal"),
]


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(1234)
    return [_random_case(rng, shape, kind) for shape, kind in CASES]


@pytest.fixture(scope="module")
def records(dataset):
    return [image_metrics(p, g) for p, g in dataset]


def _pysod_one_pass(dataset):
    evs = {
        "mae": sod.MAE(),
        "sm": sod.Smeasure(),
        "em": sod.Emeasure(),
        "wfm": sod.WeightedFmeasure(),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure warns that it is deprecated
        evs["fm"] = sod.Fmeasure()
    for prob, gt in dataset:
        pred_u8 = np.round(prob * 255).astype(np.uint8)
        gt_u8 = gt.astype(np.uint8) * 255
        for ev in evs.values():
            ev.step(pred_u8, gt_u8)
    em = evs["em"].get_results()["em"]["curve"]
    fm = evs["fm"].get_results()["fm"]["curve"]
    return {
        "mae": evs["mae"].get_results()["mae"],
        "s_measure": evs["sm"].get_results()["sm"],
        "weighted_f": evs["wfm"].get_results()["wfm"],
        "e_measure_mean": em.mean(),
        "e_measure_max": em.max(),
        "f_measure_mean": fm.mean(),
        "f_measure_max": fm.max(),
    }


@pytest.mark.parametrize("n", [1, 3, len(CASES)])
def test_summarize_equals_pysodmetrics_one_pass(dataset, records, n):
    ours = summarize(records[:n])
    ref = _pysod_one_pass(dataset[:n])
    assert ours["n"] == n
    for name, value in ref.items():
        assert ours[name] == pytest.approx(float(value), rel=1e-9, abs=1e-12), name
    # the set has images where F/E max and mean over images differ from max/mean of the mean curve
    per_image_max_mean = np.mean([r["f_measure_max"] for r in records[:n]])
    if n == len(CASES):
        assert ours["f_measure_max"] != pytest.approx(per_image_max_mean, rel=1e-6)


def test_mean_metrics_are_means_over_images(records):
    out = summarize(records)
    for name in ("iou", "dice", "boundary_iou"):
        assert out[name] == pytest.approx(np.mean([r[name] for r in records]), rel=1e-12)
    assert all(0.0 <= out[name] <= 1.0 for name in METRICS)


def test_perfect_and_inverted_predictions(dataset):
    _, gt = dataset[1]
    rec = image_metrics(gt.astype(np.float64), gt)
    assert rec["mae"] == 0.0
    assert rec["s_measure"] == pytest.approx(1.0, abs=1e-9)
    assert rec["iou"] == rec["dice"] == rec["boundary_iou"] == 1.0
    assert rec["f_measure_max"] == pytest.approx(1.0, abs=1e-9)
    assert rec["e_measure_max"] == pytest.approx(1.0, abs=1e-2)
    inv = image_metrics((~gt).astype(np.float64), gt)
    assert inv["iou"] == 0.0 and inv["dice"] == 0.0
    assert inv["mae"] == 1.0
    # bool and uint8 (0/1 and 0/255) masks give the same as the float map
    for pred in (gt, gt.astype(np.uint8), gt.astype(np.uint8) * 255):
        alt = image_metrics(pred, gt)
        assert {k: alt[k] for k in METRICS} == {k: rec[k] for k in METRICS}


def test_summarize_after_json_round_trip(records):
    as_json = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in records]
    reloaded = json.loads(json.dumps(as_json))
    assert isinstance(reloaded[0]["f_curve"], list)
    assert summarize(reloaded) == summarize(records)


def test_summarize_empty():
    out = summarize([])
    assert out["n"] == 0
    assert set(out) == {"n", *METRICS}
    assert all(math.isnan(out[name]) for name in METRICS)


# --------------------------------------------------------------------------- input validation


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(10, 12\).*\(10, 10\)"):
        image_metrics(np.zeros((10, 12)), np.zeros((10, 10), dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        boundary_iou(np.zeros((10, 12), dtype=bool), np.zeros((12, 10), dtype=bool))


def test_bad_values_raise():
    gt = np.zeros((8, 8), dtype=bool)
    prob = np.full((8, 8), 0.5)
    prob[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        image_metrics(prob, gt)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        image_metrics(np.full((8, 8), 3.0), gt)  # logits, not probabilities
    with pytest.raises(ValueError, match="binary"):
        image_metrics(np.zeros((8, 8)), np.full((8, 8), 7, dtype=np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        image_metrics(np.zeros((1, 8, 8)), np.zeros((1, 8, 8), dtype=bool))
