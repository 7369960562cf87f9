"""COCO instance segmentation with box prompts (the paper's Table 3).

Every box (a detector's, or the ground truth's) prompts the model once, with a single mask output;
the masks are scored with pycocotools' ``COCOeval(iouType="segm")``.

* :func:`evaluate_coco` runs a :class:`~basam.predictor.Predictor` over a COCO-format set and returns
  AP, AP50, AP75, APs, APm, APl (``COCOeval.stats[0:6]``, -1 where COCO has no data).
* :func:`score_results` is the scoring part alone: a ground-truth set and a results list in, the
  six numbers out.
* :func:`masks_to_coco` builds a COCO-format set from binary image/mask pairs: one instance per
  8-connected component.
* :func:`write_results` writes a results list as JSON, atomically.

The predictor interface used (``basam.Predictor`` and ``segment_anything.SamPredictor`` both have
it): ``set_image(HxWx3 uint8 RGB)``, ``original_size``, ``transform.apply_boxes_torch(boxes,
original_size)``, ``predict_torch(None, None, boxes=..., multimask_output=False)`` returning
``(masks (B, 1, H, W), iou, low_res)``; ``device`` is used when present (else CPU).

Choices worth knowing
---------------------
* Ground-truth boxes come from the non-crowd annotations (``iscrowd`` 1 regions are what COCO
  ignores, not instances); each gets score 1.0. Detections keep their own score.
* Boxes are clipped to the image; a box with width or height <= 0 (before or after clipping) is
  dropped and counted in ``dropped_boxes``. Detections with ``score < score_threshold`` are
  dropped and counted in ``below_threshold``.
* An image that cannot be read, or whose size differs from its annotation entry, is skipped (listed
  in ``skipped``) and left out of the scoring, so that it does not count as missed instances.
  ``n_images`` is the number of images scored.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import InputError
from .io import _show, atomic_write, read_image, read_mask

__all__ = [
    "STAT_KEYS",
    "evaluate_coco",
    "score_results",
    "load_coco",
    "load_detections",
    "masks_to_coco",
    "write_results",
    "encode_masks",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The names of ``COCOeval.stats[0:6]``.
STAT_KEYS: Tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")

_COCO_KEYS = ("images", "annotations", "categories")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress on stdout; keep it out of ours."""
    with contextlib.redirect_stdout(_io.StringIO()):
        yield


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating)) and math.isfinite(float(x))


