"""SAM's mask decoder: output tokens + two-way transformer -> mask logits and IoU predictions."""

from typing import List, Tuple, Type

import torch
from torch import Tensor, nn

from .common import MLP, LayerNorm2d


def match_batch(x: Tensor, batch: int) -> Tensor:
    """Repeat a per-image tensor (1, ...) over ``batch`` prompts; pass (batch, ...) through."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] != 1:
        raise ValueError(f"cannot pair {x.shape[0]} images with {batch} prompts")
    return x.expand(batch, *x.shape[1:])


class MaskDecoder(nn.Module):
    """Predicts masks from an image embedding (B or 1, C, h, w) and prompt embeddings.

    Masks come out at 4x the embedding grid: (B, M, 4h, 4w), with M = 3 (multimask) or 1.
    """

    def __init__(self, *, transformer_dim: int, transformer: nn.Module, num_multimask_outputs: int = 3,
                 activation: Type[nn.Module] = nn.GELU, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def output_tokens(self) -> Tensor:
        """The learned output tokens fed before the prompt tokens. (T, C)."""
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)

    def run_transformer(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor) -> Tuple[Tensor, Tensor]:
        """Returns the output tokens (B, T + N, C) and the image features (B, C, h, w)."""
        b = sparse.shape[0]
        out_tokens = self.output_tokens().unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((out_tokens, sparse), dim=1)
        src = match_batch(image_embeddings, b) + dense
        pos_src = match_batch(image_pe, b)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        return hs, src.transpose(1, 2).reshape(b, c, h, w)

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor) -> Tuple[Tensor, Tensor]:
        """All mask tokens' logits (B, num_mask_tokens, 4h, 4w) and IoU predictions (B, num_mask_tokens)."""
        hs, src = self.run_transformer(image_embeddings, image_pe, sparse, dense)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                dense_prompt_embeddings: Tensor, multimask_output: bool, **_: object) -> Tuple[Tensor, Tensor]:
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]
