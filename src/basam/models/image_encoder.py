"""SAM's ViT image encoder (ViT-B/L/H), at any input resolution, with BA-SAM attention.

Parameter names follow the official ``segment_anything`` code, so its checkpoints load as they are.
Differences from the official code: the absolute position embedding is resampled (bicubic) to the
actual token grid on every forward, and attention goes through :func:`basam.attention.attend`.
"""

from dataclasses import dataclass
from functools import partial
from typing import List, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import AttentionConfig, BiasModeMask, attend, bias_scratch, layer_scale
from .common import LayerNorm2d, MLPBlock
from .encoder import ImageEncoder
from .family import ModelFamily, register_family


@dataclass(frozen=True)
class ViTConfig:
    """SAM's ViT architecture (ViT-B defaults)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    patch_size: int = 16
    mlp_ratio: float = 4.0
    #: channels of a convolutional stem that replaces the patch projection: log2(patch_size)
    #: stride-2 3x3 convolutions (LayerNorm2d + GELU after each), then a 1x1 projection to
    #: ``embed_dim``. Empty (SAM): one patch_size x patch_size convolution. Convolutions give a
    #: small ViT trained from scratch the locality prior it otherwise has to learn from data.
    stem: Tuple[int, ...] = ()
    #: channels (c2, c4, c8) of a detail branch: three stride-2 3x3 convolutions on the pixels
    #: whose stride-4 and stride-8 maps go to the mask decoder as high-resolution features (as SAM 2's
    #: backbone maps do), so that mask edges can follow the image, not the 16 px token grid. Empty (SAM): none.
    detail: Tuple[int, ...] = ()


class ImageEncoderViT(ImageEncoder):
    """(B, 3, H, W) image, H and W multiples of ``patch_size`` (p) -> ((B, out_chans, H/p, W/p), interm).

    ``interm`` holds the output (B, H/p, W/p, C) of every global-attention block: HQ-SAM fuses
    the first of them into its mask features. ``stride`` = ``patch_size`` (16 in SAM).
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        act_layer: Type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11),
        attention: Optional[AttentionConfig] = None,
        stem: Tuple[int, ...] = (),
        detail: Tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.stride = patch_size
        self.embed_dim = embed_dim
        self.interm_dim = embed_dim
        self.global_attn_indexes = tuple(global_attn_indexes)
        self.patch_embed = ConvStem(patch_size, in_chans, embed_dim, stem) if stem else PatchEmbed(patch_size, in_chans, embed_dim)
        self.detail: Optional[DetailBranch] = DetailBranch(in_chans, tuple(detail)) if detail else None
        #: channels of the (stride-4, stride-8) maps in ``multiscale`` (None: the encoder gives none)
        self.multiscale_channels: Optional[Tuple[int, int]] = self.detail.channels if self.detail is not None else None
        grid = img_size // patch_size
        self.pos_embed: Optional[nn.Parameter] = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_layer=norm_layer,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in self.global_attn_indexes else window_size,
                train_grid=(grid, grid),
                stride=patch_size,
                attention=attention,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def resampled_pos_embed(self, grid: Tuple[int, int]) -> Tensor:
        """The absolute position embedding bicubically resampled to ``grid``. (1, gh, gw, C).

        Same result as ``F.interpolate(..., mode="bicubic", align_corners=False)`` on the
        channels-first table, computed as two small matrix products (bicubic resampling is separable)
        because CUDA's bicubic kernel runs one thread per output pixel over all 768+ channels: 4 ms
        at 2048 px, more than a quarter of the encoder.
        """
        pos = self.pos_embed
        if tuple(pos.shape[1:3]) == tuple(grid):
            return pos
        wy = bicubic_matrix(pos.shape[1], grid[0], pos.device)  # (gh, h)
        wx = bicubic_matrix(pos.shape[2], grid[1], pos.device)  # (gw, w)
        out = torch.einsum("yh,bhwc->bywc", wy, pos.float())
        out = torch.einsum("xw,bywc->byxc", wx, out)
        return out.to(pos.dtype)

    def forward(self, x: Tensor):
        """(embeddings, interm), or (embeddings, interm, [stride-4 map, stride-8 map]) with a detail branch."""
        fine = self.detail(x) if self.detail is not None else None
        x = self.patch_embed(x)  # (B, gh, gw, C)
        if self.pos_embed is not None:
            x = x + self.resampled_pos_embed(tuple(x.shape[1:3]))
        interm: List[Tensor] = []
        with bias_scratch():  # the blocks' attention biases share one buffer (see bias_scratch)
            for blk in self.blocks:
                x = blk(x)
                if blk.window_size == 0:
                    interm.append(x)
        emb = self.neck(x.permute(0, 3, 1, 2))
        return (emb, interm) if fine is None else (emb, interm, fine)


