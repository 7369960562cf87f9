"""Segment everything: ``segment_anything.SamAutomaticMaskGenerator`` at any resolution.

A grid of single-point prompts is run over the image (and, with ``crop_n_layers > 0``, over a
pyramid of overlapping crops); low-quality masks are dropped by predicted IoU and stability, and
duplicates by box NMS, exactly as the official generator does. What differs is how the work is
laid out, so that memory stays bounded at any image size:

* masks are decoded in sub-batches whose low-resolution logits fit ``max_decode_pixels``
  (the decoder's upscaled features are (B, 32, 4h, 4w): at 4096 px and 64 points that would be
  8.6 GB), which does not change any result;
* only the candidates that pass ``pred_iou_thresh`` are upsampled to the crop size, in chunks of
  ``upsample_chunk`` masks, scored, boxed and immediately compressed to COCO RLE (pycocotools),
  so no (points x H x W) tensor is ever held; the official code upsamples every mask of a batch
  before any filtering;
* ``mask_scoring="lowres"`` goes further: stability, boxes and NMS are computed on the low-res
  logits, and only the NMS survivors are upsampled (their stability and box are then recomputed
  at full size and re-checked). That is faster but not the official order, so its records can
  differ from the official ones (see ``docs/results/amg.md``); the default ``"exact"`` follows
  the official order and gives the official records.

Hole and island removal (``min_mask_region_area``) uses ``scipy.ndimage.label`` with
8-connectivity, the same components as the official OpenCV call.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from itertools import product
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_area

from .constants import MIN_RESOLUTION
from .errors import InputError
from .predictor import Predictor, check_image, check_resolution

__all__ = [
    "AutomaticMaskGenerator",
    "build_point_grid",
    "build_all_layer_point_grids",
    "generate_crop_boxes",
    "masks_to_boxes_xyxy",
    "remove_small_regions",
    "rle_to_uncompressed",
    "run_folder",
    "METADATA_COLUMNS",
]

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
MASK_SCORING = ("exact", "lowres")

#: columns of the official ``scripts/amg.py`` metadata.csv, in order
METADATA_COLUMNS = (
    "id", "area", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "point_input_x", "point_input_y",
    "predicted_iou", "stability_score", "crop_box_x0", "crop_box_y0", "crop_box_w", "crop_box_h",
)


# --- grids and crops (the official layout, so records line up) ---------------------------------


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) x, y points in [0, 1], cell centres of an n x n grid, row-major (y outer)."""
    half = 1.0 / (2 * n_per_side)
    side = np.linspace(half, 1.0 - half, n_per_side)
    xs, ys = np.meshgrid(side, side)  # xs varies along columns, ys along rows
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> List[np.ndarray]:
    """One grid per crop layer; layer i has ``int(n / scale**i)`` points a side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer ** i))) for i in range(n_layers + 1)]


def generate_crop_boxes(im_size: Tuple[int, int], n_layers: int, overlap_ratio: float) -> Tuple[List[List[int]], List[int]]:
    """Crop boxes x0, y0, x1, y1: the whole image, then (2^i)^2 overlapping crops in layer i (1-based).

    Returns the boxes and their layer indices, in the official order (x0 outer, y0 inner).
    """
    im_h, im_w = im_size
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    short = min(im_h, im_w)
    for layer in range(1, n_layers + 1):
        n = 2 ** layer
        overlap = int(overlap_ratio * short * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + im_w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + im_h) / n))
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(layer)
    return boxes, layers


# --- mask helpers -------------------------------------------------------------------------------


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) int64 x0, y0, x1, y1 with inclusive ends; [0, 0, 0, 0] when empty.

    (The official ``batched_mask_to_box`` convention: x1 is the last column, not one past it.)
    """
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1)
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1)
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    empty = ~rows.any(dim=1)
    return boxes.masked_fill(empty[:, None], 0)


