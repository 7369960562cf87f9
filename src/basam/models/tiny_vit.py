"""MobileSAM's TinyViT image encoder at any input resolution, with BA-SAM attention.

Parameter names follow the official MobileSAM / HQ-SAM ``tiny_vit_sam.py`` so ``mobile_sam.pt`` and
``sam_hq_vit_tiny.pth`` load as they are (their unused ImageNet ``head``/``norm_head`` are dropped by
the checkpoint filter). Unlike the official code, no 64x64 grid is hard-coded: every stage reads its
grid from the input, so any input whose sides are multiples of 16 works.
"""

import itertools
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import AttentionConfig, BiasModeMask, attend, distance_matrix, layer_scale
from .common import LayerNorm2d
from .encoder import ImageEncoder
from .family import ModelFamily, register_family


@dataclass(frozen=True)
class TinyViTConfig:
    """TinyViT's architecture (MobileSAM's TinyViT-5M defaults)."""

    embed_dims: Tuple[int, ...] = (64, 128, 160, 320)
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: Tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0


class Conv2d_BN(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d, named ``c`` and ``bn`` as in the official code."""

    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        bn = nn.BatchNorm2d(b)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0)
        self.add_module("bn", bn)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.bn(self.c(x))
        # Eval: BatchNorm is affine with its running statistics, so fold it into the convolution's
        # weight and bias (a few thousand numbers, recomputed per call so weights stay live) and skip
        # one full read+write of the activation. Same result up to fp32 rounding.
        c, bn = self.c, self.bn
        s = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        w = c.weight * s.to(c.weight.dtype).view(-1, 1, 1, 1)
        b = (bn.bias - bn.running_mean * s).to(c.weight.dtype)
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: (B, 3, H, W) -> (B, C, H/4, W/4)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        n = embed_dim
        self.seq = nn.Sequential(Conv2d_BN(in_chans, n // 2, 3, 2, 1), nn.GELU(), Conv2d_BN(n // 2, n, 3, 2, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block. (B, C, H, W) -> same."""

    def __init__(self, in_chans: int, out_chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(in_chans * expand_ratio)
        self.conv1 = Conv2d_BN(in_chans, hidden, ks=1)
        self.act1 = nn.GELU()
        self.conv2 = Conv2d_BN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2d_BN(hidden, out_chans, ks=1, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsampling between stages: (B, C, H, W) or (B, H*W, C) tokens -> ((B, H'*W', C'), (H', W'))."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tuple[Tensor, Tuple[int, int]]:
        if x.ndim == 3:
            B = x.shape[0]
            x = x.view(B, hw[0], hw[1], -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        out_hw = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), out_hw


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks on the (B, C, H, W) map, then a merge to tokens."""

    def __init__(self, dim: int, depth: int, out_dim: int, merge_stride: int, conv_expand_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, dim, conv_expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, merge_stride)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tuple[Tensor, Tuple[int, int]]:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x, hw)


class Mlp(nn.Module):
    """Pre-norm MLP of the TinyViT blocks. (B, N, C) -> (B, N, C)."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Window self-attention with TinyViT's learned offset bias and BA-SAM. (B, ws*ws, C)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, window_size: int, attention: Optional[AttentionConfig] = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.window_size = window_size
        self.d = key_dim  # attn_ratio = 1 in every SAM-family TinyViT
        h = self.d * num_heads + key_dim * num_heads * 2
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, h)
        self.proj = nn.Linear(self.d * num_heads, dim)
        # One learned bias per head and per |row offset|, |column offset| pair, enumerated in the
        # order the official code does, so that checkpoints' attention_biases index the same way.
        points = list(itertools.product(range(window_size), range(window_size)))
        offsets: dict = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(off, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs, dtype=torch.long).view(len(points), len(points)), persistent=False)
        self.bam = BiasModeMask(num_heads, attention)
        # Set by the block: stride of the stage's feature map and the model's pretraining size.
        self.stride = 16
        self.train_size = 1024

    def _distances(self, dist: str, like: Tensor) -> Tensor:
        """Token distances within the window (N, N), cached per distance kind, device and dtype."""
        cache = self.__dict__.setdefault("_distance_cache", {})
        key = (dist, like.device, like.dtype)
        if key not in cache:
            cache[key] = distance_matrix((self.window_size, self.window_size), dist, device=like.device).to(like.dtype)
        return cache[key]

    def forward(self, x: Tensor, image_tokens: Optional[int] = None) -> Tensor:
        B, N, _ = x.shape
        x = self.norm(x)
        q, k, v = self.qkv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        cfg = self.bam.config
        scale = layer_scale(
            self.key_dim, cfg,
            window_tokens=N,
            image_tokens=N if image_tokens is None else image_tokens,
            stride=self.stride,
            default_train_size=self.train_size,
        )
        dense = self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N)
        slopes = self.bam.active_slopes()
        if slopes is not None:
            # The window is fixed, so the BM-AM term joins TinyViT's own dense bias in one pass
            # here instead of being rebuilt per call from grid coordinates (a dozen small kernels
            # per layer: 6-13 % of MobileSAM's GPU time).
            dense = dense - slopes.to(dense.dtype)[:, None, None] * self._distances(cfg.dist, dense)
        out = attend(
            q, k, v,
            scale=scale,
            grid=(self.window_size, self.window_size),
            dense_bias=dense,
            backend=cfg.backend,
            chunk_bytes=cfg.chunk_bytes,
        )
        return self.proj(out.transpose(1, 2).reshape(B, N, -1))


class TinyViTBlock(nn.Module):
    """Window attention + depthwise conv + MLP on (B, H*W, C) tokens of an (H, W) grid."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int, attention: Optional[AttentionConfig]) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, window_size, attention)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2d_BN(dim, dim, ks=local_conv_size, stride=1, pad=local_conv_size // 2, groups=dim)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        H, W = hw
        B, L, C = x.shape
        ws = self.window_size
        res = x
        # Windows are cut from the *un-normalised* tokens (the norm is inside Attention) and padded
        # with zeros that take part as keys, exactly as the official code does.
        x = x.view(B, H, W, C)
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        pH, pW = H + pad_b, W + pad_r
        nH, nW = pH // ws, pW // ws
        x = x.view(B, nH, ws, nW, ws, C).transpose(2, 3).reshape(B * nH * nW, ws * ws, C)
        x = self.attn(x, image_tokens=H * W)
        x = x.view(B, nH, nW, ws, ws, C).transpose(2, 3).reshape(B, pH, pW, C)
        if pad_b or pad_r:
            x = x[:, :H, :W].contiguous()
        x = res + x.view(B, L, C)
        x = self.local_conv(x.transpose(1, 2).reshape(B, C, H, W))
        x = x.view(B, C, L).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """One attention stage: TinyViT blocks on an (H, W) grid, then an optional merge."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int,
                 out_dim: Optional[int], merge_stride: int, attention: Optional[AttentionConfig]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size, attention) for _ in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim, merge_stride) if out_dim is not None else None

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tuple[Tensor, Tuple[int, int]]:
        for blk in self.blocks:
            x = blk(x, hw)
        if self.downsample is not None:
            x, hw = self.downsample(x, hw)
        return x, hw


