"""``load_model``: a registry name + a checkpoint (or the official download) -> a model in eval mode."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from .attention import AttentionConfig
from .checkpoint import load_weights, read_metadata, read_state_dict
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
    attention: "AttentionConfig | str | None" = None,
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
            None: the weights shipped in the package (``basam_tiny``), else the official file,
            downloaded once into ``$BASAM_HOME`` (default ``~/.cache/basam``) and verified against
            its pinned SHA-256.
        attention: a preset (``vanilla``, ``nsf``, ``basam``) or an :class:`AttentionConfig`;
            ``attention_overrides`` (``beta=``, ``dist=``, ...) adjust it. None: the config a basam
            checkpoint records (a fine-tuned model keeps its trained slopes), else ``vanilla``.
        device: where to put the model (default: CPU).
        hq_fusion: for HQ-SAM models, ``independent``, ``add`` (the official output) or ``product``;
            None: what a basam checkpoint records, else ``add``.
        architecture: overrides of the registered architecture (``depth=``, ``embed_dim=``, ...),
            for reduced models (see :func:`basam.models.registry.shrink`); None: what a basam
            checkpoint records, else the registered one.
    """
    spec = get_spec(name)
    if hq_fusion is not None and not spec.hq:
        raise InputError(f"hq_fusion applies to sam_hq_* models, not {name}")
    path = resolve_checkpoint(name, checkpoint, download=download, progress=progress)
    meta = read_metadata(path) if path.exists() else {}
    recorded = meta.get("basam_model")
    if recorded and recorded != name:
        raise CheckpointError(f"checkpoint {path} holds a {recorded} model, not {name} (use --model {recorded})")
    if architecture is None and meta.get("architecture"):
        architecture = json.loads(meta["architecture"]) or None
    recorded_attention = _recorded_attention(meta)
    if attention is None:
        attention = recorded_attention or "vanilla"
    if hq_fusion is None and spec.hq:
        hq_fusion = meta.get("hq_fusion") or "add"
    if architecture:
        spec = shrink(spec, **dict(architecture))
    config = AttentionConfig.coerce(attention, **attention_overrides)
    model = build_sam(spec, config, hq_fusion=hq_fusion or "add")
    load_weights_into(model, path, model_name=name, meta=meta)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def load_weights_into(model: Sam, source: "PathLike | Mapping[str, Tensor]", *, model_name: Optional[str] = None,
                      meta: Optional[dict] = None, label: Optional[str] = None, fresh: Tuple[str, ...] = ()) -> dict:
    """Put weights into a built model: the one rule every loader follows.

    Reads ``source`` (a path: official ``.pth`` via ``torch.load(weights_only=True)`` or a basam
    ``.safetensors``; or a state dict already in memory), adapts its keys to basam's names, loads it
    strictly (a mismatch names the missing, unexpected and mis-shaped keys), and then, unless the
    file records *trained* slopes, resets the BA-SAM slopes to the beta of the model's current
    attention config (an official file has no slopes; untrained ones follow the requested beta).

    The recorded attention config, architecture and HQ fusion a basam file carries are in the
    returned metadata (``recorded_attention(meta)``); :func:`load_model` reads them *before* building
    the model, since they decide its shape and attention. ``fresh``: key prefixes the file may lack
    (they keep their initialisation; see :func:`~basam.checkpoint.load_weights`). Returns the file's
    metadata ({} for a state dict or an official file).
    """
    if isinstance(source, Mapping):
        sd, meta, where = source, (meta or {}), label or "state dict"
    else:
        path = Path(source)
        where = label or f"checkpoint {path}"
        meta = read_metadata(path) if meta is None else meta
        sd = read_state_dict(path)
    load_weights(model, sd, source=where, model_name=model_name, fresh=fresh)
    # Which decoder outputs the weights were trained for ("all", or "multimask" for a model trained
    # with one-point prompts only, whose single-mask token is untrained): the predictor follows it.
    model.trained_outputs = meta.get("trained_outputs", "all")
    recorded = recorded_attention(meta)
    if not (recorded is not None and recorded.trainable_slopes):
        model.set_attention(model.attention_config, reset_slopes=True)
    return meta


def recorded_attention(meta: dict) -> Optional[AttentionConfig]:
    """The AttentionConfig a basam safetensors file records in its metadata, if any."""
    return _recorded_attention(meta)


def _recorded_attention(meta: dict) -> Optional[AttentionConfig]:
    """The AttentionConfig a basam safetensors file records in its metadata, if any."""
    if "attention" not in meta:
        return None
    try:
        values = json.loads(meta["attention"])
    except json.JSONDecodeError:
        return None
    known = {f.name for f in fields(AttentionConfig)}
    return AttentionConfig(**{k: v for k, v in values.items() if k in known})