def _mask_box_np(mask: np.ndarray) -> np.ndarray:
    """One (H, W) bool mask -> int64 x0, y0, x1, y1 (inclusive), zeros when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.zeros(4, dtype=np.int64)
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.int64)


def _near_crop_edge(boxes: torch.Tensor, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = 20.0) -> torch.Tensor:
    """(N,) True where a box (crop frame) lies within ``atol`` px of a crop edge that is not an image edge."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    b = boxes.float() + torch.as_tensor([crop_box[0], crop_box[1]] * 2, dtype=torch.float, device=boxes.device)
    near_crop = (b - crop).abs() <= atol
    near_image = (b - orig).abs() <= atol
    return (near_crop & ~near_image).any(dim=1)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> Tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than ``area_thresh`` px.

    8-connected components (``scipy.ndimage.label``). When every island is small, the largest is
    kept. Returns the new (H, W) bool mask and whether it changed.
    """
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise InputError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    work = ~mask if holes else mask
    labels, n = ndimage.label(work, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask, False
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if holes:
        return mask | np.isin(labels, small), True
    big = np.flatnonzero(sizes >= area_thresh) + 1
    if big.size == 0:
        big = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(labels, big), True


def _encode(masks: torch.Tensor) -> List[dict]:
    """(N, H, W) bool -> COCO compressed RLEs (pycocotools; ``counts`` as bytes)."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    arr = np.asfortranarray(masks.permute(1, 2, 0).cpu().numpy().astype(np.uint8))
    return mask_utils.encode(arr)


def rle_to_uncompressed(rle: dict) -> dict:
    """COCO compressed RLE -> ``{"size": [H, W], "counts": [int, ...]}`` (column-major runs, zeros first)."""
    from pycocotools import mask as mask_utils

    h, w = rle["size"]
    flat = mask_utils.decode(rle).ravel(order="F").astype(bool)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [h * w]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


