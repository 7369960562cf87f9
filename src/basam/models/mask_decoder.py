"""SAM's mask decoder: output tokens + two-way transformer -> mask logits and IoU predictions."""

from typing import List, Optional, Tuple, Type

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

    ``high_res_channels`` (c4, c8): the encoder also gives stride-4 and stride-8 maps (a ViT's
    detail branch); ``conv_s0`` / ``conv_s1`` project them to the upscaling path's widths and they
    are added there, as SAM 2's decoder adds its backbone's (None: SAM's decoder, unchanged).
    """

    def __init__(self, *, transformer_dim: int, transformer: nn.Module, num_multimask_outputs: int = 3,
                 activation: Type[nn.Module] = nn.GELU, iou_head_depth: int = 3, iou_head_hidden_dim: int = 256,
                 high_res_channels: "Tuple[int, int] | None" = None) -> None:
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
        self.uses_high_res = high_res_channels is not None
        if high_res_channels is not None:
            self.conv_s0 = nn.Conv2d(high_res_channels[0], transformer_dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(high_res_channels[1], transformer_dim // 4, kernel_size=1)

    def upscale(self, src: Tensor, high_res: Optional[List[Tensor]] = None) -> Tensor:
        """(B, C, h, w) transformer output -> (B, C/8, 4h, 4w) mask features; with ``high_res``
        (the encoder's unprojected stride-4 and stride-8 maps, batch B or 1) added on the way."""
        if not self.uses_high_res:
            return self.output_upscaling(src)
        if high_res is None or len(high_res) != 2:
            raise ValueError("this mask decoder needs the encoder's stride-4 and stride-8 maps (ImageFeatures.multiscale)")
        b = src.shape[0]
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        x = act1(ln1(dc1(src) + match_batch(self.conv_s1(high_res[1]), b)))
        return act2(dc2(x) + match_batch(self.conv_s0(high_res[0]), b))

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

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor,
                      high_res_features: Optional[List[Tensor]] = None) -> Tuple[Tensor, Tensor]:
        """All mask tokens' logits (B, num_mask_tokens, 4h, 4w) and IoU predictions (B, num_mask_tokens)."""
        hs, src = self.run_transformer(image_embeddings, image_pe, sparse, dense)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self.upscale(src, high_res_features)
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)

    def forward(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                dense_prompt_embeddings: Tensor, multimask_output: bool, high_res_features: Optional[List[Tensor]] = None,
                **_: object) -> Tuple[Tensor, Tensor]:
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                                             high_res_features)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]
