"""SAM 2's Hiera trunk (hierarchical ViT with query pooling), at any input resolution, with BA-SAM.

Parameter names follow the official ``sam2`` package (``image_encoder.trunk.*``), so its
checkpoints load as they are. The trunk has four stages; the first block of stages 2-4 max-pools
its queries 2x2 (keys and values keep the finer grid), doubling the width and the heads. Blocks
attend inside windows (one size per stage) except the listed global blocks.

Any resolution: the input side must be a multiple of 32 (4 px patches, then three 2x poolings).
The absolute position embedding is the official one, computed on the real grid: a background
table resized bicubically to the stride-4 grid plus the first stage's window table tiled over it
(at 1024 px the official code does exactly this; at other sizes the same rule gives one window
tile per 8x8 tokens). Windows and pooling always run on the real grid (windows pad the grid up to
a multiple of the window, as the official code does).

Attention goes through :func:`basam.attention.attend`: NSF with each layer's own N and N_train,
BM-AM on each layer's grid. A pooled layer's queries sit on a grid twice coarser than its keys:
its BM-AM distance is measured between the query and key token centres in input pixels,
expressed in key tokens (see ``docs/method.md``), and passed as a dense bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import AttentionBias, AttentionConfig, BiasModeMask, attend, bias_scratch, layer_scale
from .common import MLP
from .image_encoder import window_partition, window_unpartition

__all__ = ["HieraConfig", "Hiera", "HieraBlock", "HieraAttention", "pooled_distance"]


@dataclass(frozen=True)
class HieraConfig:
    """The architecture of a SAM 2 image encoder: Hiera trunk + FPN neck (Hiera-T defaults).

    Attributes:
        embed_dim, num_heads: width and heads of stage 1 (multiplied by ``dim_mul``/``head_mul``
            at each later stage).
        stages: blocks per stage. global_att_blocks: indexes of the blocks with global attention.
        window_spec: window side (tokens) per stage for the other blocks.
        window_pos_embed_bkg_spatial_size: the background position table (h, w).
        q_pool: how many stage changes pool the queries; q_stride: the pooling stride.
        fpn_top_down_levels: neck levels (0 = finest) that add the upsampled coarser level.
        scalp: coarsest neck levels dropped (1 in every official model: stride 32 is not used).
    """

    embed_dim: int = 96
    num_heads: int = 1
    stages: Tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: Tuple[int, ...] = (5, 7, 9)
    window_spec: Tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: Tuple[int, int] = (7, 7)
    q_pool: int = 3
    q_stride: Tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0
    fpn_top_down_levels: Tuple[int, ...] = (2, 3)
    scalp: int = 1


def _pool(x: Tensor, stride: Tuple[int, int]) -> Tensor:
    """2-D max pooling of a channels-last map: (B, H, W, C) -> (B, H // s, W // s, C)."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(0, 2, 3, 1)


def pooled_distance(q_grid: Tuple[int, int], k_grid: Tuple[int, int], stride: Tuple[int, int], dist: str,
                    device=None) -> Tensor:
    """BM-AM distances between pooled queries and the finer keys. (Nq, Nk) fp32.

    Positions are token centres in input pixels; a pooled query's centre is the centre of the
    ``stride`` cell it was pooled from. Distances are then expressed in key tokens (pixels divided
    by the keys' stride), so with equal grids this is the ordinary token distance.
    """
    sy, sx = stride
    qr = (torch.arange(q_grid[0], device=device, dtype=torch.float32) + 0.5) * sy - 0.5
    qc = (torch.arange(q_grid[1], device=device, dtype=torch.float32) + 0.5) * sx - 0.5
    kr = torch.arange(k_grid[0], device=device, dtype=torch.float32)
    kc = torch.arange(k_grid[1], device=device, dtype=torch.float32)
    dr = qr[:, None, None, None] - kr[None, None, :, None]  # (qh, 1, kh, 1)
    dc = qc[None, :, None, None] - kc[None, None, None, :]  # (1, qw, 1, kw)
    if dist == "flat":  # |i - j| on the row-major index of the key grid
        d = (dr * k_grid[1] + dc).abs()
    elif dist == "manhattan":
        d = dr.abs() + dc.abs()
    else:
        d = torch.sqrt(dr * dr + dc * dc)
    return d.reshape(q_grid[0] * q_grid[1], k_grid[0] * k_grid[1])


class HieraAttention(nn.Module):
    """Multi-head attention of a Hiera block, with optional query pooling. (B, h, w, C) -> (B, h', w', C_out).

    ``window_tokens``: keys per window for a windowed layer (None: global). ``stride``: input pixels
    per token of the grid this layer's keys live on (what NSF counts N_train on).
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: Optional[Tuple[int, int]], *,
                 window_tokens: Optional[int], stride: int, train_size: int, attention: Optional[AttentionConfig]) -> None:
        super().__init__()
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        self.q_stride = tuple(q_stride) if q_stride else None
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)
        self.window_tokens = window_tokens
        self.stride = stride
        self.train_size = train_size
        self.bam = BiasModeMask(num_heads, attention)

    def forward(self, x: Tensor, image_tokens: int) -> Tensor:
        """``image_tokens``: tokens of the whole (unwindowed) key grid now (NSF's N for a global layer)."""
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(2)  # (B, N, heads, d)
        q_grid = (H, W)
        if self.q_stride:
            q = _pool(q.reshape(B, H, W, -1), self.q_stride)
            q_grid = (q.shape[1], q.shape[2])
            q = q.reshape(B, q_grid[0] * q_grid[1], self.num_heads, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, N, d)
        cfg = self.bam.config
        scale = layer_scale(self.head_dim, cfg, window_tokens=self.window_tokens, image_tokens=image_tokens,
                            stride=self.stride, default_train_size=self.train_size)
        slopes = self.bam.active_slopes()
        if slopes is None:
            bias = AttentionBias()
        elif q_grid == (H, W):
            bias = AttentionBias(q_grid=q_grid, slopes=slopes, dist=cfg.dist)
        else:
            # No backend takes a grid bias across two grids: the pooled layer's distance bias is
            # passed built (Nq x Nk per head; at most a window's 16 x 64 in the official models).
            d = pooled_distance(q_grid, (H, W), self.q_stride, cfg.dist, x.device)
            bias = AttentionBias(dense=(-slopes.float().view(1, -1, 1, 1) * d).to(q.dtype))
        out = attend(q, k, v, scale=scale, bias=bias, backend=cfg.backend, chunk_bytes=cfg.chunk_bytes)
        out = out.transpose(1, 2).reshape(B, q_grid[0], q_grid[1], self.dim_out)
        return self.proj(out)


class HieraBlock(nn.Module):
    """Pre-norm Hiera block, windowed (``window_size`` > 0) or global, optionally pooling. (B, H, W, C)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, *, mlp_ratio: float, q_stride: Optional[Tuple[int, int]],
                 window_size: int, stride: int, train_size: int, attention: Optional[AttentionConfig]) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.window_size = window_size
        self.q_stride = tuple(q_stride) if q_stride else None
        self.attn = HieraAttention(dim, dim_out, num_heads, q_stride,
                                   window_tokens=window_size * window_size if window_size > 0 else None,
                                   stride=stride, train_size=train_size, attention=attention)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        # the official blocks' MLP: two layers, GELU, keys layers.0 / layers.1
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, act=F.gelu)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.q_stride:
                shortcut = _pool(shortcut, self.q_stride)
        H, W = x.shape[1], x.shape[2]
        ws = self.window_size
        if ws > 0:
            x, _ = window_partition(x, ws)
        x = self.attn(x, image_tokens=H * W)
        if self.q_stride:  # the queries (and so the windows) shrank by the stride
            ws = ws // self.q_stride[0]
            H, W = shortcut.shape[1], shortcut.shape[2]
        if ws > 0:
            pad_hw = (H + (ws - H % ws) % ws, W + (ws - W % ws) % ws)
            x = window_unpartition(x, ws, pad_hw, (H, W))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """7x7 convolution with stride 4: (B, 3, H, W) -> (B, H/4, W/4, C)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The trunk: (B, 3, H, W) -> one (B, C_i, H/s_i, W/s_i) map per stage, finest first (s = 4, 8, 16, 32)."""

    def __init__(self, cfg: HieraConfig, img_size: int = 1024, attention: Optional[AttentionConfig] = None) -> None:
        super().__init__()
        if len(cfg.stages) != len(cfg.window_spec):
            raise ValueError("stages and window_spec need one entry per stage")
        self.cfg = cfg
        self.stage_ends = [sum(cfg.stages[:i]) - 1 for i in range(1, len(cfg.stages) + 1)]
        self.q_pool_blocks = [e + 1 for e in self.stage_ends[:-1]][: cfg.q_pool]
        self.patch_embed = PatchEmbed(cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, cfg.embed_dim, cfg.window_spec[0], cfg.window_spec[0]))
        dim, heads, stage, stride = cfg.embed_dim, cfg.num_heads, 0, 4
        self.blocks = nn.ModuleList()
        for i in range(sum(cfg.stages)):
            dim_out = dim
            # The window lags a block: the first block of a stage (which pools) keeps the previous
            # stage's window on its (finer) key grid.
            window = 0 if i in cfg.global_att_blocks else cfg.window_spec[stage]
            key_stride = stride
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = int(dim * cfg.dim_mul), int(heads * cfg.head_mul), stage + 1
            pooled = i in self.q_pool_blocks
            self.blocks.append(HieraBlock(dim, dim_out, heads, mlp_ratio=cfg.mlp_ratio, q_stride=cfg.q_stride if pooled else None,
                                          window_size=window, stride=key_stride, train_size=img_size, attention=attention))
            if pooled:
                stride *= cfg.q_stride[0]
            dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]  # coarsest first (official order)

    def position_embedding(self, grid: Tuple[int, int]) -> Tensor:
        """The absolute position embedding on a (h, w) stride-4 grid. (1, h, w, C).

        The background table resized bicubically to the grid plus the window table tiled over it
        (cropped where the grid is not a whole number of windows).
        """
        h, w = grid
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic", align_corners=False)
        win = self.pos_embed_window
        reps = (math.ceil(h / win.shape[-2]), math.ceil(w / win.shape[-1]))
        pos = pos + win.tile(1, 1, *reps)[..., :h, :w]
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.patch_embed(x)
        x = x + self.position_embedding((x.shape[1], x.shape[2]))
        outputs = []
        with bias_scratch():  # the blocks' attention biases share one buffer
            for i, blk in enumerate(self.blocks):
                x = blk(x)
                if i in self.stage_ends:
                    outputs.append(x.permute(0, 3, 1, 2))
        return outputs


def stage_strides(cfg: HieraConfig) -> Sequence[int]:
    """Input pixels per token of each stage's output (4, 8, 16, 32 for the official models)."""
    out, s = [], 4
    for i in range(len(cfg.stages)):
        out.append(s)
        if i < cfg.q_pool:
            s *= cfg.q_stride[0]
    return out
