"""Segmentation and salient-object metrics for ``basam evaluate``.

The SOD metrics (MAE, S-measure, E-measure, weighted F, F-measure) come from pysodmetrics
(import name ``py_sod_metrics``); this module only converts inputs, runs the library one image
at a time, and aggregates the per-image records the way the library does for a dataset. IoU,
Dice and boundary IoU are computed here (see "Conventions" for why).

Metrics
-------
``METRICS`` lists every metric name; all are higher-is-better except those in
``LOWER_IS_BETTER`` (``mae``).

* ``mae``, ``s_measure`` (alpha 0.5), ``weighted_f`` (beta 1): pysodmetrics' ``MAE``,
  ``Smeasure``, ``WeightedFmeasure``. Dataset value = mean over images.
* ``e_measure_mean`` / ``e_measure_max``: pysodmetrics' ``Emeasure`` per-threshold curve
  (256 thresholds, pred >= t for t = 255..0 on the 8-bit map). Dataset value = mean / max over
  thresholds of the curve averaged over images ("mean E" / "max E" of the SOD literature and of
  ``Emeasure.get_results()['em']['curve']``).
* ``f_measure_mean`` / ``f_measure_max``: the same for the F-measure curve (beta^2 = 0.3).
  Computed with ``FmeasureV2`` + ``FmeasureHandler``, the library's replacement for the
  deprecated ``Fmeasure`` class (which warns on every construction); the curve is the same
  (the tests check it against ``Fmeasure``).
* ``iou``, ``dice``: of the binary prediction ``prob >= threshold`` against ``gt``.
  Dataset value = mean over images (per-image mIoU / mDice, as in SAM/HQ-SAM evaluations).
* ``boundary_iou``: Boundary IoU (Cheng et al., CVPR 2021) exactly as HQ-SAM's evaluation code
  computes it, on the same binary prediction. Dataset value = mean over images.

Conventions
-----------
* ``prob`` is the predicted foreground probability in ``[0, 1]`` (e.g. ``sigmoid(mask
  logits)``), or a binary mask (``bool``, or ``uint8`` 0/1), or an 8-bit grey map (``uint8`` with
  values above 1, taken as ``value / 255``). For pysodmetrics it is converted to ``uint8`` with
  ``np.round(prob * 255)``; ``gt`` becomes ``uint8`` 0/255.
* pysodmetrics' ``step()`` min-max normalises the prediction (MATLAB ``mapminmax``, as the SOD
  toolboxes do): unless the map is constant, its minimum becomes 0 and its maximum 1 before
  MAE / S / E / F / weighted F are computed. A map in ``[0.2, 0.6]`` is therefore scored as if it
  spanned ``[0, 1]``. This is kept for comparability with published SOD numbers; it hardly
  matters for sigmoid outputs of SAM-like models, which span nearly ``[0, 1]``.
* IoU / Dice / boundary IoU binarise ``prob`` itself (no min-max), with ``prob >= threshold``.
  With ``prob = sigmoid(logit)`` and the default 0.5 this is ``logit >= 0`` (HQ-SAM uses
  ``logit > 0``; the two differ only for logits that are exactly 0). IoU and Dice are 1.0 when
  prediction and ground truth are both empty (a correct "nothing here"); boundary IoU is 1.0 when
  both boundaries are empty (HQ-SAM's code would give 0/0 = NaN there).
* pysodmetrics' own conventions stand for the rest: e.g. weighted F is 0 for an empty ``gt``.

Boundary IoU
------------
``mask_to_boundary`` follows HQ-SAM (``train/utils/misc.py``, from the boundary-iou-api):
``dilation = int(round(dilation_ratio * sqrt(H**2 + W**2)))``, at least 1; the mask is eroded
``dilation`` times with a 3x3 square of ones, with everything outside the image taken as
background (HQ-SAM pads 1 px of zeros with ``cv2.copyMakeBorder`` before ``cv2.erode``; a
zero border of 1 px stays zero under erosion, so it is the same as ``border_value=0`` here), and
the boundary is ``mask AND NOT eroded``: pixels within ``dilation`` (chessboard distance) of the
background or of the image border. ``boundary_iou = |B(gt) & B(pred)| / |B(gt) | B(pred)|``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from basam.errors import InputError

__all__ = [
    "METRICS",
    "LOWER_IS_BETTER",
    "CURVE_KEYS",
    "image_metrics",
    "summarize",
    "boundary_iou",
    "mask_to_boundary",
]

METRICS = (
    "mae",
    "s_measure",
    "e_measure_mean",
    "e_measure_max",
    "weighted_f",
    "f_measure_mean",
    "f_measure_max",
    "iou",
    "dice",
    "boundary_iou",
)
LOWER_IS_BETTER = {"mae"}

#: Per-image curves in a record (256 values each, thresholds 255..0 on the 8-bit map).
CURVE_KEYS = ("f_curve", "e_curve")

#: Metrics whose dataset value is the plain mean of the per-image values.
_MEAN_METRICS = ("mae", "s_measure", "weighted_f", "iou", "dice", "boundary_iou")
#: Dataset metric -> (curve key, reduction over thresholds of the mean curve).
_CURVE_METRICS = {
    "e_measure_mean": ("e_curve", np.mean),
    "e_measure_max": ("e_curve", np.max),
    "f_measure_mean": ("f_curve", np.mean),
    "f_measure_max": ("f_curve", np.max),
}


# --------------------------------------------------------------------------- input checks


def _check_2d(name: str, a: np.ndarray) -> None:
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D (H, W) array, got shape {a.shape}")
    if a.size == 0:
        raise InputError(f"{name} is empty (shape {a.shape})")


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str = "prediction and ground truth") -> None:
    if a.shape != b.shape:
        raise InputError(f"shape mismatch between {what}: {a.shape} vs {b.shape}")


def _as_prob(prob) -> np.ndarray:
    """``prob`` as float64 in [0, 1] (see the module's conventions for accepted dtypes)."""
    p = np.asarray(prob)
    _check_2d("prediction", p)
    if p.dtype == bool:
        return p.astype(np.float64)
    if p.dtype == np.uint8:
        if p.max() <= 1:  # a 0/1 mask
            return p.astype(np.float64)
        return p.astype(np.float64) / 255.0
    if not np.issubdtype(p.dtype, np.floating):
        raise InputError(f"prediction must be float in [0, 1], bool or uint8, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if np.isnan(p).any():
        raise InputError("prediction contains NaN")
    lo, hi = float(p.min()), float(p.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"prediction must be a probability in [0, 1], got values in [{lo:g}, {hi:g}] "
            "(pass sigmoid(logits), not logits)"
        )
    return p


def _as_mask(mask, name: str = "ground truth") -> np.ndarray:
    """A binary mask as bool: bool as is; numbers must be 0/1 or 0/255."""
    m = np.asarray(mask)
    _check_2d(name, m)
    if m.dtype == bool:
        return m
    if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
        raise InputError(f"{name} must be a binary mask, got dtype {m.dtype}")
    values = np.unique(m)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        raise InputError(f"{name} must be binary (bool, 0/1 or 0/255), got values {values[:6].tolist()}...")
    return m != 0


# --------------------------------------------------------------------------- boundary IoU


def _dilation(shape: tuple[int, int], dilation_ratio: float) -> int:
    h, w = shape
    # Python's round (half to even), as HQ-SAM's ``int(round(...))``.
    return max(1, int(round(dilation_ratio * math.sqrt(h * h + w * w))))


def mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """The inner boundary band of a binary mask, as HQ-SAM / Boundary IoU define it.

    ``mask AND NOT erode(mask)``, the erosion being ``dilation`` iterations of a 3x3 square
    with the outside of the image taken as background (so a mask touching the image border has
    boundary there), ``dilation = max(1, round(dilation_ratio * image diagonal))``.
    Returns a bool array of the mask's shape.
    """
    m = _as_mask(mask, "mask")
    if not m.any():
        return np.zeros_like(m)
    eroded = ndimage.binary_erosion(
        m,
        structure=np.ones((3, 3), dtype=bool),
        iterations=_dilation(m.shape, dilation_ratio),
        border_value=0,
    )
    return m & ~eroded


def boundary_iou(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU of two binary masks: ``|B(gt) & B(pred)| / |B(gt) | B(pred)|``.

    1.0 when both boundaries are empty (both masks empty).
    """
    p = _as_mask(pred, "prediction")
    g = _as_mask(gt, "ground truth")
    _check_same_shape(p, g)
    bp = mask_to_boundary(p, dilation_ratio)
    bg = mask_to_boundary(g, dilation_ratio)
    union = np.count_nonzero(bp | bg)
    if union == 0:
        return 1.0
    return np.count_nonzero(bp & bg) / union


# --------------------------------------------------------------------------- per image


def _iou_dice(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    inter = np.count_nonzero(pred & gt)
    n_pred = np.count_nonzero(pred)
    n_gt = np.count_nonzero(gt)
    union = n_pred + n_gt - inter
    if union == 0:  # both empty
        return 1.0, 1.0
    return inter / union, 2.0 * inter / (n_pred + n_gt)


def _sod_metrics(pred_u8: np.ndarray, gt_u8: np.ndarray) -> dict:
    """pysodmetrics on one image: fresh evaluators, one ``step`` each, read back."""
    try:
        import py_sod_metrics as sod  # imported here: it pulls in OpenCV and scikit-image
    except ImportError as e:
        raise ImportError("basam's evaluation metrics need pysodmetrics: pip install pysodmetrics") from e

    mae, sm, em, wfm = sod.MAE(), sod.Smeasure(), sod.Emeasure(), sod.WeightedFmeasure()
    fm = sod.FmeasureV2({"fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=0.3)})
    for ev in (mae, sm, em, wfm, fm):
        ev.step(pred_u8, gt_u8)
    return {
        "mae": float(mae.get_results()["mae"]),
        "s_measure": float(sm.get_results()["sm"]),
        "weighted_f": float(wfm.get_results()["wfm"]),
        "e_curve": np.asarray(em.get_results()["em"]["curve"], dtype=np.float64),
        "f_curve": np.asarray(fm.get_results()["fm"]["dynamic"], dtype=np.float64),
    }


def image_metrics(prob: np.ndarray, gt: np.ndarray, *, threshold: float = 0.5) -> dict:
    """One image's metrics.

    ``prob``: (H, W) foreground probability in [0, 1] (e.g. ``sigmoid(mask_logits)``), or a
    bool / uint8 mask. ``gt``: (H, W) bool (0/1 or 0/255 numbers are accepted too).
    ``threshold``: binarisation for IoU, Dice and boundary IoU, ``prob >= threshold``
    (0.5 = ``logit >= 0``).

    Returns a dict with a float for every name in :data:`METRICS`, plus ``f_curve`` and
    ``e_curve``: this image's 256-value F-measure and E-measure curves (pysodmetrics'
    per-threshold values), which :func:`summarize` averages over images for the dataset-level
    mean/max F and E. Raises ``InputError`` (a ``ValueError``) for mismatched shapes, NaNs,
    values outside [0, 1] or a non-binary ``gt``.
    """
    p = _as_prob(prob)
    g = _as_mask(gt)
    _check_same_shape(p, g)
    if not (isinstance(threshold, numbers.Real) and 0.0 <= threshold <= 1.0):
        raise InputError(f"threshold must be a number in [0, 1], got {threshold!r}")

    pred_u8 = np.round(p * 255.0).astype(np.uint8)
    gt_u8 = g.astype(np.uint8) * np.uint8(255)
    sod = _sod_metrics(pred_u8, gt_u8)

    binary = p >= threshold
    iou, dice = _iou_dice(binary, g)
    e_curve, f_curve = sod["e_curve"], sod["f_curve"]
    return {
        "mae": sod["mae"],
        "s_measure": sod["s_measure"],
        "e_measure_mean": float(e_curve.mean()),
        "e_measure_max": float(e_curve.max()),
        "weighted_f": sod["weighted_f"],
        "f_measure_mean": float(f_curve.mean()),
        "f_measure_max": float(f_curve.max()),
        "iou": float(iou),
        "dice": float(dice),
        "boundary_iou": float(boundary_iou(binary, g)),
        "f_curve": f_curve,
        "e_curve": e_curve,
    }


# --------------------------------------------------------------------------- dataset


def summarize(records: Sequence[dict]) -> dict:
    """Dataset-level metrics from per-image records (as :func:`image_metrics` returns them, or
    reloaded from JSON with the curves as lists).

    ``mae``, ``s_measure``, ``weighted_f``, ``iou``, ``dice``, ``boundary_iou``: mean over images.
    ``f_measure_max`` / ``e_measure_max``: max over thresholds of the mean curve over images;
    ``f_measure_mean`` / ``e_measure_mean``: mean over thresholds of that mean curve (which is
    also the mean of the per-image values; the max variants are not the mean of per-image maxima).
    This equals pysodmetrics run over the same images in one pass. Returns ``{'n': len(records), <metric>: float, ...}``; with no records every
    metric is NaN.
    """
    records = list(records)
    out: dict = {"n": len(records)}
    if not records:
        out.update({name: float("nan") for name in METRICS})
        return out
    for name in _MEAN_METRICS:
        out[name] = float(np.mean(np.array([r[name] for r in records], dtype=np.float64)))
    mean_curves = {}
    for key in CURVE_KEYS:
        rows = [np.asarray(r[key], dtype=np.float64) for r in records]
        if len({row.shape for row in rows}) != 1 or rows[0].ndim != 1:
            raise InputError(f"records' {key} differ in shape: {sorted({row.shape for row in rows})}")
        curves = np.stack(rows)
        # Same reduction as the library's get_results(): mean over images, axis 0.
        mean_curves[key] = np.mean(curves, axis=0)
    for name, (key, reduce) in _CURVE_METRICS.items():
        out[name] = float(reduce(mean_curves[key]))
    return {"n": out["n"], **{name: out[name] for name in METRICS}}


def evaluate_image(predictor, image, gt, prompt, multimask: "bool | str", hq_token_only, encode: bool = True) -> "tuple[dict, float]":
    """Encode ``image`` at the predictor's resolution, predict, score. Returns (metrics, IoU
    prediction of the kept mask).

    ``multimask``: False (the single-mask output), True (three candidates, the one with the best
    predicted IoU kept: what a user gets) or ``"oracle"`` (three candidates, the one with the best
    IoU against ``gt`` kept: SAM's "oracle" figure, the best of three). ``encode=False`` reuses the
    embedding the predictor holds (the same image, an encoder set up as before).
    """
    if encode:
        predictor.set_image(image)
    logits, scores, _ = predictor.predict(point_coords=prompt.point_coords, point_labels=prompt.point_labels, box=prompt.box,
                                          multimask_output=bool(multimask), return_logits=True, hq_token_only=hq_token_only)
    if multimask == "oracle":
        target = _as_mask(gt)  # the IoU image_metrics reports: logit >= 0 (probability >= 0.5)
        best = int(np.argmax([_iou_dice(candidate >= 0, target)[0] for candidate in logits]))
    else:
        best = int(np.argmax(scores))
    prob = 1.0 / (1.0 + np.exp(-np.clip(logits[best].astype(np.float64), -60, 60)))
    metrics = image_metrics(prob, gt)
    return metrics, float(scores[best])
