"""HQ-SAM's mask decoder: SAM's decoder plus the HQ-Output token and global-local feature fusion.

How the HQ token relates to SAM's own output token (``docs/method.md``):

* ``independent``: the HQ token alone predicts the mask (official ``hq_token_only=True``).
* ``add``: HQ mask logits + SAM's best mask logits (the official default output).
* ``product``: the token fed to the decoder is ``hf_token * mask_tokens[0]`` (element-wise) and
  its mask alone is the output.
"""

from typing import List, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from ..errors import InputError
from .common import MLP, LayerNorm2d
from .mask_decoder import MaskDecoder, match_batch

HQ_FUSIONS = ("independent", "add", "product")


class MaskDecoderHQ(MaskDecoder):
    """``vit_dim``: channels of the early encoder feature fused into the HQ features."""

    def __init__(self, *, transformer_dim: int, transformer: nn.Module, num_multimask_outputs: int = 3,
                 activation: Type[nn.Module] = nn.GELU, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256,
                 vit_dim: int = 1024, hq_fusion: str = "add", high_res_channels: Optional[Tuple[int, int]] = None) -> None:
        super().__init__(transformer_dim=transformer_dim, transformer=transformer, num_multimask_outputs=num_multimask_outputs,
                         activation=activation, iou_head_depth=iou_head_depth, iou_head_hidden_dim=iou_head_hidden_dim,
                         high_res_channels=high_res_channels)
        self.hf_token = nn.Embedding(1, transformer_dim)
        self.hf_mlp = MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
        self.compress_vit_feat = nn.Sequential(
            nn.ConvTranspose2d(vit_dim, transformer_dim, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 8, kernel_size=2, stride=2),
        )
        self.embedding_encoder = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
        )
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(transformer_dim // 8, transformer_dim // 4, 3, 1, 1),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.Conv2d(transformer_dim // 4, transformer_dim // 8, 3, 1, 1),
        )
        self.hq_fusion = check_fusion(hq_fusion)

    def hq_token(self) -> Tensor:
        """The HQ-Output token as fed to the transformer. (1, C)."""
        if self.hq_fusion == "product":
            return self.hf_token.weight * self.mask_tokens.weight[:1]
        return self.hf_token.weight

    def output_tokens(self) -> Tensor:
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight, self.hq_token()], dim=0)

    def hq_features(self, image_embeddings: Tensor, interm_embeddings: List[Tensor]) -> Tensor:
        """Global-local fusion of the final embedding and the early encoder feature. (B, C/8, 4h, 4w)."""
        vit_features = interm_embeddings[0].permute(0, 3, 1, 2)
        return self.embedding_encoder(image_embeddings) + self.compress_vit_feat(vit_features)

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                dense_prompt_embeddings: Tensor, multimask_output: bool, hq_token_only: Optional[bool] = None,
                interm_embeddings: Optional[List[Tensor]] = None, high_res_features: Optional[List[Tensor]] = None) -> Tuple[Tensor, Tensor]:
        """Masks (B, 1, 4h, 4w) and IoU predictions (B, 1), as the official HQ-SAM returns them.

        ``hq_token_only``: None follows ``hq_fusion``; True / False force the official
        ``independent`` / ``add`` output for this call.
        """
        if interm_embeddings is None:
            raise ValueError("HQ-SAM needs the encoder's early features (interm_embeddings)")
        hq_feat = self.hq_features(image_embeddings, interm_embeddings)
        b = sparse_prompt_embeddings.shape[0]
        hs, src = self.run_transformer(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        n_sam = self.num_mask_tokens  # SAM's own mask tokens; the HQ token follows them
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        mask_tokens_out = hs[:, 1 : 2 + n_sam, :]
        upscaled_sam = self.upscale(src, high_res_features)
        upscaled_hq = self.embedding_maskfeature(upscaled_sam) + match_batch(hq_feat, b)
        hyper_sam = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        hyper_hq = self.hf_mlp(mask_tokens_out[:, n_sam, :]).unsqueeze(1)
        _, c, h, w = upscaled_sam.shape
        masks_sam = (hyper_sam @ upscaled_sam.view(b, c, h * w)).view(b, -1, h, w)
        masks_hq = (hyper_hq @ upscaled_hq.view(b, c, h * w)).view(b, 1, h, w)

        if multimask_output:
            iou_multi = iou_pred[:, 1:n_sam]
            iou_best, best = torch.max(iou_multi, dim=1)
            iou_pred = iou_best.unsqueeze(1)
            masks_sam = masks_sam[:, 1:n_sam][torch.arange(b, device=best.device), best].unsqueeze(1)
        else:
            iou_pred = iou_pred[:, 0:1]
            masks_sam = masks_sam[:, 0:1]
        mode = self.hq_fusion if hq_token_only is None else ("independent" if hq_token_only else "add")
        if mode == "add" and self.hq_fusion != "product":
            return masks_sam + masks_hq, iou_pred
        return masks_hq, iou_pred


def check_fusion(mode: str) -> str:
    if mode not in HQ_FUSIONS:
        raise InputError(f"unknown HQ fusion {mode!r}; choose one of {', '.join(HQ_FUSIONS)}")
    return mode
