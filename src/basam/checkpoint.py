"""Reading, adapting, strictly loading and saving model weights.

Official files (``sam_vit_b_01ec64.pth``, ``mobile_sam.pt``, ``sam_hq_vit_l.pth``, ...) are read
with ``torch.load(..., weights_only=True)`` (never unpickled as code) and loaded as they are: a
small filter drops what basam does not build (TinyViT's unused ImageNet classifier), and any other
mismatch fails with the offending keys named. basam's own saves are safetensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

from .errors import CheckpointError
from .io import atomic_write

__all__ = ["read_state_dict", "adapt_state_dict", "load_weights", "identify_checkpoint", "save_model", "read_metadata"]

# Parameters basam adds that official checkpoints cannot have: filled from the config instead.
_BASAM_ONLY_SUFFIXES = (".bam.slopes",)
# Official keys basam does not build: TinyViT's ImageNet classifier, unused by SAM.
_DROPPED_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")
_WRAPPER_KEYS = ("model", "state_dict", "module")


def read_state_dict(path: "str | os.PathLike[str]") -> Dict[str, Tensor]:
    """Read a checkpoint file into a flat {name: tensor} dict, on the CPU.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. Raises :class:`CheckpointError` with one line on a missing,
    truncated or foreign file.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint file not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty: {p}")
    try:
        if p.suffix == ".safetensors":
            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - torch/safetensors raise many types for a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if len(reason) > 160:
            reason = reason[:157] + "..."
        raise CheckpointError(f"cannot read checkpoint {p}: truncated, corrupt or not a weights file ({reason})") from None
    for key in _WRAPPER_KEYS:
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping) and not isinstance(sd[key], Tensor):
            sd = sd[key]
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"cannot read checkpoint {p}: it holds no state dict of tensors")
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"cannot read checkpoint {p}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    return dict(sd)


def adapt_state_dict(sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Map an official (or DDP-wrapped) state dict onto basam's parameter names."""
    out: Dict[str, Tensor] = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module.") :]
        if k.startswith(_DROPPED_PREFIXES):
            continue
        out[k] = v
    return out


def identify_checkpoint(sd: Mapping[str, Tensor]) -> Optional[str]:
    """Guess the registry name a state dict belongs to, from its keys and shapes (or None)."""
    sd = adapt_state_dict(sd)
    hq = any(k.startswith("mask_decoder.hf_token") for k in sd)
    if "image_encoder.patch_embed.proj.weight" in sd:
        dim = sd["image_encoder.patch_embed.proj.weight"].shape[0]
        size = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(dim)
        if size is None:
            return None
        return f"sam_hq_{size}" if hq else f"sam_{size}"
    if "image_encoder.patch_embed.seq.0.c.weight" in sd:
        return "sam_hq_vit_tiny" if hq else "mobile_sam"
    return None


def _short_list(keys: List[str], n: int = 4) -> str:
    keys = sorted(keys)
    more = f", ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(model: nn.Module, sd: Mapping[str, Tensor], source: str = "checkpoint", model_name: Optional[str] = None) -> None:
    """Strictly load ``sd`` into ``model``: every key must match in name and shape.

    The only keys allowed to be absent are basam's own additions (BA-SAM slopes), which keep the
    values the attention config gave them. On a mismatch raises :class:`CheckpointError` naming the
    missing, unexpected and mis-shaped keys and, where it can tell, which model the file is for.
    """
    sd = adapt_state_dict(sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(_BASAM_ONLY_SUFFIXES)]
    unexpected = [k for k in sd if k not in own]
    mis_shaped = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or mis_shaped:
        name = model_name or getattr(model, "name", type(model).__name__)
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_short_list(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_short_list(unexpected)})")
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} of another shape ({_short_list(mis_shaped, 2)})")
        guess = identify_checkpoint(sd)
        hint = f"; it looks like a {guess} checkpoint (use --model {guess})" if guess and guess != name else ""
        raise CheckpointError(f"{source} does not fit {name}: " + "; ".join(parts) + hint)
    model.load_state_dict(sd, strict=False)


def save_model(model: nn.Module, path: "str | os.PathLike[str]", metadata: Optional[Dict[str, str]] = None) -> Path:
    """Save ``model``'s weights as safetensors, atomically (temp file + rename).

    ``metadata`` (str -> str) is stored in the file header; the model's registry name and
    attention config are added.
    """
    p = Path(path)
    meta = {"format": "pt", "basam_model": str(getattr(model, "name", ""))}
    cfg = getattr(model, "attention_config", None)
    if cfg is not None:
        meta["attention"] = json.dumps(cfg.__dict__)
    meta.update(metadata or {})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    p.parent.mkdir(parents=True, exist_ok=True)
    blob = save(tensors, metadata=meta)
    return atomic_write(p, lambda f: f.write(blob))


def read_metadata(path: "str | os.PathLike[str]") -> Dict[str, str]:
    """The header metadata of a basam safetensors file ({} for other files)."""
    p = Path(path)
    if p.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
