"""Model families as plug-ins: each encoder family registers how to build itself and how to read
foreign checkpoints, keyed by the type of its architecture config.

Adding a family (say, a hierarchical encoder) means: a config dataclass, an
:class:`~basam.models.encoder.ImageEncoder` subclass, one :func:`register_family` call, and one
:func:`basam.models.registry.register` per named variant (with its official checkpoint URL and
SHA-256 and its oracle package on the :class:`~basam.models.registry.ModelSpec`). ``build_sam``,
the loader, the downloader and the benchmark need no edit (tested with a toy family).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional

from torch import Tensor

from .encoder import ImageEncoder

#: (state dict) -> state dict: adapt a foreign checkpoint's encoder keys to basam's names (timm's
#: ``checkpoint_filter_fn`` idea). Receives and returns the full model state dict.
CheckpointFilter = Callable[[Mapping[str, Tensor]], Dict[str, Tensor]]


@dataclass(frozen=True)
class ModelFamily:
    """How to build one encoder family.

    Attributes:
        name: a short name for messages (``sam_vit``, ``tiny_vit``).
        config_type: the dataclass of its architecture (the ``encoder`` field of a ModelSpec).
        build_encoder: ``(config, img_size=, out_chans=, attention=) -> ImageEncoder``.
        checkpoint_filter: adapts official checkpoints of this family to basam's parameter names
            (None: they load as they are).
    """

    name: str
    config_type: type
    build_encoder: Callable[..., ImageEncoder]
    checkpoint_filter: Optional[CheckpointFilter] = None

    def filter_checkpoint(self, sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        return dict(self.checkpoint_filter(sd)) if self.checkpoint_filter is not None else dict(sd)


_FAMILIES: Dict[type, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Make ``family`` buildable: every ModelSpec whose encoder config is a ``family.config_type``."""
    _FAMILIES[family.config_type] = family
    return family


def unregister_family(family: ModelFamily) -> None:
    """Remove a family registered by :func:`register_family` (tests, plug-ins that unload)."""
    if _FAMILIES.get(family.config_type) is family:
        del _FAMILIES[family.config_type]


def family_of(config: object) -> ModelFamily:
    """The family an encoder config belongs to (by its type)."""
    for cls in type(config).__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls]
    known = ", ".join(f.name for f in _FAMILIES.values())
    raise ValueError(f"no model family is registered for {type(config).__name__}; registered: {known}")