def _xywh(box: Sequence[int]) -> List[int]:
    x0, y0, x1, y1 = (int(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


class _Records:
    """Column store of candidate masks (one row each): RLE, box, scores, point, crop box."""

    def __init__(self) -> None:
        self.rles: List[dict] = []
        self.boxes = torch.zeros(0, 4, dtype=torch.int64)      # x0, y0, x1, y1 (inclusive ends)
        self.iou = torch.zeros(0, dtype=torch.float32)
        self.stability = torch.zeros(0, dtype=torch.float32)
        self.points = torch.zeros(0, 2, dtype=torch.float64)
        self.crop_boxes = torch.zeros(0, 4, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.rles)

    def add(self, rles, boxes, iou, stability, points, crop_boxes) -> None:
        self.rles += list(rles)
        self.boxes = torch.cat([self.boxes, boxes.cpu().to(torch.int64)])
        self.iou = torch.cat([self.iou, iou.cpu().float()])
        self.stability = torch.cat([self.stability, stability.cpu().float()])
        self.points = torch.cat([self.points, points.cpu().to(torch.float64)])
        self.crop_boxes = torch.cat([self.crop_boxes, crop_boxes.cpu().to(torch.int64)])

    def extend(self, other: "_Records") -> None:
        self.add(other.rles, other.boxes, other.iou, other.stability, other.points, other.crop_boxes)

    def keep(self, idx: torch.Tensor) -> None:
        """Keep rows ``idx`` (int64 indices, in that order)."""
        idx = idx.cpu()
        self.rles = [self.rles[i] for i in idx.tolist()]
        for name in ("boxes", "iou", "stability", "points", "crop_boxes"):
            setattr(self, name, getattr(self, name)[idx])


def _nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """Indices kept by box NMS, best score first (one category, as the official code calls it)."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    return batched_nms(boxes.float(), scores.float(), torch.zeros(boxes.shape[0], dtype=torch.int64), iou_threshold=thresh)


class AutomaticMaskGenerator:
    """Masks for everything in an image: ``SamAutomaticMaskGenerator`` with a working resolution.

    The parameters from ``model`` to ``output_mode`` have the official meaning and defaults.

    Args:
        model: any basam :class:`~basam.Sam` (SAM, MobileSAM, HQ-SAM, basam_tiny), any attention.
        resolution: the longest side each crop is encoded at. None: the model's own (1024 for
            every official model), which is the official generator. An int: that side (e.g. 4096
            to encode a 4096 px image whole). ``"native"``: each crop at its own longest side (at
            least 64 px), i.e. whole-image AMG at the image's resolution.
        hq_token_only: HQ-SAM only; None uses the model's ``hq_fusion`` (``add`` = the official
            ``hq_token_only=False``), True the HQ-Output token alone.
        mask_scoring: ``"exact"`` (default): the official order, each IoU-passing candidate is
            upsampled to the crop size before stability, threshold and box. ``"lowres"``: score,
            box and NMS at the decoder's low resolution; upsample only the survivors (faster;
            records may differ slightly from the official ones).
        upsample_chunk: how many masks are upsampled to full size at once (memory: chunk x H x W
            float32).
        max_decode_pixels: the decoder runs on sub-batches of at most this many low-res mask
            pixels per mask token (points x 4h x 4w); None: ``points_per_batch`` as given.
    """

    def __init__(
        self,
        model,
        resolution: Union[int, str, None] = None,
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        hq_token_only: Optional[bool] = None,
        mask_scoring: str = "exact",
        upsample_chunk: int = 16,
        max_decode_pixels: Optional[int] = 2 ** 22,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise InputError("give exactly one of points_per_side or point_grids")
        if output_mode not in OUTPUT_MODES:
            raise InputError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}")
        if mask_scoring not in MASK_SCORING:
            raise InputError(f"mask_scoring must be one of {', '.join(MASK_SCORING)}, got {mask_scoring!r}")
        if not isinstance(crop_n_layers, (int, np.integer)) or crop_n_layers < 0:
            raise InputError(f"crop_n_layers must be an integer >= 0, got {crop_n_layers!r}")
        if points_per_side is not None:
            if isinstance(points_per_side, bool) or not isinstance(points_per_side, (int, np.integer)) or points_per_side < 1:
                raise InputError(f"points_per_side must be a positive integer, got {points_per_side!r}")
            grids = build_all_layer_point_grids(int(points_per_side), int(crop_n_layers), int(crop_n_points_downscale_factor))
        else:
            grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            if len(grids) < crop_n_layers + 1:
                raise InputError(f"point_grids needs one grid per crop layer ({crop_n_layers + 1}), got {len(grids)}")
            for g in grids:
                if g.ndim != 2 or g.shape[1] != 2:
                    raise InputError(f"each point grid must be Nx2 in [0, 1], got shape {g.shape}")
        if isinstance(points_per_batch, bool) or not isinstance(points_per_batch, (int, np.integer)) or points_per_batch < 1:
            raise InputError(f"points_per_batch must be a positive integer, got {points_per_batch!r}")
        if hq_token_only is not None and not model.is_hq:
            raise InputError(f"hq_token_only applies to HQ-SAM models (sam_hq_*), not {model.name}")
        if resolution is not None and resolution != "native":
            check_resolution(resolution)
        if output_mode == "coco_rle" or True:
            from pycocotools import mask as _  # noqa: F401  (internal storage is COCO RLE)
        if min_mask_region_area > 0:
            import scipy.ndimage  # noqa: F401

        self.model = model
        self.resolution = resolution
        self.point_grids = grids
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.hq_token_only = hq_token_only
        self.mask_scoring = mask_scoring
        self.upsample_chunk = max(1, int(upsample_chunk))
        self.max_decode_pixels = max_decode_pixels
        self._predictors: Dict[int, Predictor] = {}

    # --- public -----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> List[Dict[str, Any]]:
        """Mask records for an (H, W, 3) uint8 RGB image.

        Each record: ``segmentation`` ((H, W) bool array or an RLE dict, per ``output_mode``),
        ``area`` (int px), ``bbox`` [x, y, w, h], ``predicted_iou``, ``point_coords`` [[x, y]],
        ``stability_score``, ``crop_box`` [x, y, w, h]; best first within the NMS order.
        """
        image = self._check_image(image)
        data = self._generate_masks(image)
        if self.min_mask_region_area > 0 and len(data):
            self._postprocess_small_regions(data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh))
        return self._records(data)

    def predictor_for(self, crop_hw: Tuple[int, int]) -> Predictor:
        """The Predictor a crop of size (h, w) is encoded with (cached per resolution)."""
        if self.resolution is None:
            res = int(self.model.img_size)
        elif self.resolution == "native":
            res = max(MIN_RESOLUTION, int(max(crop_hw)))
        else:
            res = int(self.resolution)
        if res not in self._predictors:
            self._predictors = {res: Predictor(self.model, resolution=res)}  # one at a time: features are big
        return self._predictors[res]

    # --- pipeline ---------------------------------------------------------------------------

    @staticmethod
    def _check_image(image: Any) -> np.ndarray:
        if not isinstance(image, np.ndarray):
            raise InputError(f"image must be an HxWx3 uint8 numpy array, got {type(image).__name__}")
        return check_image(image)

    def _generate_masks(self, image: np.ndarray) -> _Records:
        orig_h, orig_w = image.shape[:2]
        crop_boxes, layers = generate_crop_boxes((orig_h, orig_w), self.crop_n_layers, self.crop_overlap_ratio)
        data = _Records()
        for crop_box, layer in zip(crop_boxes, layers):
            data.extend(self._process_crop(image, crop_box, layer, (orig_h, orig_w)))
        if len(crop_boxes) > 1 and len(data):
            # Between crops prefer masks from smaller crops (higher score = 1 / crop area).
            scores = 1.0 / box_area(data.crop_boxes.float())
            data.keep(_nms(data.boxes, scores, self.crop_nms_thresh))
        return data

    def _process_crop(self, image: np.ndarray, crop_box: List[int], layer: int, orig_size: Tuple[int, int]) -> _Records:
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1, :])
        crop_hw = crop.shape[:2]
        predictor = self.predictor_for(crop_hw)
        predictor.set_image(crop)
        points_all = self.point_grids[layer] * np.array(crop_hw, dtype=np.float64)[None, ::-1]
        data = _Records()
        for start in range(0, len(points_all), self.points_per_batch):
            self._process_batch(predictor, points_all[start : start + self.points_per_batch], crop_box, orig_size, data)
        predictor.reset_image()
        keep = _nms(data.boxes, data.iou, self.box_nms_thresh)  # duplicates within this crop
        data.keep(keep)
        # to the original frame
        data.boxes = data.boxes + torch.tensor([[x0, y0, x0, y0]], dtype=torch.int64)
        data.points = data.points + torch.tensor([[x0, y0]], dtype=torch.float64)
        data.crop_boxes = torch.tensor([crop_box], dtype=torch.int64).expand(len(data), 4).clone()
        return data

    def _decode_step(self, predictor: Predictor) -> int:
        """How many points one decoder call takes (``max_decode_pixels`` / low-res pixels per mask token)."""
        gh, gw = predictor._features.grid
        if not self.max_decode_pixels:
            return self.points_per_batch
        return max(1, min(self.points_per_batch, self.max_decode_pixels // (16 * gh * gw)))

    def _decode(self, predictor: Predictor, points: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (P*3, 4h, 4w) float32 and IoU predictions (P*3,) for (P, 2) crop-frame points."""
        feats = predictor._features  # the encoded crop (ImageFeatures); predict_torch would upsample every mask
        coords = predictor.transform.apply_coords(points, predictor.original_size)
        coords_t = torch.as_tensor(coords, device=predictor.device)[:, None, :]
        labels_t = torch.ones(coords_t.shape[0], 1, dtype=torch.int, device=predictor.device)
        low, iou = self.model.decode(feats, coords_t, labels_t, None, None, True, self.hq_token_only)
        return low.float().flatten(0, 1), iou.float().flatten(0, 1)

    def _upsample(self, predictor: Predictor, low: torch.Tensor) -> torch.Tensor:
        """(n, 4h, 4w) low-res logits -> (n, h_crop, w_crop) logits, as the official postprocessing."""
        feats = predictor._features
        return self.model.postprocess_masks(low[:, None], predictor.input_size, predictor.original_size, feats.input_size)[:, 0]

    def _stability(self, logits: torch.Tensor) -> torch.Tensor:
        """IoU of the masks thresholded at ``t + offset`` and ``t - offset`` (the first lies inside the second)."""
        t, off = self.model.mask_threshold, self.stability_score_offset
        inter = (logits > t + off).flatten(1).sum(1, dtype=torch.int32)
        union = (logits > t - off).flatten(1).sum(1, dtype=torch.int32)
        return inter / union

    def _process_batch(self, predictor: Predictor, points: np.ndarray, crop_box: List[int], orig_size: Tuple[int, int], out: _Records) -> None:
        """Decode, filter, upsample and encode the masks of (P, 2) crop-frame points into ``out``.

        The decoder runs on sub-batches of :meth:`_decode_step` points and each is finished before
        the next is decoded, so memory does not grow with ``points_per_batch``; the candidates stay
        in the official order, so the records do not change.
        """
        step = self._decode_step(predictor)
        for s in range(0, len(points), step):
            self._process_sub_batch(predictor, points[s : s + step], crop_box, orig_size, out)

    def _process_sub_batch(self, predictor: Predictor, points: np.ndarray, crop_box: List[int], orig_size: Tuple[int, int], out: _Records) -> None:
        low, iou = self._decode(predictor, points)
        pts = torch.as_tensor(np.repeat(points, low.shape[0] // len(points), axis=0))
        keep = torch.arange(low.shape[0], device=low.device)
        if self.pred_iou_thresh > 0.0:
            keep = torch.nonzero(iou > self.pred_iou_thresh).flatten()
        if self.mask_scoring == "lowres" and keep.numel():
            keep = self._lowres_prefilter(predictor, low, iou, keep, crop_box, orig_size)
        for s in range(0, keep.numel(), self.upsample_chunk):
            idx = keep[s : s + self.upsample_chunk]
            logits = self._upsample(predictor, low[idx])
            stab = self._stability(logits)
            ok = torch.ones_like(stab, dtype=torch.bool)
            if self.stability_score_thresh > 0.0:
                ok = stab >= self.stability_score_thresh
            masks = logits > self.model.mask_threshold
            del logits
            boxes = masks_to_boxes_xyxy(masks)
            ok &= ~_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
            if not bool(ok.any()):
                continue
            masks, boxes, stab, sel = masks[ok], boxes[ok], stab[ok], idx[ok]
            rles = _encode(self._uncrop(masks, crop_box, orig_size))
            sel_cpu = sel.cpu()
            out.add(rles, boxes, iou[sel], stab, pts[sel_cpu], torch.zeros(len(rles), 4, dtype=torch.int64))

    def _lowres_prefilter(self, predictor, low, iou, keep, crop_box, orig_size) -> torch.Tensor:
        """Candidates of ``keep`` that survive stability, edge and NMS scored on the low-res logits."""
        h_in, w_in = predictor.input_size
        lh, lw = low.shape[-2:]
        ph, pw = predictor._features.input_size
        # The part of the low-res frame that covers the image (the rest is padding).
        vh, vw = max(1, round(h_in * lh / ph)), max(1, round(w_in * lw / pw))
        sub = low[keep][:, :vh, :vw]
        stab = self._stability(sub)
        ok = stab >= self.stability_score_thresh if self.stability_score_thresh > 0.0 else torch.ones_like(stab, dtype=torch.bool)
        masks = sub > self.model.mask_threshold
        b = masks_to_boxes_xyxy(masks).double()
        H, W = predictor.original_size
        sx, sy = W / vw, H / vh
        # pixel-centre mapping of low-res cells to the crop frame, inclusive ends
        boxes = torch.stack([b[:, 0] * sx, b[:, 1] * sy, (b[:, 2] + 1) * sx - 1, (b[:, 3] + 1) * sy - 1], 1).round().long()
        ok &= ~_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
        idx = torch.nonzero(ok).flatten()
        k = _nms(boxes[idx].cpu(), iou[keep][idx].cpu(), self.box_nms_thresh)
        return keep[idx[k.to(idx.device)]].sort().values

    @staticmethod
    def _uncrop(masks: torch.Tensor, crop_box: List[int], orig_size: Tuple[int, int]) -> torch.Tensor:
        """(n, h, w) crop-frame masks -> (n, H, W), zero outside the crop."""
        x0, y0, x1, y1 = crop_box
        H, W = orig_size
        if (x0, y0, x1, y1) == (0, 0, W, H):
            return masks
        return F.pad(masks, (x0, W - x1, y0, H - y1), value=False)

    def _postprocess_small_regions(self, data: _Records, min_area: int, nms_thresh: float) -> None:
        """Fill small holes, drop small islands, then NMS again (unchanged masks preferred)."""
        from pycocotools import mask as mask_utils

        new_rles: Dict[int, dict] = {}
        boxes = torch.zeros(len(data), 4, dtype=torch.int64)
        scores = torch.zeros(len(data))
        for i, rle in enumerate(data.rles):
            mask = mask_utils.decode(rle).astype(bool)
            mask, changed_h = remove_small_regions(mask, min_area, "holes")
            mask, changed_i = remove_small_regions(mask, min_area, "islands")
            boxes[i] = torch.from_numpy(_mask_box_np(mask))
            if changed_h or changed_i:
                new_rles[i] = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            else:
                scores[i] = 1.0
        keep = _nms(boxes, scores, nms_thresh)
        for i in keep.tolist():
            if i in new_rles:
                data.rles[i] = new_rles[i]
                data.boxes[i] = boxes[i]
        data.keep(keep)

    def _records(self, data: _Records) -> List[Dict[str, Any]]:
        from pycocotools import mask as mask_utils

        out = []
        for i, rle in enumerate(data.rles):
            if self.output_mode == "binary_mask":
                seg: Any = mask_utils.decode(rle).astype(bool)
            elif self.output_mode == "coco_rle":
                seg = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            else:
                seg = rle_to_uncompressed(rle)
            out.append({
                "segmentation": seg,
                "area": int(mask_utils.area(rle)),
                "bbox": _xywh(data.boxes[i].tolist()),
                "predicted_iou": float(data.iou[i]),
                "point_coords": [[float(v) for v in data.points[i].tolist()]],
                "stability_score": float(data.stability[i]),
                "crop_box": _xywh(data.crop_boxes[i].tolist()),
            })
        return out


# --- folders ------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[Path]:
    """Sorted image files of a folder, one image file, or a list of either."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += [q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".")]
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"no such image or folder: {p}")
    return sorted(set(files))


def _colours(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours: hues spaced by the golden ratio, so neighbours in the list differ."""
    import colorsys

    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb((i * 0.6180339887) % 1.0, 0.75, 0.95)] for i in range(n)], dtype=np.uint8).reshape(n, 3)


