"""SAM 2's prompt encoder and mask decoder (image prediction), as extensions of SAM's.

Differences from SAM's, all in the official ``sam2`` package's image path:

* prompt encoder: a box is two labelled points (labels 2 and 3) placed before the clicks, and a
  padding point always ends the sparse prompt;
* mask decoder: an object-score token before the IoU token (with an MLP head), a sigmoid on the IoU
  head, the stride-4 and stride-8 encoder maps added into the upscaling path (``conv_s0``,
  ``conv_s1`` project them), and for a single mask in eval the official image predictor's
  "multimask via stability" choice: if the single-mask output is unstable (IoU of its logits
  thresholded at +-0.05 below 0.98), the best-scoring multimask candidate is returned instead.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from .common import MLP
from .mask_decoder import MaskDecoder, match_batch
from .prompt_encoder import PromptEncoder


class Sam2PromptEncoder(PromptEncoder):
    """SAM's prompt encoder with SAM 2's prompt layout (same parameters and names)."""

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool, input_size: Tuple[int, int]) -> Tensor:
        emb = super()._embed_points(points, labels, pad, input_size)
        if pad:
            labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
        labels = labels[..., None]
        return emb + (labels == 2) * self.point_embeddings[2].weight + (labels == 3) * self.point_embeddings[3].weight

    def forward(self, points: Optional[Tuple[Tensor, Tensor]], boxes: Optional[Tensor], masks: Optional[Tensor],
                input_size: Tuple[int, int], grid: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """Sparse (B, N, C) and dense (B, C, h, w) embeddings; arguments as :meth:`PromptEncoder.forward`.

        Boxes (B, 4) become corner points labelled 2 and 3, before the clicks; a padding point follows.
        """
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2).float()
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).expand(corners.shape[0], 2)
            if points is not None:
                coords, labels = points
                b = max(coords.shape[0], corners.shape[0])
                corners, corner_labels = corners.expand(b, -1, -1), corner_labels.expand(b, -1)
                points = (torch.cat([corners, coords.float().expand(b, -1, -1)], dim=1),
                          torch.cat([corner_labels, labels.to(corner_labels.dtype).expand(b, -1)], dim=1))
            else:
                points = (corners, corner_labels)
        return super().forward(points, None, masks, input_size, grid)


class Sam2MaskDecoder(MaskDecoder):
    """SAM 2's mask decoder. ``forward`` returns mask logits (B, M, 4h, 4w), IoU predictions (B, M)
    and object-score logits (B, 1); M = 3 (multimask) or 1."""

    def __init__(self, *, transformer_dim: int, transformer: nn.Module, num_multimask_outputs: int = 3,
                 iou_head_depth: int = 3, iou_head_hidden_dim: int = 256, dynamic_multimask_via_stability: bool = True,
                 stability_delta: float = 0.05, stability_thresh: float = 0.98) -> None:
        super().__init__(transformer_dim=transformer_dim, transformer=transformer, num_multimask_outputs=num_multimask_outputs,
                         iou_head_depth=iou_head_depth, iou_head_hidden_dim=iou_head_hidden_dim)
        self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1)
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth, sigmoid_output=True)
        self.pred_obj_score_head = MLP(transformer_dim, transformer_dim, 1, 3)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def output_tokens(self) -> Tensor:
        """Object-score token, IoU token, mask tokens. (T, C)."""
        return torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0)

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                      high_res_features: Optional[List[Tensor]] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """All mask tokens' logits (B, T_m, 4h, 4w), IoU (B, T_m) and object scores (B, 1).

        ``high_res_features``: the projected stride-4 (B or 1, C/8, 4h, 4w) and stride-8
        (B or 1, C/4, 2h, 2w) maps.
        """
        hs, src = self.run_transformer(image_embeddings, image_pe, sparse, dense)
        b = src.shape[0]
        iou_token_out = hs[:, 1, :]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens, :]
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        if high_res_features is None:
            raise ValueError("the SAM 2 mask decoder needs the stride-4 and stride-8 features")
        feat_s0, feat_s1 = (match_batch(f, b) for f in high_res_features)
        upscaled = act1(ln1(dc1(src) + feat_s1))
        upscaled = act2(dc2(upscaled) + feat_s0)
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        _, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out), self.pred_obj_score_head(hs[:, 0, :])

    def stability_scores(self, mask_logits: Tensor) -> Tensor:
        """IoU of the masks thresholded at +delta and -delta. (B, M, H, W) -> (B, M)."""
        flat = mask_logits.flatten(-2)
        inter = (flat > self.stability_delta).sum(-1).float()
        union = (flat > -self.stability_delta).sum(-1).float()
        return torch.where(union > 0, inter / union, torch.ones_like(inter))

    def _single_or_best(self, masks: Tensor, iou: Tensor) -> Tuple[Tensor, Tensor]:
        """The single-mask output where it is stable, else the best multimask candidate. (B, 1, ...)."""
        best = iou[:, 1:].argmax(dim=-1, keepdim=True) + 1  # (B, 1)
        best_masks = masks.gather(1, best[..., None, None].expand(-1, 1, *masks.shape[-2:]))
        best_iou = iou.gather(1, best)
        stable = self.stability_scores(masks[:, :1]) >= self.stability_thresh  # (B, 1)
        return (torch.where(stable[..., None, None], masks[:, :1], best_masks),
                torch.where(stable, iou[:, :1], best_iou))

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                dense_prompt_embeddings: Tensor, multimask_output: bool, high_res_features: Optional[List[Tensor]] = None,
                **_: object) -> Tuple[Tensor, Tensor, Tensor]:
        masks, iou, obj = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                                             high_res_features)
        if multimask_output:
            return masks[:, 1:], iou[:, 1:], obj
        if self.dynamic_multimask_via_stability and not self.training:
            m, i = self._single_or_best(masks, iou)
            return m, i, obj
        return masks[:, :1], iou[:, :1], obj
