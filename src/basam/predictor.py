"""Encode an image once, answer many prompts: the ``SamPredictor`` interface at any resolution."""

from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .constants import MIN_RESOLUTION
from .errors import BasamNote, InputError
from .models.sam import ImageFeatures, Sam
from .transforms import ResizeLongestSide


def check_resolution(resolution: object) -> int:
    """Validate a working resolution (longest side in px)."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise InputError(f"resolution must be a positive integer, got {resolution!r}")
    if resolution < MIN_RESOLUTION:
        raise InputError(f"resolution must be at least {MIN_RESOLUTION} px, got {resolution}")
    return int(resolution)


def check_image(image: np.ndarray) -> np.ndarray:
    """``image`` itself if it is a non-empty (H, W, 3) uint8 array; a one-line InputError otherwise."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"image must be an HxWx3 uint8 array, got shape {image.shape} and dtype {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise InputError(f"image is empty: {image.shape}")
    return image


def check_prompts(point_coords, point_labels, box, width: int, height: int) -> None:
    """Raise a one-line :class:`InputError` unless the prompts fit a ``width`` x ``height`` image.

    Points: (N, 2) finite, ``0 <= x <= W``, ``0 <= y <= H``, with one 0/1 label each. Box: x0, y0,
    x1, y1 finite, inside the image, with a positive area (a zero-area box prompts nothing).
    The one rule for the numpy ``predict`` and the command line.
    """
    W, H = width, height
    if point_coords is not None:
        pts = np.asarray(point_coords, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise InputError(f"point_coords must be Nx2, got shape {pts.shape}")
        if point_labels is None:
            raise InputError("point_labels must be given with point_coords")
        labels = np.asarray(point_labels)
        if labels.shape != (pts.shape[0],):
            raise InputError(f"point_labels must have one label per point ({pts.shape[0]}), got shape {labels.shape}")
        if not np.all(np.isin(labels, (0, 1))):
            raise InputError("point labels must be 1 (foreground) or 0 (background)")
        for x, y in pts:
            if not (np.isfinite(x) and np.isfinite(y)) or not (0 <= x <= W and 0 <= y <= H):
                raise InputError(f"point ({x:g}, {y:g}) is outside the {W}x{H} image")
    if box is not None:
        b = np.asarray(box, dtype=float)
        if b.size != 4:
            raise InputError(f"box must have 4 numbers x0,y0,x1,y1, got shape {b.shape}")
        x0, y0, x1, y1 = b.reshape(4)
        if not np.all(np.isfinite(b)):
            raise InputError("box coordinates must be finite")
        if x1 < x0 or y1 < y0:
            raise InputError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has x1 < x0 or y1 < y0")
        if x1 == x0 or y1 == y0:
            raise InputError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero area (x1 == x0 or y1 == y0)")
        if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
            raise InputError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the {W}x{H} image")


class Predictor:
    """Drop-in for ``segment_anything.SamPredictor`` with a working ``resolution``.

    ``resolution`` (default: the model's pretraining size, 1024 for SAM) is the longest side the
    image is resized to; the encoder runs on the square padded to a multiple of 16. Masks come
    back at the original image size.
    """

    def __init__(self, sam_model: Sam, resolution: Optional[int] = None) -> None:
        self.model = sam_model
        self.resolution = check_resolution(resolution if resolution is not None else sam_model.img_size)
        self.transform = ResizeLongestSide(self.resolution)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- image --------------------------------------------------------------------------------

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an (H, W, 3) uint8 image in ``RGB`` or ``BGR`` order."""
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"image_format must be RGB or BGR, got {image_format!r}")
        image = check_image(np.asarray(image))
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        input_image = self.transform.apply_image(np.ascontiguousarray(image))
        input_torch = torch.as_tensor(input_image, device=self.device).permute(2, 0, 1).contiguous()[None]
        self.set_torch_image(input_torch, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: Tuple[int, ...]) -> None:
        """Encode a (1, 3, h, w) image already resized so its longest side is ``resolution``."""
        if transformed_image.ndim != 4 or transformed_image.shape[1] != 3 or max(transformed_image.shape[2:]) != self.resolution:
            raise InputError(f"set_torch_image expects 1x3xHxW with longest side {self.resolution}, got {tuple(transformed_image.shape)}")
        self.reset_image()
        self.original_size = tuple(int(s) for s in original_image_size)
        self.input_size = tuple(transformed_image.shape[-2:])
        x = self.model.preprocess(transformed_image.to(self.model.pixel_mean.dtype), self.resolution)
        self._features = self.model.encode(x)
        self.is_image_set = True

    @property
    def features(self) -> Optional[torch.Tensor]:
        """The image embedding (1, C, h, w), as ``SamPredictor.features``; None before ``set_image``."""
        return None if self._features is None else self._features.embeddings

    @property
    def interm_features(self):
        """HQ-SAM's early ViT features (as ``SamPredictor.interm_features``), else None."""
        return None if self._features is None else self._features.interm

    def get_image_embedding(self) -> torch.Tensor:
        """The image embedding (1, C, h, w) of the current image."""
        self._require_image()
        return self.features

    def reset_image(self) -> None:
        self.is_image_set = False
        self._features: Optional[ImageFeatures] = None
        self.original_size = None
        self.input_size = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("an image must be set with .set_image(...) before mask prediction")

    @property
    def mask_input_size(self) -> Tuple[int, int]:
        """The (4h, 4w) size low-resolution mask logits have at this resolution."""
        self._require_image()
        return self.model.prompt_encoder.mask_input_size(self._features.grid)

    # --- prompts ------------------------------------------------------------------------------

    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: Optional[bool] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt set, in the original image frame.

        Args:
            point_coords: (N, 2) x, y pixels. point_labels: (N,) 1 = foreground, 0 = background.
            box: (4,) x0, y0, x1, y1 pixels.
            mask_input: (1, 4h, 4w) low-res logits from a previous call; other sizes are resized.
            hq_token_only: HQ-SAM models: None uses the model's ``hq_fusion``.
        Returns:
            masks (C, H, W) bool (or float logits), scores (C,), low-res logits (C, 4h, 4w).
        """
        self._require_image()
        if point_coords is None and box is None and mask_input is None:
            raise InputError("no prompt given: pass at least one point, a box or a mask")
        check_prompts(point_coords, point_labels, box, self.original_size[1], self.original_size[0])
        coords_t = labels_t = box_t = mask_t = None
        if point_coords is not None:
            coords = self.transform.apply_coords(np.asarray(point_coords, dtype=float), self.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels_t = torch.as_tensor(np.asarray(point_labels), dtype=torch.int, device=self.device)[None]
        if box is not None:
            b = self.transform.apply_boxes(np.asarray(box, dtype=float).reshape(1, 4), self.original_size)
            box_t = torch.as_tensor(b, dtype=torch.float, device=self.device)
        if mask_input is not None:
            mask_t = torch.as_tensor(np.asarray(mask_input), dtype=torch.float, device=self.device)
            if mask_t.ndim == 2:
                mask_t = mask_t[None]
            if mask_t.ndim != 3 or mask_t.shape[0] != 1:
                raise InputError(f"mask_input must be 1xHxW low-resolution logits, got shape {tuple(mask_t.shape)}")
            if not bool(torch.isfinite(mask_t).all()):
                raise InputError("mask_input holds NaN or infinite values; pass the low-res logits of an earlier predict")
            mask_t = mask_t[None]
        masks, iou, low_res = self.predict_torch(coords_t, labels_t, box_t, mask_t, multimask_output, return_logits, hq_token_only)
        return masks[0].cpu().numpy(), iou[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    def _single_mask_untrained(self) -> bool:
        """Whether this model's single-mask output is untrained (``model.trained_outputs``); says so once."""
        if getattr(self.model, "trained_outputs", "all") != "multimask" or self.model.is_hq:
            return False
        if not getattr(self.model, "_told_single_mask", False):
            self.model._told_single_mask = True
            warnings.warn(f"{self.model.name} was trained for multimask outputs only: a single mask is the best-scoring "
                          "of its 3 candidates", BasamNote, stacklevel=4)
        return True

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: Optional[torch.Tensor],
        point_labels: Optional[torch.Tensor],
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        hq_token_only: Optional[bool] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts already in the resized frame (``self.transform.apply_coords_torch``).

        Args:
            point_coords: (B, N, 2); point_labels: (B, N); boxes: (B, 4); mask_input: (B, 1, H', W').
        Returns:
            masks (B, C, H, W), iou predictions (B, C), low-res logits (B, C, 4h, 4w).
            ``multimask_output=False`` on a model whose single-mask token is untrained
            (``model.trained_outputs == "multimask"``, basam_tiny) gives the best-scoring
            multimask candidate (C = 1).
        """
        self._require_image()
        if mask_input is not None:
            expected = self.mask_input_size
            if tuple(mask_input.shape[-2:]) != expected:
                mask_input = F.interpolate(mask_input.float(), expected, mode="bilinear", align_corners=False)
        best_of_multimask = not multimask_output and self._single_mask_untrained()
        low_res, iou = self.model.decode(self._features, point_coords, point_labels, boxes, mask_input,
                                         multimask_output or best_of_multimask, hq_token_only)
        if best_of_multimask:  # the untrained single-mask token: the best-scoring trained candidate
            best = iou.argmax(dim=1, keepdim=True)  # (B, 1)
            iou = iou.gather(1, best)
            low_res = low_res.gather(1, best[..., None, None].expand(-1, 1, *low_res.shape[-2:]))
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size, self._features.input_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res
