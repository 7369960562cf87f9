"""SAM 2's image encoder: the Hiera trunk and its FPN neck, behind basam's ImageEncoder contract.

Parameter names follow the official ``sam2`` package (``image_encoder.trunk.*``,
``image_encoder.neck.convs.<i>.conv.*``). The neck's sine position encodings feed only the video
memory, so they are not computed here.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import AttentionConfig
from .encoder import ImageEncoder
from .hiera import Hiera, HieraConfig, stage_strides


class FpnNeck(nn.Module):
    """A 1x1 lateral convolution per trunk level; the ``top_down_levels`` also add the coarser
    level's output upsampled 2x (nearest). Levels are finest first in and out. (B, C_i, h_i, w_i) -> (B, d, h_i, w_i)."""

    def __init__(self, d_model: int, backbone_channel_list: Sequence[int], top_down_levels: Sequence[int]) -> None:
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)  # coarsest first, as the official convs
        self.convs = nn.ModuleList()
        for dim in self.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(lateral)
        self.top_down_levels = list(top_down_levels)

    def forward(self, xs: List[Tensor]) -> List[Tensor]:
        n = len(self.convs) - 1
        out: List[Optional[Tensor]] = [None] * len(self.convs)
        prev = None
        for i in range(n, -1, -1):  # coarse to fine
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and prev is not None:
                # the exact 2x of each level is guaranteed by the 32 px input multiple
                prev = lateral + F.interpolate(prev.float(), scale_factor=2.0, mode="nearest").to(lateral.dtype)
            else:
                prev = lateral
            out[i] = prev
        return out  # type: ignore[return-value]


class Sam2ImageEncoder(ImageEncoder):
    """Hiera + FPN: (B, 3, H, W), H and W multiples of 32 -> (embeddings (B, d, H/16, W/16), [],
    [(B, d, H/4, W/4), (B, d, H/8, W/8)]).

    The two finer maps are the raw neck outputs; :class:`~basam.models.sam2.Sam2` projects them
    with the decoder's ``conv_s0``/``conv_s1`` as the official model does.
    """

    def __init__(self, cfg: HieraConfig, img_size: int = 1024, out_chans: int = 256,
                 attention: Optional[AttentionConfig] = None) -> None:
        super().__init__()
        self.img_size = img_size
        self.trunk = Hiera(cfg, img_size=img_size, attention=attention)
        self.neck = FpnNeck(out_chans, self.trunk.channel_list, cfg.fpn_top_down_levels)
        self.scalp = cfg.scalp
        strides = stage_strides(cfg)
        kept = strides[: len(strides) - self.scalp]
        self.stride = kept[-1]  # the embedding the decoder reads: 16 px per token
        self.level_strides: Tuple[int, ...] = tuple(kept)
        self.interm_dim = self.trunk.channel_list[0]
        self._pad_multiple = strides[-1]

    @property
    def pad_multiple(self) -> int:
        """32: every stage (down to stride 32) must see a whole grid."""
        return self._pad_multiple

    def forward(self, x: Tensor) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
        if x.shape[-2] % self.pad_multiple or x.shape[-1] % self.pad_multiple:
            raise ValueError(f"the SAM 2 encoder needs sides that are multiples of {self.pad_multiple}, got {tuple(x.shape[-2:])}")
        levels = self.neck(self.trunk(x))
        if self.scalp > 0:
            levels = levels[: -self.scalp]
        return levels[-1], [], list(levels[:-1])


def build_sam2_encoder(cfg: HieraConfig, *, img_size: int, out_chans: int, attention: Optional[AttentionConfig]) -> Sam2ImageEncoder:
    return Sam2ImageEncoder(cfg, img_size=img_size, out_chans=out_chans, attention=attention)


__all__ = ["FpnNeck", "Sam2ImageEncoder", "build_sam2_encoder"]