def render_amg_overlay(image: np.ndarray, masks: Iterable[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 with every mask blended in its own colour, largest first (small ones stay visible)."""
    masks = list(masks)
    out = image.astype(np.float32)
    cols = _colours(len(masks)).astype(np.float32)
    order = sorted(range(len(masks)), key=lambda k: -int(masks[k].sum()))
    for k in order:
        m = masks[k]
        out[m] = out[m] * (1 - alpha) + cols[k] * alpha
    return np.rint(out).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG")


def _masks_of(records: List[dict]) -> List[np.ndarray]:
    from pycocotools import mask as mask_utils

    out = []
    for r in records:
        seg = r["segmentation"]
        if isinstance(seg, np.ndarray):
            out.append(seg.astype(bool))
        elif isinstance(seg.get("counts"), list):
            h, w = seg["size"]
            out.append(mask_utils.decode(mask_utils.frPyObjects(seg, h, w)).astype(bool))
        else:
            out.append(mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode("ascii")}).astype(bool))
    return out


def _metadata_rows(records: List[dict]) -> List[str]:
    rows = [",".join(METADATA_COLUMNS)]
    for i, r in enumerate(records):
        vals = [str(i), str(r["area"]), *[str(v) for v in r["bbox"]], *[str(v) for v in r["point_coords"][0]],
                str(r["predicted_iou"]), str(r["stability_score"]), *[str(v) for v in r["crop_box"]]]
        rows.append(",".join(vals))
    return rows


def _coco_segmentation(seg: Any) -> dict:
    from pycocotools import mask as mask_utils

    if isinstance(seg, np.ndarray):
        rle = mask_utils.encode(np.asfortranarray(seg.astype(np.uint8)))
        return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    if isinstance(seg.get("counts"), list):
        h, w = seg["size"]
        rle = mask_utils.frPyObjects(seg, h, w)
        return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}
    return seg


def run_folder(
    generator: AutomaticMaskGenerator,
    inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    out_dir: Union[str, os.PathLike],
    output_format: str = "png",
    overlay: bool = True,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> Dict[str, Any]:
    """Run ``generator`` over images and write what the official ``scripts/amg.py`` writes.

    ``output_format="png"``: ``out_dir/<stem>/0.png, 1.png, ...`` (0/255 masks) and
    ``metadata.csv`` (:data:`METADATA_COLUMNS`). ``"coco"``: ``out_dir/<stem>/annotations.json``
    per image (the RLE annotations) and, once every image of the shard is done,
    ``out_dir/annotations[.rank-of-world].json`` with all of them (COCO ``images`` + ``annotations``,
    ``segmentation`` as compressed RLE). ``overlay``: ``<stem>/overlay.png``, each mask in its own
    colour.

    Resume: an image whose folder exists is skipped. Each image's results are written into a hidden
    temp folder in ``out_dir`` and renamed into place when complete, so a killed run leaves no
    half-written image folder. Sharding: image ``i`` of the sorted list goes to rank ``i % world_size``.
    Bad images (unreadable, wrong shape) are reported and skipped; nothing is written for them.

    Returns ``{"done": [...], "skipped": [...], "failed": {name: message}}`` (stems).
    """
    import json
    from glob import escape as glob_escape

    from .io import atomic_write, fsync_dir, read_image

    if output_format not in ("png", "coco"):
        raise InputError(f"output_format must be 'png' or 'coco', got {output_format!r}")
    if not (0 <= rank < world_size):
        raise InputError(f"rank {rank} is not in 0..{world_size - 1}")
    files = list_images(inputs)
    stems = [f.stem for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise InputError(f"two inputs share the name {dupes[0]!r}; their result folders would collide")
    mine = files[rank::world_size]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: Dict[str, Any] = {"done": [], "skipped": [], "failed": {}}
    # Leftovers of a killed run: hidden '.amg-tmp-<stem>-*' folders of this shard's images only
    # (another rank may be writing its own right now).
    for path in mine:
        # mkdtemp adds 8 random characters: '????????' cannot match another image's longer stem
        for stale in out.glob(f".amg-tmp-{glob_escape(path.stem)}-????????"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)

    iterator: Iterable[Path] = mine
    if progress:
        from tqdm import tqdm

        iterator = tqdm(mine, desc=f"amg{'' if world_size == 1 else f' [{rank}/{world_size}]'}", unit="img")
    for path in iterator:
        final = out / path.stem
        if final.is_dir():
            result["skipped"].append(path.stem)
            continue
        try:
            image = read_image(path)
            records = generator.generate(image)
        except InputError as e:
            result["failed"][path.name] = str(e).splitlines()[0] if str(e) else type(e).__name__
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".amg-tmp-{path.stem}-", dir=out))
        try:
            masks = _masks_of(records) if (output_format == "png" or overlay) else []
            if output_format == "png":
                for i, m in enumerate(masks):
                    _write_png(tmp / f"{i}.png", np.where(m, np.uint8(255), np.uint8(0)))
                (tmp / "metadata.csv").write_text("\n".join(_metadata_rows(records)) + "\n")
            else:
                anns = [{**{k: v for k, v in r.items() if k != "segmentation"}, "segmentation": _coco_segmentation(r["segmentation"])} for r in records]
                (tmp / "annotations.json").write_text(json.dumps({"file_name": path.name, "height": int(image.shape[0]), "width": int(image.shape[1]), "annotations": anns}))
            if overlay:
                _write_png(tmp / "overlay.png", render_amg_overlay(image, masks))
            del masks
            for f in tmp.iterdir():  # data on disk before the rename makes the folder visible
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
            fsync_dir(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        result["done"].append(path.stem)

    if output_format == "coco":
        images, annotations = [], []
        for path in mine:
            image_id = files.index(path)  # the position in the whole sorted list: unique across shards
            per = out / path.stem / "annotations.json"
            if not per.is_file():
                continue
            d = json.loads(per.read_text())
            images.append({"id": image_id, "file_name": d["file_name"], "height": d["height"], "width": d["width"]})
            for a in d["annotations"]:
                annotations.append({"id": len(annotations), "image_id": image_id, "category_id": 1, "iscrowd": 0, **a})
        name = "annotations.json" if world_size == 1 else f"annotations.{rank}-of-{world_size}.json"
        doc = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
        atomic_write(out / name, lambda f: f.write(json.dumps(doc).encode()))
    return result
