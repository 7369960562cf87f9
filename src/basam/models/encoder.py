"""The image-encoder contract every model family implements, and the features it produces.

A family (SAM's ViT, TinyViT, a future hierarchical encoder) plugs into :class:`~basam.models.sam.Sam`
by subclassing :class:`ImageEncoder` and registering a :class:`~basam.models.family.ModelFamily`;
nothing in ``Sam``, the predictor or the decoder knows which family it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

from torch import Tensor, nn


@dataclass
class ImageFeatures:
    """What the image encoder computed for a batch of images.

    Attributes:
        embeddings: (B, C, h, w) image embeddings, one token per ``stride`` x ``stride`` pixels.
        interm: early encoder features (B, h, w, C') that HQ-SAM fuses (empty for plain SAM).
        input_size: (H, W) of the padded encoder input in pixels (H = stride * h).
        multiscale: higher-resolution feature maps (B, C_i, h_i, w_i), finest first, for encoders
            whose decoder reads several scales (hierarchical encoders); empty for SAM's ViT and TinyViT.
    """

    embeddings: Tensor
    interm: List[Tensor]
    input_size: Tuple[int, int]
    multiscale: List[Tensor] = field(default_factory=list)

    @property
    def grid(self) -> Tuple[int, int]:
        return tuple(self.embeddings.shape[-2:])

    def index_select(self, index: Tensor) -> "ImageFeatures":
        """The features of the images ``index`` (a 1-D long tensor) of the batch."""
        return ImageFeatures(self.embeddings.index_select(0, index), [t.index_select(0, index) for t in self.interm],
                             self.input_size, [t.index_select(0, index) for t in self.multiscale])

    def select(self, index: int) -> "ImageFeatures":
        """The features of one image of the batch, keeping a batch dimension of 1."""
        sl = slice(index, index + 1)
        return ImageFeatures(self.embeddings[sl], [t[sl] for t in self.interm], self.input_size,
                             [t[sl] for t in self.multiscale])


class ImageEncoder(nn.Module):
    """Base class of image encoders: what :class:`~basam.models.sam.Sam` relies on.

    Attributes every encoder sets in ``__init__``:
        img_size: the pretraining input side in px (sets N_train for BA-SAM and the default
            working resolution).
        stride: pixels per embedding token (16 for SAM's ViT and TinyViT): the embedding grid of a
            padded S x S input is S / stride.
        interm_dim: channels of the early features in ``interm`` (what HQ-SAM's decoder fuses).

    ``forward((B, 3, S, S))`` returns ``(embeddings (B, C, S/stride, S/stride), interm)`` or
    ``(embeddings, interm, multiscale)``: tensors and lists of tensors only, so that it can be
    captured in a CUDA graph. :meth:`Sam.encode` wraps the result in :class:`ImageFeatures`.
    """

    img_size: int
    stride: int
    interm_dim: int

    @property
    def pad_multiple(self) -> int:
        """The input side must be a multiple of this (the encoder's total downsampling by default)."""
        return self.stride

    @staticmethod
    def features(output: Sequence, input_size: Tuple[int, int], keep_interm: bool = True) -> ImageFeatures:
        """Wrap what ``forward`` returned."""
        emb, interm = output[0], output[1]
        multiscale = list(output[2]) if len(output) > 2 else []
        return ImageFeatures(emb, list(interm) if keep_interm else [], input_size, multiscale)