class Block(nn.Module):
    """Pre-norm transformer block with windowed (window_size > 0) or global attention. (B, H, W, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        act_layer: Type[nn.Module] = nn.GELU,
        use_rel_pos: bool = True,
        window_size: int = 0,
        train_grid: Tuple[int, int] = (64, 64),
        stride: int = 16,
        attention: Optional[AttentionConfig] = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            table_size=train_grid if window_size == 0 else (window_size, window_size),
            windowed=window_size > 0,
            stride=stride,
            train_size=train_grid[0] * stride,
            attention=attention,
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        H, W = x.shape[1], x.shape[2]
        if self.window_size > 0:
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x, image_tokens=H * W)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative positions and BA-SAM. (B, h, w, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        table_size: Tuple[int, int] = (64, 64),
        windowed: bool = False,
        stride: int = 16,
        train_size: int = 1024,
        attention: Optional[AttentionConfig] = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * table_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * table_size[1] - 1, self.head_dim))
        # What NSF needs to find N and N_train (see basam.attention.layer_scale).
        self.window_tokens = table_size[0] * table_size[1] if windowed else None
        self.stride = stride
        self.train_size = train_size
        self.bam = BiasModeMask(num_heads, attention)

    def forward(self, x: Tensor, image_tokens: Optional[int] = None) -> Tensor:
        B, H, W, _ = x.shape
        n = H * W
        qkv = self.qkv(x).reshape(B, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, d)
        cfg = self.bam.config
        scale = layer_scale(
            self.head_dim, cfg,
            window_tokens=self.window_tokens,
            image_tokens=n if image_tokens is None else image_tokens,
            stride=self.stride,
            default_train_size=self.train_size,
        )
        rel_pos = None
        if self.use_rel_pos:
            rel_pos = (get_rel_pos(H, H, self.rel_pos_h), get_rel_pos(W, W, self.rel_pos_w))
        out = attend(
            q, k, v,
            scale=scale,
            rel_pos=rel_pos,
            grid=(H, W),
            slopes=self.bam.active_slopes(),
            dist=cfg.dist,
            backend=cfg.backend,
            chunk_bytes=cfg.chunk_bytes,
        )
        out = out.permute(0, 2, 1, 3).reshape(B, H, W, -1)
        return self.proj(out)


def bicubic_matrix(size_in: int, size_out: int, device=None) -> Tensor:
    """The (size_out, size_in) fp32 matrix of 1-D bicubic resampling as ``F.interpolate`` does it
    (``align_corners=False``, border clamping): row i holds the weights output i gives the inputs."""
    eye = torch.eye(size_in, device=device, dtype=torch.float32).view(1, size_in, 1, size_in)
    w = F.interpolate(eye, size=(1, size_out), mode="bicubic", align_corners=False)  # (1, in, 1, out)
    return w.view(size_in, size_out).t()


def window_partition(x: Tensor, window_size: int) -> Tuple[Tensor, Tuple[int, int]]:
    """(B, H, W, C) -> (B * num_windows, ws, ws, C), zero-padding H and W up to multiples of ws."""
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(windows: Tensor, window_size: int, pad_hw: Tuple[int, int], hw: Tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: (B * num_windows, ws, ws, C) -> (B, H, W, C)."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis. (q_size, k_size, C).

    The (2L - 1, C) table is linearly interpolated when the grid differs from the one it was
    trained on, exactly as SAM does.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear")
        resized = resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        resized = rel_pos
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return resized[relative_coords.long()]


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ConvStem(nn.Module):
    """Convolutional patch embedding: (B, 3, H, W) -> (B, H/p, W/p, C), H and W multiples of p.

    ``len(channels)`` = log2(p) stride-2 3x3 convolutions, each followed by LayerNorm2d and GELU
    (LayerNorm, not BatchNorm: the statistics must not drift while a fine-tuning run keeps the
    encoder frozen in train mode), then a 1x1 projection to ``embed_dim``.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, channels: Tuple[int, ...]) -> None:
        super().__init__()
        if 2 ** len(channels) != patch_size:
            raise ValueError(f"a conv stem of {len(channels)} stride-2 stages downsamples {2 ** len(channels)}x, "
                             f"not the patch size {patch_size}")
        layers: List[nn.Module] = []
        c_in = in_chans
        for c in channels:
            layers += [nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1, bias=False), LayerNorm2d(c), nn.GELU()]
            c_in = c
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, embed_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.stem(x)).permute(0, 2, 3, 1)


class DetailBranch(nn.Module):
    """Pixels -> high-resolution maps for the mask decoder: (B, 3, H, W) -> [(B, c4, H/4, W/4), (B, c8, H/8, W/8)].

    Three stride-2 3x3 convolutions (c2, c4, c8 channels), LayerNorm2d + GELU after each; the
    stride-4 and stride-8 outputs are kept. Cheap (about 45 M multiply-adds at 256 px) and local:
    it carries edges and colours at the resolution the masks are predicted at.
    """

    def __init__(self, in_chans: int, channels: Tuple[int, ...]) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"a detail branch has three stages (stride 2, 4, 8), got channels {channels}")
        stages = []
        c_in = in_chans
        for c in channels:
            stages.append(nn.Sequential(nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1, bias=False), LayerNorm2d(c), nn.GELU()))
            c_in = c
        self.stages = nn.ModuleList(stages)
        self.channels = (channels[1], channels[2])

    def forward(self, x: Tensor) -> List[Tensor]:
        s2 = self.stages[0](x)
        s4 = self.stages[1](s2)
        return [s4, self.stages[2](s4)]


def build_vit_encoder(cfg: ViTConfig, *, img_size: int, out_chans: int, attention: Optional[AttentionConfig]) -> ImageEncoderViT:
    return ImageEncoderViT(
        img_size=img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio, out_chans=out_chans, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=cfg.window_size, global_attn_indexes=cfg.global_attn_indexes, attention=attention, stem=tuple(cfg.stem),
        detail=tuple(cfg.detail),
    )


# Official SAM / HQ-SAM checkpoints use these parameter names already: no filter.
VIT_FAMILY = register_family(ModelFamily("sam_vit", ViTConfig, build_vit_encoder))
