"""SAM 2 / SAM 2.1 for images: Hiera + FPN encoder, SAM 2 prompt encoder and mask decoder.

:class:`Sam2` is a :class:`~basam.models.sam.Sam` (same ``preprocess`` / ``encode`` / ``decode`` /
``postprocess_masks`` / ``set_attention`` interface), so ``basam.Predictor``, the automatic mask
generator, ``evaluate`` and the trainer run it unchanged; :class:`basam.Sam2Predictor` offers the
official ``SAM2ImagePredictor`` interface. Video (memory attention, memory encoder, object
pointers) is out of scope: the checkpoint filter drops those weights by name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import AttentionConfig
from ..errors import InputError
from .encoder import ImageFeatures
from .family import ModelFamily, register_family
from .fpn_neck import Sam2ImageEncoder, build_sam2_encoder
from .hiera import HieraConfig
from .sam import Sam
from .sam2_decoder import Sam2MaskDecoder, Sam2PromptEncoder
from .transformer import TwoWayTransformer

__all__ = ["Sam2", "HieraConfig", "SAM2_FAMILY", "VIDEO_ONLY_PREFIXES", "split_video_keys", "sam2_checkpoint_filter",
           "build_sam2"]

log = logging.getLogger(__name__)

#: Official SAM 2 weights that only the video predictor uses (memory, object pointers, temporal
#: encodings): dropped by name when an official file is loaded. ``no_mem_embed`` is *not* here:
#: the image predictor adds it to the image embedding.
VIDEO_ONLY_PREFIXES: Tuple[str, ...] = (
    "memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr", "obj_ptr_proj.",
    "obj_ptr_tpos_proj.", "mask_downsample.", "no_obj_embed_spatial",
)
_MLP_KEY = re.compile(r"^(mask_decoder\.transformer\.layers\.\d+\.mlp)\.layers\.([01])\.")


def split_video_keys(sd: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], List[str]]:
    """``sd`` without the video-only weights, and the names dropped (sorted)."""
    kept, dropped = {}, []
    for k, v in sd.items():
        if k.startswith(VIDEO_ONLY_PREFIXES):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, sorted(dropped)


def sam2_checkpoint_filter(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """An official ``sam2*.pt`` state dict (its ``model`` entry) -> basam's names.

    Drops the video-only weights (logged at INFO with their count and names), renames
    ``sam_prompt_encoder.`` / ``sam_mask_decoder.`` to ``prompt_encoder.`` / ``mask_decoder.`` and
    the two-way transformer's MLP ``layers.0/1`` to ``lin1/lin2``. basam's own files pass through.
    """
    kept, dropped = split_video_keys(sd)
    if dropped:
        log.info("SAM 2 checkpoint: dropped %d video-only tensors: %s", len(dropped), ", ".join(dropped))
    out = {}
    for k, v in kept.items():
        if k.startswith("sam_prompt_encoder."):
            k = "prompt_encoder." + k[len("sam_prompt_encoder."):]
        elif k.startswith("sam_mask_decoder."):
            k = "mask_decoder." + k[len("sam_mask_decoder."):]
        k = _MLP_KEY.sub(lambda m: f"{m.group(1)}.lin{int(m.group(2)) + 1}.", k)
        out[k] = v
    return out


class Sam2(Sam):
    """SAM 2 for images, at any resolution.

    ``encode`` returns :class:`ImageFeatures` whose ``embeddings`` are the stride-16 map plus
    ``no_mem_embed`` (as the official image predictor does) and whose ``multiscale`` holds the
    stride-4 and stride-8 maps projected by the decoder's ``conv_s0`` / ``conv_s1``.
    """

    def __init__(self, image_encoder: Sam2ImageEncoder, prompt_encoder: Sam2PromptEncoder, mask_decoder: Sam2MaskDecoder,
                 name: str = "sam2") -> None:
        super().__init__(image_encoder, prompt_encoder, mask_decoder, name=name)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, mask_decoder.transformer_dim))

    def encode(self, x: Tensor) -> ImageFeatures:
        """Encode preprocessed images (B, 3, H, W), H and W multiples of 32."""
        feats = super().encode(x)
        emb = feats.embeddings + self.no_mem_embed.view(1, -1, 1, 1).to(feats.embeddings.dtype)
        fine = feats.multiscale
        dec = self.mask_decoder
        # The projections belong to the decoder: when it trains behind a frozen encoder (encoded
        # under no_grad), they run in decode instead, so that they get their gradients.
        if not (self.training and not torch.is_grad_enabled() and dec.conv_s0.weight.requires_grad):
            fine = self._project(fine)
        return ImageFeatures(emb, [], feats.input_size, fine)

    def _project(self, fine: List[Tensor]) -> List[Tensor]:
        """Raw stride-4/8 neck maps (C channels) -> the decoder's (C/8, C/4); projected ones pass."""
        dec = self.mask_decoder
        if fine[0].shape[1] != dec.transformer_dim:
            return list(fine)
        return [dec.conv_s0(fine[0]), dec.conv_s1(fine[1])]

    def decode_with_object_scores(self, features: ImageFeatures, point_coords: Optional[Tensor] = None,
                                  point_labels: Optional[Tensor] = None, boxes: Optional[Tensor] = None,
                                  mask_inputs: Optional[Tensor] = None, multimask_output: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        """Low-res logits (B, M, 4h, 4w), IoU (B, M) and object-score logits (B, 1) (> 0: an object)."""
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.prompt_encoder(points, boxes, mask_inputs, input_size=features.input_size, grid=features.grid)
        return self.mask_decoder(image_embeddings=features.embeddings, image_pe=self.prompt_encoder.get_dense_pe(features.grid),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=multimask_output, high_res_features=self._project(features.multiscale))

    def decode_all_tokens(self, features: ImageFeatures, point_coords: Optional[Tensor] = None,
                          point_labels: Optional[Tensor] = None, boxes: Optional[Tensor] = None,
                          mask_inputs: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Every mask token's logits (B, 4, 4h, 4w) and IoU (B, 4), single-mask token first (one pass,
        for training losses on all outputs)."""
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.prompt_encoder(points, boxes, mask_inputs, input_size=features.input_size, grid=features.grid)
        masks, iou, _ = self.mask_decoder.predict_masks(features.embeddings, self.prompt_encoder.get_dense_pe(features.grid),
                                                        sparse, dense, self._project(features.multiscale))
        return masks, iou

    def decode(self, features: ImageFeatures, point_coords: Optional[Tensor] = None, point_labels: Optional[Tensor] = None,
               boxes: Optional[Tensor] = None, mask_inputs: Optional[Tensor] = None, multimask_output: bool = True,
               hq_token_only: Optional[bool] = None) -> Tuple[Tensor, Tensor]:
        """Low-res logits (B, M, 4h, 4w) and IoU predictions (B, M), as :meth:`Sam.decode`."""
        if hq_token_only is not None:
            raise InputError(f"hq_token_only applies to HQ-SAM models (sam_hq_*), not {self.name}")
        low_res, iou, _ = self.decode_with_object_scores(features, point_coords, point_labels, boxes, mask_inputs, multimask_output)
        return low_res, iou

    def postprocess_masks(self, masks: Tensor, input_size: Tuple[int, int], original_size: Tuple[int, int],
                          padded_size: Tuple[int, int]) -> Tensor:
        """As :meth:`Sam.postprocess_masks`; without padding, straight to the original size (as SAM 2 does)."""
        if tuple(input_size) == tuple(padded_size):
            return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)
        return super().postprocess_masks(masks, input_size, original_size, padded_size)


def build_sam2(spec, attention: Optional[AttentionConfig] = None, **_: object) -> Sam2:
    """Instantiate a SAM 2 ModelSpec (encoder: :class:`HieraConfig`) with fresh weights (train mode)."""
    attention = attention or AttentionConfig()
    d = spec.decoder
    encoder = build_sam2_encoder(spec.encoder, img_size=spec.img_size, out_chans=d.transformer_dim, attention=attention)
    transformer = TwoWayTransformer(depth=d.depth, embedding_dim=d.transformer_dim, num_heads=d.num_heads, mlp_dim=d.mlp_dim)
    decoder = Sam2MaskDecoder(transformer_dim=d.transformer_dim, transformer=transformer, iou_head_hidden_dim=d.iou_head_hidden_dim)
    sam = Sam2(encoder, Sam2PromptEncoder(embed_dim=d.transformer_dim, mask_in_chans=d.mask_in_chans), decoder, name=spec.name)
    sam.spec = spec
    sam.set_attention(attention)
    return sam


@dataclass(frozen=True)
class WholeModelFamily(ModelFamily):
    """A family whose whole model (not only the encoder) differs from SAM's: ``build_model(spec,
    attention)`` builds it, and :func:`basam.models.registry.build_sam` defers to it."""

    build_model: Optional[Callable[..., nn.Module]] = None


SAM2_FAMILY = register_family(WholeModelFamily("sam2_hiera", HieraConfig, build_sam2_encoder, sam2_checkpoint_filter,
                                               build_model=build_sam2))
