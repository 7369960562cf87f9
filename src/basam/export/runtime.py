"""Run an exported encoder / decoder pair with onnxruntime, behind :class:`basam.Predictor`'s interface."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..predictor import check_image
from ..transforms import ResizeLongestSide
from .exporter import METADATA_FILE


def _bilinear_resize(masks: np.ndarray, size: Tuple[int, int], antialias: bool = False) -> np.ndarray:
    """(C, h, w) float -> (C, H, W), bilinear with half-pixel centres (``align_corners=False``);
    ``antialias`` as SAM 2's predictor resizes images and mask prompts."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[None]
    return F.interpolate(t, size, mode="bilinear", align_corners=False, antialias=antialias)[0].numpy()


def _stability(logits: np.ndarray, delta: float) -> np.ndarray:
    """IoU of (M, h, w) logits thresholded at +delta and -delta, (M,) float32, as Sam2MaskDecoder."""
    flat = logits.reshape(logits.shape[0], -1)
    inter = (flat > delta).sum(-1).astype(np.float32)
    union = (flat > -delta).sum(-1).astype(np.float32)
    return np.where(union > 0, inter / np.maximum(union, 1), np.float32(1.0))


class OnnxPredictor:
    """``set_image`` / ``predict`` as :class:`basam.Predictor`, on the pair ``basam.export.export_onnx`` wrote.

    The working resolution, the model family and the decoder's export options come from
    ``basam_onnx.json`` in ``onnx_dir``. Differences from :class:`basam.Predictor`, all fixed by the
    export: the resolution; HQ-SAM's ``hq_token_only`` and ``multimask_output`` (``predict``
    follows the export and refuses a value that differs); a decoder exported with
    ``return_single_mask`` returns one mask whatever ``multimask_output`` says.

    SAM 2 exports (``family`` "sam2") behave as :class:`basam.Sam2Predictor`: the image is stretched
    to R x R (bilinear, antialiased), prompts in original-image pixels are scaled to that frame, a
    box goes first as two corners, a padding point always ends the clicks, a single mask follows
    the decoder's "multimask via stability" rule, and the low-res logits come back clamped to
    [-32, 32]. ``object_score_logits`` (1, 1) of the last ``predict`` (> 0: an object) is kept in
    :attr:`object_score_logits`.

    Args:
        onnx_dir: the export folder.
        quantized: run ``encoder.quant.onnx`` / ``decoder.quant.onnx``.
        providers: onnxruntime execution providers (default CPU).
        threads: intra-op threads (default: onnxruntime's choice).
    """

    def __init__(self, onnx_dir, quantized: bool = False, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - depends on the installation
            raise InputError("the onnx runtime needs onnxruntime: pip install 'basam[onnx]'") from None
        self.onnx_dir = Path(onnx_dir)
        meta_path = self.onnx_dir / METADATA_FILE
        if not meta_path.is_file():
            raise InputError(f"{self.onnx_dir} holds no basam ONNX export ({METADATA_FILE} missing); run basam export onnx")
        self.meta = json.loads(meta_path.read_text())
        enc_name, dec_name = self.meta["encoder"], self.meta["decoder"]
        if quantized:
            if "encoder_quant" not in self.meta:
                raise InputError(f"{self.onnx_dir} has no quantized graphs; export with quantize=True (--quantize)")
            enc_name, dec_name = self.meta["encoder_quant"], self.meta["decoder_quant"]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = list(providers or ["CPUExecutionProvider"])
        self.encoder = ort.InferenceSession(str(self.onnx_dir / enc_name), options, providers=providers)
        self.decoder = ort.InferenceSession(str(self.onnx_dir / dec_name), options, providers=providers)
        self.resolution = int(self.meta["resolution"])
        self.is_hq = bool(self.meta["hq"])
        # exports written before SAM 2 support record no family: they are SAM / MobileSAM / HQ-SAM
        self.family = self.meta.get("family", "sam")
        self.is_sam2 = self.family == "sam2"
        # the encoder ends with the stride-4 / stride-8 maps (SAM 2; a ViT with a detail branch)
        self.has_high_res = self.is_sam2 or bool(self.meta.get("high_res", False))
        self.mask_threshold = float(self.meta.get("mask_threshold", 0.0))
        self.image_format = self.meta.get("image_format", "RGB")
        self.grid = tuple(self.meta["grid"])
        self.transform = ResizeLongestSide(self.resolution)
        self.reset_image()

    # --- image --------------------------------------------------------------------------------

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features: Optional[np.ndarray] = None
        self.interm_features: Optional[np.ndarray] = None
        self.high_res_features: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self.object_score_logits: Optional[np.ndarray] = None
        self.original_size = None
        self.input_size = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode an (H, W, 3) uint8 image in ``RGB`` or ``BGR`` order."""
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"image_format must be RGB or BGR, got {image_format!r}")
        image = check_image(np.asarray(image))
        if image_format != self.image_format:
            image = image[..., ::-1]
        self.reset_image()
        if self.is_sam2:
            x = self._stretch(image)
            self.input_size = (self.resolution, self.resolution)
        else:
            resized = self.transform.apply_image(np.ascontiguousarray(image))
            x = resized.transpose(2, 0, 1)[None].astype(np.float32)  # (1, 3, h, w), 0..255
            self.input_size = tuple(resized.shape[:2])
        outs = self.encoder.run(None, {"image": x})
        self.features = outs[0]
        self.interm_features = outs[1] if self.is_hq else None
        self.high_res_features = (outs[-2], outs[-1]) if self.has_high_res else None
        self.original_size = tuple(int(s) for s in image.shape[:2])
        self.is_image_set = True

    def _stretch(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (1, 3, R, R) float32 0..255, resized as :class:`basam.Sam2Predictor` does."""
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # a copy: the image may be read-only
        R = self.resolution
        if tuple(t.shape[-2:]) != (R, R):
            t = F.interpolate(t, (R, R), mode="bilinear", align_corners=False, antialias=True)
        return t.numpy()

    def get_image_embedding(self) -> np.ndarray:
        """The image embedding (1, C, h, w) of the current image."""
        self._require_image()
        return self.features

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("an image must be set with .set_image(...) before mask prediction")

    @property
    def mask_input_size(self) -> Tuple[int, int]:
        return 4 * self.grid[0], 4 * self.grid[1]

    # --- prompts ------------------------------------------------------------------------------

    def _to_stretched(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) x, y in original pixels -> the R x R frame, in float32 as Sam2Predictor computes it."""
        c = np.array(xy, dtype=np.float32).reshape(-1, 2)
        h, w = self.original_size
        c[:, 0] = c[:, 0] / np.float32(w)
        c[:, 1] = c[:, 1] / np.float32(h)
        return c * np.float32(self.resolution)

    def _sam2_points(self, point_coords, point_labels, box):
        """SAM 2's layout: box corners (labels 2, 3), then the clicks, then one padding point (-1);
        nothing at all for a mask prompt alone (as Sam2PromptEncoder)."""
        coords, labels = [np.zeros((0, 2), np.float32)], [np.zeros((0,), np.float32)]
        if box is not None:
            coords.append(self._to_stretched(np.asarray(box, dtype=np.float32).reshape(2, 2)))
            labels.append(np.array([2.0, 3.0], np.float32))
        if point_coords is not None:
            coords.append(self._to_stretched(point_coords))
            labels.append(np.asarray(point_labels, dtype=np.float32).reshape(-1))
        if box is not None or point_coords is not None:
            coords.append(np.zeros((1, 2), np.float32))
            labels.append(np.array([-1.0], np.float32))
        return np.concatenate(coords), np.concatenate(labels)

    def _sam_points(self, point_coords, point_labels, box):
        """The official ONNX example's layout: the clicks in the resized-longest-side frame, then the
        box as two corners labelled 2 and 3, else a padding point labelled -1."""
        coords = np.zeros((0, 2), dtype=np.float64)
        labels = np.zeros((0,), dtype=np.float64)
        if point_coords is not None:
            coords = self.transform.apply_coords(np.asarray(point_coords, dtype=float), self.original_size)
            labels = np.asarray(point_labels, dtype=np.float64)
        if box is not None:
            corners = self.transform.apply_boxes(np.asarray(box, dtype=float).reshape(1, 4), self.original_size).reshape(2, 2)
            coords = np.concatenate([coords, corners], axis=0)
            labels = np.concatenate([labels, [2.0, 3.0]])
        elif point_coords is not None:
            coords = np.concatenate([coords, [[0.0, 0.0]]], axis=0)
            labels = np.concatenate([labels, [-1.0]])
        return coords, labels

    def decoder_inputs(self, point_coords=None, point_labels=None, box=None, mask_input=None) -> dict:
        """The decoder's feed for prompts in the original frame (point layout: :meth:`_sam_points`,
        SAM 2: :meth:`_sam2_points`)."""
        points = self._sam2_points if self.is_sam2 else self._sam_points
        coords, labels = points(point_coords, point_labels, box)
        if mask_input is not None:
            mask = np.asarray(mask_input, dtype=np.float32)
            if mask.ndim == 2:
                mask = mask[None]
            if mask.ndim != 3 or mask.shape[0] != 1:
                raise InputError(f"mask_input must be 1xHxW low-resolution logits, got shape {mask.shape}")
            if not np.all(np.isfinite(mask)):
                raise InputError("mask_input holds NaN or infinite values; pass the low-res logits of an earlier predict")
            if tuple(mask.shape[-2:]) != self.mask_input_size:
                mask = _bilinear_resize(mask, self.mask_input_size, antialias=self.is_sam2)
            mask, has_mask = mask[None], np.ones(1, dtype=np.float32)
        else:
            mask = np.zeros((1, 1, *self.mask_input_size), dtype=np.float32)
            has_mask = np.zeros(1, dtype=np.float32)
        feed = {
            "image_embeddings": self.features,
            "point_coords": coords[None].astype(np.float32),
            "point_labels": labels[None].astype(np.float32),
            "mask_input": mask,
            "has_mask_input": has_mask,
            "orig_im_size": np.asarray(self.original_size, dtype=np.float32),
        }
        if self.is_hq:
            feed["interm_embeddings"] = self.interm_features
        if self.has_high_res:
            feed["high_res_feats_0"], feed["high_res_feats_1"] = self.high_res_features
        return feed

    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: Optional[bool] = None,
        return_logits: bool = False,
        hq_token_only: Optional[bool] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt set in the original frame, as :meth:`basam.Predictor.predict`.

        ``multimask_output`` None: True for SAM / MobileSAM (as :class:`basam.Predictor`), the
        exported choice for HQ-SAM. ``hq_token_only`` None: the exported choice.

        Returns:
            masks (C, H, W) bool (or float logits), scores (C,), low-res logits (C, 4h, 4w).
        """
        from ..predictor import check_prompts

        self._require_image()
        if point_coords is None and box is None and mask_input is None:
            raise InputError("no prompt given: pass at least one point, a box or a mask")
        check_prompts(point_coords, point_labels, box, self.original_size[1], self.original_size[0])
        if hq_token_only is not None:
            if not self.is_hq:
                raise InputError("hq_token_only applies to HQ-SAM models (sam_hq_*)")
            if bool(hq_token_only) != bool(self.meta["hq_token_only"]):
                raise InputError(f"this decoder was exported with hq_token_only={self.meta['hq_token_only']}; export again to change it")
        if self.is_hq and multimask_output is not None and bool(multimask_output) != bool(self.meta["multimask_output"]):
            raise InputError(f"this HQ-SAM decoder was exported with multimask_output={self.meta['multimask_output']}; "
                             "export again to change it")
        multimask_output = True if multimask_output is None else bool(multimask_output)
        outs = self.decoder.run(None, self.decoder_inputs(point_coords, point_labels, box, mask_input))
        masks, iou, low_res = outs[0][0], outs[1][0], outs[2][0]
        self.object_score_logits = outs[3] if self.is_sam2 else None
        if masks.shape[0] == 4:  # all of SAM's tokens: pick as basam.Predictor does
            if multimask_output:
                sl = slice(1, None)
            elif self.is_sam2:
                sl = self._sam2_single(iou, low_res)
            elif self.meta.get("trained_outputs", "all") == "multimask":
                # the single-mask token is untrained: the best-scoring multimask candidate instead
                best = 1 + int(np.argmax(iou[1:]))
                sl = slice(best, best + 1)
            else:
                sl = slice(0, 1)
            masks, iou, low_res = masks[sl], iou[sl], low_res[sl]
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, low_res

    def _sam2_single(self, iou: np.ndarray, low_res: np.ndarray) -> slice:
        """Sam2MaskDecoder's single-mask rule in eval: token 0 where its logits are stable (the clamp
        to +-32 does not move the +-delta thresholds), else the best multimask token."""
        if self.meta.get("dynamic_multimask_via_stability", True):
            stable = _stability(low_res[:1], float(self.meta["stability_delta"]))[0] >= np.float32(self.meta["stability_thresh"])
            if not stable:
                best = 1 + int(np.argmax(iou[1:]))
                return slice(best, best + 1)
        return slice(0, 1)
