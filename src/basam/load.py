"""``load_model``: a registry name + a checkpoint (or the official download) -> a model in eval mode."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch

from .attention import AttentionConfig
from .checkpoint import load_weights, read_state_dict
from .errors import CheckpointError, InputError
from .models.registry import build_sam, get_spec, shrink
from .models.sam import Sam

PathLike = Union[str, "os.PathLike[str]"]


def bundled_weights(name: str) -> Optional[Path]:
    """The weights file shipped inside the package for ``name`` (None if it ships none)."""
    spec = get_spec(name)
    if spec.bundled is None:
        return None
    path = Path(__file__).resolve().parent / "weights" / spec.bundled
    if not path.is_file():
        raise CheckpointError(f"the bundled weights of {name} are missing ({path}); reinstall basam or pass checkpoint=PATH")
    return path


def resolve_checkpoint(name: str, checkpoint: Optional[PathLike], download: bool = True, progress: bool = True) -> Path:
    """The file to load for ``name``: ``checkpoint`` if given, else the bundled weights, else the
    cached official download."""
    if checkpoint is not None:
        return Path(checkpoint)
    bundled = bundled_weights(name)
    if bundled is not None:
        return bundled
    if not download:
        raise CheckpointError(f"no checkpoint given for {name} and downloading is off; pass checkpoint=PATH")
    from .hub import download_checkpoint

    return download_checkpoint(name, progress=progress)


def load_model(
    name: str,
    checkpoint: Optional[PathLike] = None,
    attention: "AttentionConfig | str" = "vanilla",
    device: "torch.device | str | None" = None,
    hq_fusion: Optional[str] = None,
    download: bool = True,
    progress: bool = True,
    architecture: Optional[dict] = None,
    **attention_overrides,
) -> Sam:
    """Build a registered model, load its weights strictly, and return it in eval mode.

    Args:
        name: registry name (``basam.list_models()``): ``sam_vit_b``, ``mobile_sam``, ``sam_hq_vit_l``, ...
        checkpoint: a local file: an official ``.pth``/``.pt`` or a basam ``.safetensors``. When
            None, the official file is downloaded once into ``$BASAM_HOME`` (default
            ``~/.cache/basam``) and verified against its pinned SHA-256.
        attention: a preset (``vanilla``, ``nsf``, ``basam``) or an :class:`AttentionConfig`;
            ``attention_overrides`` (``beta=``, ``dist=``, ...) adjust a preset.
        device: where to put the model (default: CPU).
        hq_fusion: for HQ-SAM models, ``independent``, ``add`` (default, the official output) or
            ``product``.
        architecture: overrides of the registered architecture (``depth=``, ``embed_dim=``, ...),
            for reduced models; see :func:`basam.models.registry.shrink`.
    """
    spec = get_spec(name)
    if architecture:
        spec = shrink(spec, **dict(architecture))
    config = AttentionConfig.coerce(attention, **attention_overrides)
    if hq_fusion is not None and not spec.hq:
        raise InputError(f"hq_fusion applies to sam_hq_* models, not {name}")
    model = build_sam(spec, config, hq_fusion=hq_fusion or "add")
    path = resolve_checkpoint(name, checkpoint, download=download, progress=progress)
    sd = read_state_dict(path)
    load_weights(model, sd, source=f"checkpoint {path}", model_name=name)
    model.eval()
    if device is not None:
        model.to(device)
    return model
