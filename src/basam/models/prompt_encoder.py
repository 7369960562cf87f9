"""SAM's prompt encoder, with the image frame given per call instead of fixed at 1024 / 64x64."""

import math
from typing import Optional, Tuple, Type

import torch
from torch import Tensor, nn

from .common import LayerNorm2d


class PromptEncoder(nn.Module):
    """Embeds points, boxes and masks for the mask decoder.

    The sizes that the official code fixes at construction (``input_image_size`` 1024x1024,
    ``image_embedding_size`` 64x64) are arguments here: ``input_size`` is the padded image fed to
    the encoder (H, W) in pixels and ``grid`` the encoder's output grid (h, w).
    """

    def __init__(self, embed_dim: int = 256, mask_in_chans: int = 16, activation: Type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # pos/neg point + 2 box corners
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @staticmethod
    def mask_input_size(grid: Tuple[int, int]) -> Tuple[int, int]:
        """The size (4h, 4w) a mask prompt must have for an encoder grid (h, w)."""
        return 4 * grid[0], 4 * grid[1]

    def get_dense_pe(self, grid: Tuple[int, int]) -> Tensor:
        """Positional encoding of every grid cell. (1, C, h, w)."""
        return self.pe_layer(grid).unsqueeze(0)

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool, input_size: Tuple[int, int]) -> Tensor:
        points = points + 0.5  # centre of the pixel
        if pad:
            padding_point = torch.zeros((points.shape[0], 1, 2), device=points.device, dtype=points.dtype)
            padding_label = -torch.ones((labels.shape[0], 1), device=labels.device, dtype=labels.dtype)
            points = torch.cat([points, padding_point], dim=1)
            labels = torch.cat([labels, padding_label], dim=1)
        emb = self.pe_layer.forward_with_coords(points, input_size)
        labels = labels[..., None]
        emb = torch.where(labels == -1, torch.zeros_like(emb), emb)
        emb = emb + (labels == -1) * self.not_a_point_embed.weight
        emb = emb + (labels == 0) * self.point_embeddings[0].weight
        emb = emb + (labels == 1) * self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes: Tensor, input_size: Tuple[int, int]) -> Tensor:
        coords = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(coords, input_size)
        corners = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return emb + corners

    def forward(
        self,
        points: Optional[Tuple[Tensor, Tensor]],
        boxes: Optional[Tensor],
        masks: Optional[Tensor],
        input_size: Tuple[int, int],
        grid: Tuple[int, int],
    ) -> Tuple[Tensor, Tensor]:
        """Returns sparse (B, N, C) and dense (B, C, h, w) embeddings.

        Args:
            points: coordinates (B, N, 2) in the padded input frame (x, y) and labels (B, N)
                (1 foreground, 0 background, -1 padding).
            boxes: (B, 4) as x0, y0, x1, y1 in the input frame.
            masks: (B, 1, 4h, 4w) low-resolution mask logits.
            input_size: (H, W) of the padded encoder input. grid: (h, w) of the image embedding.
        """
        bs = points[0].shape[0] if points is not None else boxes.shape[0] if boxes is not None else masks.shape[0] if masks is not None else 1
        weight = self.no_mask_embed.weight  # the model's device and dtype (a bf16 model stays bf16)
        sparse = torch.empty((bs, 0, self.embed_dim), device=weight.device, dtype=weight.dtype)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None, input_size=input_size)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes, input_size)], dim=1)
        if masks is not None:
            expected = self.mask_input_size(grid)
            if tuple(masks.shape[-2:]) != expected:
                raise ValueError(f"mask prompt is {tuple(masks.shape[-2:])} but this grid needs {expected}")
            dense = self.mask_downscaling(masks.to(weight.dtype))
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, grid[0], grid[1])
        return sparse, dense


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random Fourier features (SAM's ``pe_layer``)."""

    def __init__(self, num_pos_feats: int = 64, scale: Optional[float] = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        """Encode points normalised to [0, 1]. (..., 2) -> (..., C)."""
        # fp32 whatever the model's dtype (sin/cos of large arguments), returned in the model's dtype
        matrix = self.positional_encoding_gaussian_matrix
        coords = 2 * coords.float() - 1
        coords = coords @ matrix.float()
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).to(matrix.dtype)

    def forward(self, size: Tuple[int, int]) -> Tensor:
        """Encoding of the centres of an (h, w) grid. (C, h, w)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)

    def forward_with_coords(self, coords_input: Tensor, image_size: Tuple[int, int]) -> Tensor:
        """Encode pixel coordinates (B, N, 2) as (x, y) in an image of ``image_size`` (H, W)."""
        size = torch.tensor([float(image_size[1]), float(image_size[0])], device=coords_input.device)
        return self._pe_encoding(coords_input.float() / size)
