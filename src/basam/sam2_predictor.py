"""The official ``SAM2ImagePredictor`` interface for basam's SAM 2 models, at any resolution.

As the official predictor, the image is resized (stretched) to ``resolution`` x ``resolution``
(bilinear with antialiasing), prompts are mapped to that frame (``normalize_coords=True``: they
are in pixels of the original image; ``False``: already normalised to [0, 1]), masks come back at
the original size and the low-resolution logits are clamped to [-32, 32]. ``resolution`` defaults
to the model's 1024; any multiple of 32 runs the encoder on the real grid (others are zero-padded).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .models.encoder import ImageFeatures
from .models.sam2 import Sam2
from .predictor import check_image, check_prompts, check_resolution

__all__ = ["Sam2Predictor"]


def _as_rgb_array(image) -> np.ndarray:
    """An (H, W, 3) uint8 array from a numpy array or a PIL image (one-line InputError otherwise)."""
    if hasattr(image, "convert") and hasattr(image, "size") and not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be an HxWx3 uint8 numpy array or a PIL image, got {type(image).__name__}")
    return check_image(image)


class Sam2Predictor:
    """Drop-in for ``sam2.sam2_image_predictor.SAM2ImagePredictor`` on a basam :class:`~basam.models.sam2.Sam2`."""

    def __init__(self, sam_model: Sam2, resolution: Optional[int] = None, mask_threshold: float = 0.0) -> None:
        if not isinstance(sam_model, Sam2):
            raise InputError(f"Sam2Predictor needs a SAM 2 model (sam2.1_hiera_*, sam2_hiera_*), not {getattr(sam_model, 'name', sam_model)}")
        self.model = sam_model
        self.resolution = check_resolution(resolution if resolution is not None else sam_model.img_size)
        self.mask_threshold = mask_threshold
        self.reset_predictor()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_predictor(self) -> None:
        self._is_image_set = False
        self._is_batch = False
        self._features: Optional[ImageFeatures] = None
        self._orig_hw: List[Tuple[int, int]] = []

    # --- images -------------------------------------------------------------------------------

    def _encode(self, images: Sequence[np.ndarray]) -> None:
        R = self.resolution
        side = self.model.padded_size(R)
        batch = []
        for im in images:
            t = torch.as_tensor(im, device=self.device).permute(2, 0, 1)[None].float()  # (1, 3, H, W) 0..255
            if tuple(t.shape[-2:]) != (R, R):
                t = F.interpolate(t, (R, R), mode="bilinear", align_corners=False, antialias=True)
            batch.append(self.model.preprocess(t.to(self.model.pixel_mean.dtype), side))
        with torch.no_grad():
            self._features = self.model.encode(torch.cat(batch, dim=0))
        self._input_size = (R, R)
        self._is_image_set = True

    def set_image(self, image) -> None:
        """Encode one (H, W, 3) uint8 RGB array or PIL image."""
        image = _as_rgb_array(image)
        self.reset_predictor()
        self._orig_hw = [tuple(image.shape[:2])]
        self._encode([image])

    def set_image_batch(self, image_list: List[np.ndarray]) -> None:
        """Encode a list of (H, W, 3) uint8 RGB arrays in one batch (then use :meth:`predict_batch`)."""
        if not isinstance(image_list, list) or not image_list:
            raise InputError("set_image_batch needs a non-empty list of HxWx3 uint8 arrays")
        images = [_as_rgb_array(im) for im in image_list]
        self.reset_predictor()
        self._orig_hw = [tuple(im.shape[:2]) for im in images]
        self._encode(images)
        self._is_batch = True

    def get_image_embedding(self) -> torch.Tensor:
        """The stride-16 image embedding (B, C, h, w) (with ``no_mem_embed`` added, as the official one)."""
        self._require_image()
        return self._features.embeddings

    @property
    def features(self) -> Optional[ImageFeatures]:
        """All levels: ``embeddings`` and ``multiscale`` (the projected stride-4 and stride-8 maps)."""
        return self._features

    def _require_image(self) -> None:
        if not self._is_image_set:
            raise RuntimeError("an image must be set with .set_image(...) before mask prediction")

    # --- prompts ------------------------------------------------------------------------------

    def _transform_coords(self, coords: np.ndarray, normalize: bool, img_idx: int) -> torch.Tensor:
        c = torch.as_tensor(np.asarray(coords, dtype=np.float32), device=self.device).clone()
        if normalize:
            h, w = self._orig_hw[img_idx]
            c[..., 0] = c[..., 0] / w
            c[..., 1] = c[..., 1] / h
        return c * self.resolution

    def _prep_prompts(self, point_coords, point_labels, box, mask_input, normalize_coords: bool, img_idx: int):
        if point_coords is None and box is None and mask_input is None:
            raise InputError("no prompt given: pass at least one point, a box or a mask")
        h, w = self._orig_hw[img_idx]
        # one prompt set (N x 2 points, one box) is checked against the frame it is given in
        pts = point_coords if point_coords is not None and np.asarray(point_coords).ndim == 2 else None
        bx = box if box is not None and np.asarray(box).size == 4 else None
        check_prompts(pts, point_labels if pts is not None else None, bx, *((w, h) if normalize_coords else (1, 1)))
        coords = labels = boxes = mask = None
        if point_coords is not None:
            if point_labels is None:
                raise InputError("point_labels must be given with point_coords")
            coords = self._transform_coords(point_coords, normalize_coords, img_idx)
            labels = torch.as_tensor(np.asarray(point_labels), dtype=torch.int, device=self.device)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            boxes = self._transform_coords(np.asarray(box, dtype=np.float32).reshape(-1, 2, 2), normalize_coords, img_idx).reshape(-1, 4)
        if mask_input is not None:
            mask = torch.as_tensor(np.asarray(mask_input), dtype=torch.float, device=self.device)
            if mask.ndim == 3:
                mask = mask[None]
            if mask.ndim != 4 or mask.shape[1] != 1:
                raise InputError(f"mask_input must be 1xHxW (or Bx1xHxW) low-resolution logits, got shape {tuple(mask.shape)}")
            if not bool(torch.isfinite(mask).all()):
                raise InputError("mask_input holds NaN or infinite values; pass the low-res logits of an earlier predict")
        return coords, labels, boxes, mask

    @torch.no_grad()
    def predict_torch(self, point_coords: Optional[torch.Tensor], point_labels: Optional[torch.Tensor],
                      boxes: Optional[torch.Tensor] = None, mask_input: Optional[torch.Tensor] = None,
                      multimask_output: bool = True, return_logits: bool = False, img_idx: int = 0):
        """Prompts already in the ``resolution`` frame: points (B, N, 2) + labels (B, N), boxes (B, 4),
        mask_input (B, 1, 4h, 4w). Returns masks (B, M, H, W), IoU (B, M), low-res logits (B, M, 4h, 4w)
        clamped to [-32, 32] and object-score logits (B, 1)."""
        self._require_image()
        feats = self._features.select(img_idx)
        if mask_input is not None:
            expected = self.model.prompt_encoder.mask_input_size(feats.grid)
            if tuple(mask_input.shape[-2:]) != expected:
                mask_input = F.interpolate(mask_input.float(), expected, mode="bilinear", align_corners=False, antialias=True)
        low_res, iou, obj = self.model.decode_with_object_scores(feats, point_coords, point_labels, boxes, mask_input, multimask_output)
        masks = self.model.postprocess_masks(low_res.float(), self._input_size, self._orig_hw[img_idx],
                                             tuple(feats.input_size))
        low_res = low_res.clamp(-32.0, 32.0)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, low_res, obj

    def predict(self, point_coords: Optional[np.ndarray] = None, point_labels: Optional[np.ndarray] = None,
                box: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None, multimask_output: bool = True,
                return_logits: bool = False, normalize_coords: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks (M, H, W) (or (B, M, H, W) for batched prompts), scores (M,), low-res logits (M, 4h, 4w)."""
        self._require_image()
        return self._predict_np(point_coords, point_labels, box, mask_input, multimask_output, return_logits, normalize_coords, 0)

    def predict_batch(self, point_coords_batch: Optional[List[np.ndarray]] = None, point_labels_batch: Optional[List[np.ndarray]] = None,
                      box_batch: Optional[List[np.ndarray]] = None, mask_input_batch: Optional[List[np.ndarray]] = None,
                      multimask_output: bool = True, return_logits: bool = False, normalize_coords: bool = True):
        """One :meth:`predict` per image of :meth:`set_image_batch`; three lists."""
        if not self._is_batch:
            raise RuntimeError("predict_batch needs images set with .set_image_batch(...)")
        out: Tuple[list, list, list] = ([], [], [])
        for i in range(len(self._orig_hw)):
            pick = lambda xs: xs[i] if xs is not None else None  # noqa: E731
            res = self._predict_np(pick(point_coords_batch), pick(point_labels_batch), pick(box_batch), pick(mask_input_batch),
                                   multimask_output, return_logits, normalize_coords, i)
            for acc, r in zip(out, res):
                acc.append(r)
        return out

    def _predict_np(self, point_coords, point_labels, box, mask_input, multimask_output, return_logits, normalize_coords, img_idx):
        coords, labels, boxes, mask = self._prep_prompts(point_coords, point_labels, box, mask_input, normalize_coords, img_idx)
        masks, iou, low_res, _ = self.predict_torch(coords, labels, boxes, mask, multimask_output, return_logits, img_idx)
        squeeze = lambda t: t.squeeze(0).float().cpu().numpy()  # noqa: E731
        return squeeze(masks), squeeze(iou), squeeze(low_res)

