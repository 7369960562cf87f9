"""The Segment Anything model: image encoder + prompt encoder + mask decoder, at any resolution."""

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import AttentionConfig, ConfiguresAttention, set_attention
from ..errors import InputError
from .mask_decoder_hq import MaskDecoderHQ, check_fusion
from .prompt_encoder import PromptEncoder
from .cuda_graph import graph_cache_of
from .encoder import ImageEncoder, ImageFeatures
from .transformer import Attention as DecoderAttention


class Sam(ConfiguresAttention, nn.Module):
    """SAM, MobileSAM or HQ-SAM, depending on the encoder and decoder it is built with.

    ``img_size`` is the pretraining input size (1024 for every official model); it sets N_train for
    BA-SAM and is the default working resolution.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    #: which decoder outputs the weights were trained for: ``all`` (every official model), or
    #: ``multimask`` (trained with one-point prompts only: the single-mask token is untrained, so
    #: :class:`basam.Predictor` answers ``multimask_output=False`` with the best multimask candidate).
    #: Read from a basam checkpoint's metadata by the loader.
    trained_outputs: str = "all"

    def __init__(self, image_encoder: ImageEncoder, prompt_encoder: PromptEncoder, mask_decoder: nn.Module,
                 pixel_mean: Sequence[float] = (123.675, 116.28, 103.53), pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
                 name: str = "sam") -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.name = name
        self.img_size = image_encoder.img_size
        #: the registry entry this model was built from (set by build_sam; None for hand-built models)
        self.spec = None
        grid = self.img_size // image_encoder.stride
        for m in self.mask_decoder.modules():
            if isinstance(m, DecoderAttention):
                m.train_image_tokens = grid * grid
                m.token_stride = image_encoder.stride
        self.attention_config = AttentionConfig()
        #: Replay the image encoder from captured CUDA graphs (inference on CUDA only; one graph per
        #: input shape, see basam.models.cuda_graph). Removes the per-kernel launch cost that
        #: dominates at 1024 px; costs the activation memory of each captured shape.
        self.cuda_graphs = False

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def is_hq(self) -> bool:
        return isinstance(self.mask_decoder, MaskDecoderHQ)

    # --- configuration ------------------------------------------------------------------------

    def set_attention(self, config: "AttentionConfig | str", reset_slopes: bool = True, **overrides) -> AttentionConfig:
        """Switch every attention layer to ``config`` (a preset name or an AttentionConfig)."""
        return set_attention(self, config, reset_slopes=reset_slopes, **overrides)

    def configure_attention(self, config: AttentionConfig, reset_slopes: bool = True) -> None:
        self.attention_config = config
        graph_cache_of(self).clear()  # captured CUDA graphs hold the old scales and bias settings

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .half() replace the parameters a captured graph reads: drop the graphs
        graph_cache_of(self).clear()
        return super()._apply(fn, *args, **kwargs)

    def set_hq_fusion(self, mode: str) -> None:
        if not self.is_hq:
            raise ValueError(f"{self.name} has no HQ-Output token; hq_fusion applies to sam_hq_* models")
        self.mask_decoder.hq_fusion = check_fusion(mode)

    # --- the three stages ---------------------------------------------------------------------

    def padded_size(self, resolution: int) -> int:
        """The square side the encoder runs at for a longest side of ``resolution`` px."""
        m = self.image_encoder.pad_multiple
        return int(math.ceil(resolution / m) * m)

    def preprocess(self, x: Tensor, resolution: Optional[int] = None) -> Tensor:
        """Normalise (B, 3, h, w) pixels in 0..255 and zero-pad to a square of ``padded_size``."""
        side = self.padded_size(resolution or max(x.shape[-2:]))
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        if h > side or w > side:
            raise ValueError(f"image {h}x{w} does not fit the {side}x{side} encoder input")
        return F.pad(x, (0, side - w, 0, side - h))

    def encode(self, x: Tensor) -> ImageFeatures:
        """Encode preprocessed images (B, 3, S, S)."""
        if self.cuda_graphs and not self.training:
            out = graph_cache_of(self)(self.image_encoder, x)
        else:
            out = self.image_encoder(x)
        return ImageEncoder.features(out, (x.shape[-2], x.shape[-1]), keep_interm=self.is_hq)

    def decode_all_tokens(self, features: ImageFeatures, point_coords: Optional[Tensor] = None,
                          point_labels: Optional[Tensor] = None, boxes: Optional[Tensor] = None,
                          mask_inputs: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Every mask token's logits (B, 4, 4h, 4w) and IoU (B, 4), single-mask token first, in one
        decoder pass (training losses on all outputs). SAM's own decoder only: HQ-SAM refuses."""
        if self.is_hq:
            raise InputError("decode_all_tokens: HQ-SAM's decoder returns one fused mask, not every token's")
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.prompt_encoder(points, boxes, mask_inputs, input_size=features.input_size, grid=features.grid)
        return self.mask_decoder.predict_masks(features.embeddings, self.prompt_encoder.get_dense_pe(features.grid), sparse, dense,
                                               **self._high_res(features))

    def decode(self, features: ImageFeatures, point_coords: Optional[Tensor] = None, point_labels: Optional[Tensor] = None,
               boxes: Optional[Tensor] = None, mask_inputs: Optional[Tensor] = None, multimask_output: bool = True,
               hq_token_only: Optional[bool] = None) -> Tuple[Tensor, Tensor]:
        """Low-resolution mask logits (B, M, 4h, 4w) and IoU predictions (B, M).

        Prompts are in the padded input frame. ``features`` holds one image (shared by all B
        prompts) or B images (one prompt set each).
        """
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.prompt_encoder(points, boxes, mask_inputs, input_size=features.input_size, grid=features.grid)
        kwargs: Dict[str, Any] = {}
        if hq_token_only is not None and not self.is_hq:
            raise InputError(f"hq_token_only applies to HQ-SAM models (sam_hq_*), not {self.name}")
        if self.is_hq:
            kwargs = dict(hq_token_only=hq_token_only, interm_embeddings=features.interm)
        kwargs.update(self._high_res(features))
        return self.mask_decoder(
            image_embeddings=features.embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(features.grid),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            **kwargs,
        )

    def _high_res(self, features: ImageFeatures) -> Dict[str, Any]:
        """The decoder's keyword for the encoder's stride-4 / stride-8 maps, where it reads them."""
        return {"high_res_features": features.multiscale} if getattr(self.mask_decoder, "uses_high_res", False) else {}

    def postprocess_masks(self, masks: Tensor, input_size: Tuple[int, int], original_size: Tuple[int, int], padded_size: Tuple[int, int]) -> Tensor:
        """Upscale (B, M, 4h, 4w) logits to the padded input, crop the padding, resize to the original."""
        masks = F.interpolate(masks, padded_size, mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)

    def forward(self, batched_input: List[Dict[str, Any]], multimask_output: bool, hq_token_only: Optional[bool] = None) -> List[Dict[str, Tensor]]:
        """End-to-end prediction with the official ``Sam.forward`` contract (no ``no_grad``).

        Each record: ``image`` (3, h, w) already resized, ``original_size``, and optional
        ``point_coords``/``point_labels``/``boxes``/``mask_inputs`` in the resized frame;
        ``resolution`` (optional) sets the encoder input side.
        """
        side = max(self.padded_size(r.get("resolution") or max(r["image"].shape[-2:])) for r in batched_input)
        images = torch.stack([self.preprocess(r["image"], side) for r in batched_input], dim=0)
        feats = self.encode(images)
        outputs = []
        for i, rec in enumerate(batched_input):
            low_res, iou = self.decode(feats.select(i), rec.get("point_coords"), rec.get("point_labels"), rec.get("boxes"),
                                       rec.get("mask_inputs"), multimask_output, hq_token_only)
            masks = self.postprocess_masks(low_res, tuple(rec["image"].shape[-2:]), tuple(rec["original_size"]), feats.input_size)
            outputs.append({"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res})
        return outputs