class TinyViT(ImageEncoder):
    """(B, 3, H, W), sides multiples of 16 (``stride``) -> ((B, 256, H/16, W/16), interm).

    ``interm`` is ``[stage-2 input tokens as (B, H/16, W/16, embed_dims[2])]``: the early feature
    HQ-SAM's tiny model fuses.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
        attention: Optional[AttentionConfig] = None,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.stride = 16  # patch embed /4, two /2 merges, the last merge keeps the grid
        self.embed_dims = tuple(embed_dims)
        self.interm_dim = self.embed_dims[2]
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        n = len(depths)
        # The merge into the last stage keeps the resolution (the official code keys this on the
        # output width being 320/448/576, which is the last stage in every released model).
        merge_strides = [1 if i == n - 2 else 2 for i in range(n)]
        self.layers = nn.ModuleList()
        for i in range(n):
            out_dim = embed_dims[i + 1] if i < n - 1 else None
            if i == 0:
                self.layers.append(ConvLayer(embed_dims[0], depths[0], out_dim, merge_strides[0], mbconv_expand_ratio))
            else:
                self.layers.append(BasicLayer(embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio,
                                              local_conv_size, out_dim, merge_strides[i], attention))
        # Stage strides: patch embed /4, then each merge.
        stride = 4
        for i, layer in enumerate(self.layers):
            if i > 0:
                for blk in layer.blocks:
                    blk.attn.stride, blk.attn.train_size = stride, img_size
            stride *= merge_strides[i] if i < n - 1 else 1
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        # The convolutional stages run channels-last: oneDNN's depthwise and 1x1 convolutions are
        # ~2-3x faster on it than on NCHW on the CPU, and PatchMerging's output then already is the
        # (B, H*W, C) token layout, so flattening to tokens costs no copy.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        hw = (x.shape[2], x.shape[3])
        interm: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            x, hw = layer(x, hw)
            if i == 1:
                interm.append(x.view(x.shape[0], hw[0], hw[1], -1))
        B, _, C = x.shape
        x = x.view(B, hw[0], hw[1], C).permute(0, 3, 1, 2)
        return self.neck(x), interm


def build_tiny_vit_encoder(cfg: TinyViTConfig, *, img_size: int, out_chans: int, attention: Optional[AttentionConfig]) -> TinyViT:
    return TinyViT(img_size=img_size, embed_dims=cfg.embed_dims, depths=cfg.depths, num_heads=cfg.num_heads,
                   window_sizes=cfg.window_sizes, mlp_ratio=cfg.mlp_ratio, out_chans=out_chans, attention=attention)


#: keys of the official TinyViT that basam does not build: its ImageNet classifier, unused by SAM
_UNUSED_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")


def tiny_vit_checkpoint_filter(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Drop the official TinyViT's classifier head from a MobileSAM / HQ-SAM tiny checkpoint."""
    return {k: v for k, v in sd.items() if not k.startswith(_UNUSED_PREFIXES)}


TINY_VIT_FAMILY = register_family(ModelFamily("tiny_vit", TinyViTConfig, build_tiny_vit_encoder, tiny_vit_checkpoint_filter))