def _is_box(b: Any) -> bool:
    return isinstance(b, (list, tuple)) and len(b) == 4 and all(_is_number(v) for v in b)


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _read_json(path: PathLike, what: str) -> Any:
    p = Path(os.fsdecode(path))
    where = f"cannot read {what} {_show(p)}"
    if not p.exists():
        raise InputError(f"{where}: no such file")
    if p.is_dir():
        raise InputError(f"{where}: is a directory, not a file")
    try:
        with open(p, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise InputError(f"{where}: not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise InputError(f"{where}: {' '.join(str(e).split()) or type(e).__name__}") from None


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------


def _validate_coco(data: Any, where: str, need_bbox: bool) -> None:
    """Raise a one-line InputError unless ``data`` is a usable COCO instance-segmentation set."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: not a COCO annotations file (expected a JSON object with "
                         f"'images', 'annotations' and 'categories', got a JSON {type(data).__name__})")
    missing = [k for k in _COCO_KEYS if k not in data]
    if missing:
        raise InputError(f"{where}: not a COCO annotations file (missing {', '.join(repr(k) for k in missing)})")
    for k in _COCO_KEYS:
        if not isinstance(data[k], list):
            raise InputError(f"{where}: not a COCO annotations file ('{k}' must be a list, got {type(data[k]).__name__})")

    img_ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise InputError(f"{where}: images[{i}] is not an object")
        lacking = [k for k in ("id", "file_name", "width", "height") if k not in img]
        if lacking:
            raise InputError(f"{where}: images[{i}] lacks {', '.join(repr(k) for k in lacking)}")
        if not _hashable(img["id"]):
            raise InputError(f"{where}: images[{i}] has an invalid id {img['id']!r}")
        if img["id"] in img_ids:
            raise InputError(f"{where}: images[{i}] repeats image id {img['id']!r}")
        img_ids.add(img["id"])
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise InputError(f"{where}: images[{i}] has an invalid file_name {img['file_name']!r}")
        for k in ("width", "height"):
            v = img[k]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise InputError(f"{where}: images[{i}] has an invalid {k} {v!r}")

    cat_ids = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or not _hashable(cat["id"]):
            raise InputError(f"{where}: categories[{i}] is not an object with an 'id'")
        cat_ids.add(cat["id"])

    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise InputError(f"{where}: annotations[{i}] is not an object")
        lacking = [k for k in ("id", "image_id", "category_id", "segmentation", "area") if k not in ann]
        if need_bbox and "bbox" not in ann:
            lacking.append("bbox")
        if lacking:
            raise InputError(f"{where}: annotations[{i}] lacks {', '.join(repr(k) for k in lacking)}")
        if not _hashable(ann["id"]) or ann["id"] in ann_ids:
            raise InputError(f"{where}: annotations[{i}] has a missing or repeated id {ann['id']!r}")
        ann_ids.add(ann["id"])
        if not _hashable(ann["image_id"]) or ann["image_id"] not in img_ids:
            raise InputError(f"{where}: annotations[{i}] refers to image_id {ann['image_id']!r}, which is not in 'images'")
        if not _hashable(ann["category_id"]) or ann["category_id"] not in cat_ids:
            raise InputError(f"{where}: annotations[{i}] refers to category_id {ann['category_id']!r}, which is not in 'categories'")
        if not _is_number(ann["area"]):
            raise InputError(f"{where}: annotations[{i}] has an invalid area {ann['area']!r}")
        seg = ann["segmentation"]
        if not (isinstance(seg, list) or (isinstance(seg, dict) and "counts" in seg and "size" in seg)):
            raise InputError(f"{where}: annotations[{i}] has a segmentation that is neither polygons nor RLE")
        if need_bbox and not _is_box(ann["bbox"]):
            raise InputError(f"{where}: annotations[{i}] has an invalid bbox {ann['bbox']!r} (expected [x, y, w, h])")


def _coco_from_dict(data: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with _quiet():
        coco.createIndex()
    return coco


def load_coco(annotations: PathLike, need_bbox: bool = False):
    """Read and validate a COCO annotations JSON; returns a ``pycocotools.coco.COCO``.

    Raises:
        InputError (one line): unreadable file, invalid JSON, not a COCO set (missing 'images',
            'annotations' or 'categories'), or malformed entries.
    """
    where = f"cannot read annotations {_show(Path(os.fsdecode(annotations)))}"
    data = _read_json(annotations, "annotations")
    _validate_coco(data, where, need_bbox=need_bbox)
    return _coco_from_dict(data)


def load_detections(detections: PathLike, coco_gt) -> List[dict]:
    """Read a detector's COCO results JSON (list of {image_id, category_id, bbox, score}).

    Raises:
        InputError (one line): unreadable/invalid JSON, not a list of such objects, or a detection
            whose image_id / category_id is not in ``coco_gt``.
    """
    p = Path(os.fsdecode(detections))
    where = f"cannot read detections {_show(p)}"
    data = _read_json(p, "detections")
    if not isinstance(data, list):
        raise InputError(f"{where}: expected a JSON list of {{image_id, category_id, bbox, score}} objects, "
                         f"got a JSON {type(data).__name__}")
    img_ids = set(coco_gt.imgs)
    cat_ids = set(coco_gt.cats)
    for i, d in enumerate(data):
        if not isinstance(d, dict):
            raise InputError(f"{where}: item {i} is not an object")
        lacking = [k for k in ("image_id", "category_id", "bbox", "score") if k not in d]
        if lacking:
            raise InputError(f"{where}: item {i} lacks {', '.join(repr(k) for k in lacking)}")
        if not _is_box(d["bbox"]):
            raise InputError(f"{where}: item {i} has an invalid bbox {d['bbox']!r} (expected [x, y, w, h])")
        if not _is_number(d["score"]):
            raise InputError(f"{where}: item {i} has an invalid score {d['score']!r}")
        if not _hashable(d["image_id"]) or d["image_id"] not in img_ids:
            raise InputError(f"{where}: item {i} refers to image_id {d['image_id']!r}, which is not in the annotations")
        if not _hashable(d["category_id"]) or d["category_id"] not in cat_ids:
            raise InputError(f"{where}: item {i} refers to category_id {d['category_id']!r}, "
                             f"which is not in the annotations' categories")
    return data


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def score_results(coco_gt, results: Sequence[dict], img_ids: Optional[Iterable] = None) -> Dict[str, float]:
    """COCO mask AP of ``results`` against ``coco_gt``.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` or a COCO dataset dict.
        results: list of {image_id, category_id, segmentation (compressed RLE), score}; not modified.
        img_ids: score only these images (default: all images of ``coco_gt``).
    Returns:
        {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'}: ``COCOeval(iouType='segm').stats[0:6]`` as
        floats; -1 where COCO has no ground truth to score (e.g. no small objects).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(coco_gt, dict):
        coco_gt = _coco_from_dict(coco_gt)
    results = [dict(r) for r in results]  # loadRes adds area/bbox/id in place
    with _quiet():
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list; no detections scores 0 where there is GT
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                               "categories": list(coco_gt.dataset["categories"])}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        if img_ids is not None:
            ev.params.imgIds = sorted(img_ids)
        if len(ev.params.imgIds) == 0:
            return {k: -1.0 for k in STAT_KEYS}
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(STAT_KEYS, ev.stats[:6])}


def encode_masks(masks: np.ndarray) -> List[dict]:
    """(B, H, W) masks -> B compressed RLEs with ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"encode_masks expects BxHxW masks, got shape {m.shape}")
    if m.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray((m != 0).transpose(1, 2, 0).astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _xywh_to_xyxy_clipped(bbox: Sequence[float], width: int, height: int) -> Optional[List[float]]:
    """COCO [x, y, w, h] -> [x0, y0, x1, y1] clipped to the image; None when empty."""
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return None
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return [x0, y0, x1, y1]


def _check_positive_int(value: Any, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


def evaluate_coco(
    predictor,
    images_dir: PathLike,
    annotations: PathLike,
    detections: Optional[PathLike] = None,
    *,
    score_threshold: float = 0.0,
    max_images: Optional[int] = None,
    batch_boxes: int = 64,
    progress: bool = True,
    hq_token_only: Optional[bool] = None,
    results_path: Optional[PathLike] = None,
) -> dict:
    """Box-prompted instance segmentation on a COCO-format set.

    Boxes come from ``detections`` (a detector's COCO results JSON: a list of {image_id,
    category_id, bbox [x, y, w, h], score}) or, when None, from the ground-truth boxes of
    ``annotations`` (non-crowd, score 1.0). Each image is encoded once; its boxes are prompted in
    batches of ``batch_boxes`` through ``predict_torch`` (xywh -> xyxy, single-mask output). Masks
    become compressed RLE; pycocotools' ``COCOeval(iouType='segm')`` scores them.

    Args:
        predictor: a :class:`basam.Predictor` (or anything with its interface, see the module doc).
        images_dir: folder the annotations' ``file_name`` entries are relative to.
        annotations: COCO instances JSON (with segmentations).
        detections: optional detector results JSON; None prompts with the ground-truth boxes.
        score_threshold: detections with a lower score are not prompted.
        max_images: evaluate only the first N images of the annotations (in file order).
        batch_boxes: boxes per ``predict_torch`` call.
        progress: show a tqdm bar over images.
        hq_token_only: HQ-SAM models: passed to ``predict_torch`` when not None.
        results_path: when given, the results list is written there as JSON (atomically).

    Returns:
        {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'} (floats, ``COCOeval.stats[0:6]``), plus
        'n_images' (images scored), 'n_instances' (boxes prompted = masks scored), 'skipped' (list
        of (file, reason)), 'dropped_boxes' (w or h <= 0, or outside the image) and
        'below_threshold' (detections under ``score_threshold``).

    Raises:
        InputError (one line): missing images dir, unreadable or non-COCO annotations, malformed
            detections or detections for images/categories not in the annotations, bad arguments.
            Unreadable images never raise: they are skipped and listed.
    """
    from tqdm import tqdm

    images_dir = Path(os.fsdecode(images_dir))
    if not images_dir.is_dir():
        what = "is not a directory" if images_dir.exists() else "no such directory"
        raise InputError(f"cannot read images dir {_show(images_dir)}: {what}")
    if not _is_number(score_threshold):
        raise InputError(f"score_threshold must be a finite number, got {score_threshold!r}")
    _check_positive_int(max_images, "max_images", allow_none=True)
    _check_positive_int(batch_boxes, "batch_boxes")
    if hq_token_only is not None and not isinstance(hq_token_only, bool):
        raise InputError(f"hq_token_only must be True, False or None, got {hq_token_only!r}")

    coco_gt = load_coco(annotations, need_bbox=detections is None)

    # Boxes per image: (category_id, [x, y, w, h], score).
    boxes_by_image: Dict[Any, List[Tuple[Any, Sequence[float], float]]] = defaultdict(list)
    below_threshold = 0
    if detections is not None:
        for d in load_detections(detections, coco_gt):
            score = float(d["score"])
            if score < score_threshold:
                below_threshold += 1
                continue
            boxes_by_image[d["image_id"]].append((d["category_id"], d["bbox"], score))
    else:
        for ann in coco_gt.dataset["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            if 1.0 < score_threshold:
                below_threshold += 1
                continue
            boxes_by_image[ann["image_id"]].append((ann["category_id"], ann["bbox"], 1.0))

    images = coco_gt.dataset["images"]
    if max_images is not None:
        images = images[: int(max_images)]

    device = getattr(predictor, "device", torch.device("cpu"))
    extra = {} if hq_token_only is None else {"hq_token_only": hq_token_only}
    results: List[dict] = []
    skipped: List[Tuple[str, str]] = []
    scored_ids: List[Any] = []
    dropped = 0

    for img in tqdm(images, desc="COCO", unit="img", disable=not progress):
        file_name = img["file_name"]
        try:
            image = read_image(images_dir / file_name)
        except InputError as e:
            skipped.append((file_name, str(e)))
            continue
        h, w = image.shape[:2]
        if (w, h) != (img["width"], img["height"]):
            skipped.append((file_name, f"image is {w}x{h} but the annotations say {img['width']}x{img['height']}"))
            continue

        prompts = []
        for cat, bbox, score in boxes_by_image.get(img["id"], ()):
            xyxy = _xywh_to_xyxy_clipped(bbox, w, h)
            if xyxy is None:
                dropped += 1
                continue
            prompts.append((cat, xyxy, score))
        if prompts:
            try:
                predictor.set_image(image)
            except InputError as e:
                skipped.append((file_name, str(e)))
                continue
            original_size = tuple(predictor.original_size)
            for start in range(0, len(prompts), batch_boxes):
                chunk = prompts[start : start + batch_boxes]
                boxes = torch.tensor([p[1] for p in chunk], dtype=torch.float, device=device)
                boxes = predictor.transform.apply_boxes_torch(boxes, original_size)
                masks, _, _ = predictor.predict_torch(None, None, boxes=boxes, multimask_output=False, **extra)
                if isinstance(masks, torch.Tensor):
                    masks = masks.detach().cpu().numpy()
                masks = np.asarray(masks)
                if masks.ndim != 4 or masks.shape[0] != len(chunk) or masks.shape[2:] != (h, w):
                    raise RuntimeError(f"predict_torch returned masks of shape {masks.shape} for {len(chunk)} boxes "
                                       f"on a {w}x{h} image; expected ({len(chunk)}, 1, {h}, {w})")
                for (cat, _, score), rle in zip(chunk, encode_masks(masks[:, 0])):
                    results.append({"image_id": img["id"], "category_id": cat, "segmentation": rle, "score": score})
        scored_ids.append(img["id"])

    if results_path is not None:
        write_results(results, results_path)
    stats = score_results(coco_gt, results, img_ids=scored_ids)
    return {
        **stats,
        "n_images": len(scored_ids),
        "n_instances": len(results),
        "skipped": skipped,
        "dropped_boxes": dropped,
        "below_threshold": below_threshold,
    }


def write_results(results: Sequence[dict], path: PathLike) -> Path:
    """Write a COCO results list as JSON, atomically (see :func:`basam.io.atomic_write`)."""
    if not isinstance(results, (list, tuple)):
        raise InputError(f"results must be a list of objects, got {type(results).__name__}")
    payload = json.dumps(list(results)).encode("utf-8")
    return atomic_write(path, lambda f: f.write(payload))


# --------------------------------------------------------------------------------------------
# Building a COCO set from binary masks
# --------------------------------------------------------------------------------------------


def masks_to_coco(
    pairs: Sequence[Tuple[PathLike, PathLike]],
    out_json: PathLike,
    category_name: str = "object",
    min_area: int = 16,
    images_dir: Optional[PathLike] = None,
) -> dict:
    """Build a COCO instance-segmentation set from (image, binary mask) file pairs.

    Each mask is read with :func:`basam.io.read_mask` (threshold 128); every 8-connected component
    of at least ``min_area`` pixels becomes one instance (category 1, ``category_name``) with a
    compressed-RLE segmentation, its bbox ``[x, y, w, h]`` (pixel extents), area and iscrowd 0.
    Image entries hold ``file_name`` relative to ``images_dir`` (default: the images' common
    folder), ``width`` and ``height``. Ids start at 1. The set is written to ``out_json``
    atomically and returned.

    Raises:
        InputError: an unreadable image or mask, a mask whose size differs from its image, an
            image outside ``images_dir``, or a bad ``min_area``.
    """
    from scipy import ndimage

    if isinstance(min_area, bool) or not isinstance(min_area, (int, np.integer)) or min_area < 1:
        raise InputError(f"min_area must be a positive integer, got {min_area!r}")
    pairs = [(Path(os.fsdecode(i)), Path(os.fsdecode(m))) for i, m in pairs]
    if not pairs:
        raise InputError("masks_to_coco needs at least one (image, mask) pair")
    if images_dir is None:
        images_dir = Path(os.path.commonpath([str(p.resolve().parent) for p, _ in pairs]))
    images_dir = Path(os.fsdecode(images_dir)).resolve()

    structure = np.ones((3, 3), dtype=bool)  # 8-connectivity
    images, annotations = [], []
    for image_id, (image_path, mask_path) in enumerate(pairs, start=1):
        rel = os.path.relpath(image_path.resolve(), images_dir)
        if rel.startswith(os.pardir + os.sep) or rel == os.pardir or os.path.isabs(rel):
            raise InputError(f"image {_show(image_path)} is not inside the images folder {_show(images_dir)}")
        h, w = read_image(image_path).shape[:2]
        mask = read_mask(mask_path, threshold=128)
        if mask.shape != (h, w):
            raise InputError(f"mask {_show(mask_path)} is {mask.shape[1]}x{mask.shape[0]} but its image "
                             f"{_show(image_path)} is {w}x{h}")
        images.append({"id": image_id, "file_name": Path(rel).as_posix(), "width": int(w), "height": int(h)})
        labels, n = ndimage.label(mask, structure=structure)
        if n == 0:
            continue
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        for k, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None or areas[k] < min_area:
                continue
            comp = np.zeros((h, w), dtype=bool)
            comp[sl] = labels[sl] == k
            rle = encode_masks(comp[None])[0]
            ys, xs = sl
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": rle,
                "area": int(areas[k]),
                "bbox": [int(xs.start), int(ys.start), int(xs.stop - xs.start), int(ys.stop - ys.start)],
                "iscrowd": 0,
            })
    data = {
        "info": {"description": f"built by basam.coco.masks_to_coco from {len(pairs)} mask pairs"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": category_name, "supercategory": category_name}],
    }
    payload = json.dumps(data).encode("utf-8")
    atomic_write(Path(os.fsdecode(out_json)), lambda f: f.write(payload))
    return data
