"""Reading, adapting, strictly loading and saving model weights.

Official files (``sam_vit_b_01ec64.pth``, ``mobile_sam.pt``, ``sam_hq_vit_l.pth``, ...) are read
with ``torch.load(..., weights_only=True)`` (never unpickled as code) and loaded as they are: the
model family's checkpoint filter (:mod:`basam.models.family`) adapts what differs (TinyViT drops
its unused ImageNet classifier), and any other mismatch fails with the offending keys named.
basam's own saves are safetensors.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

from .errors import CheckpointError
from .io import atomic_write

__all__ = ["read_state_dict", "adapt_state_dict", "load_weights", "identify_checkpoint", "save_model", "read_metadata"]

# Parameters basam adds that official checkpoints cannot have: filled from the config instead.
_BASAM_ONLY_SUFFIXES = (".bam.slopes",)
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
    except pickle.UnpicklingError as e:
        # torch's own text suggests weights_only=False; basam never unpickles code from a file.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"refused checkpoint {p}: it holds pickled Python objects beyond tensors{what}, and basam never "
            "unpickles code from a file; save the weights alone (torch.save(model.state_dict(), path)) or as safetensors"
        ) from None
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


def adapt_state_dict(sd: Mapping[str, Tensor], family=None) -> Dict[str, Tensor]:
    """Map an official (or DDP-wrapped) state dict onto basam's parameter names.

    ``family``: the :class:`~basam.models.family.ModelFamily` whose checkpoint filter applies
    (``family_of(spec.encoder)``); None: only the DDP ``module.`` prefix is removed.
    """
    out = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return family.filter_checkpoint(out) if family is not None else out


def _family_of_model(model: nn.Module):
    spec = getattr(model, "spec", None)
    if spec is None:
        return None
    from .models.family import family_of

    return family_of(spec.encoder)


@functools.lru_cache(maxsize=None)
def _expected_shapes(spec) -> Dict[str, tuple]:
    """Parameter names and shapes of a registered variant, built on the meta device (no memory)."""
    from .models.registry import build_sam

    with torch.device("meta"):
        model = build_sam(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def identify_checkpoint(sd: Mapping[str, Tensor]) -> Optional[str]:
    """Guess the registry name a state dict belongs to, or None.

    Every registered variant is built on the meta device (no memory) and compared, after its
    family's checkpoint filter, by how many of the file's tensors it has under the same name and
    shape (ties: the variant with fewer parameters the file lacks). More than half of the file's
    tensors must fit. Generic, so a new family is recognised without code here; a reduced or
    partial file still points at the variant it came from.
    """
    from .models.family import family_of
    from .models.registry import MODEL_SPECS

    best, best_score = None, None
    for name, spec in MODEL_SPECS.items():
        candidate = adapt_state_dict(sd, family_of(spec.encoder))
        try:
            expected = _expected_shapes(spec)
        except Exception:  # noqa: BLE001 - a plug-in that cannot build on the meta device: skip it
            continue
        fit = sum(1 for k, v in candidate.items() if expected.get(k) == tuple(v.shape))
        lacking = sum(1 for k in expected if k not in candidate and not k.endswith(_BASAM_ONLY_SUFFIXES))
        if 2 * fit <= len(candidate):
            continue
        score = (fit, -lacking)
        if best_score is None or score > best_score:
            best, best_score = name, score
    return best


def _short_list(keys: List[str], n: int = 4) -> str:
    keys = sorted(keys)
    more = f", ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(model: nn.Module, sd: Mapping[str, Tensor], source: str = "checkpoint", model_name: Optional[str] = None,
                 fresh: Tuple[str, ...] = ()) -> None:
    """Strictly load ``sd`` into ``model``: every key must match in name and shape.

    The only keys allowed to be absent are basam's own additions (BA-SAM slopes), which keep the
    values the attention config gave them, and keys under the ``fresh`` prefixes (modules a run
    trains from their initialisation, e.g. HQ-SAM's own modules on top of a plain SAM file), which
    keep their initial values. On a mismatch raises :class:`CheckpointError` naming the missing,
    unexpected and mis-shaped keys and, where it can tell, which model the file is for.
    """
    sd = adapt_state_dict(sd, _family_of_model(model))
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(_BASAM_ONLY_SUFFIXES) and not k.startswith(tuple(fresh))]
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
    trained = getattr(model, "trained_outputs", "all")
    if trained != "all":
        meta["trained_outputs"] = trained
    meta.update(metadata or {})
    return save_state_dict(model.state_dict(), p, meta)


def save_state_dict(sd: Mapping[str, Tensor], path: "str | os.PathLike[str]", metadata: Dict[str, str]) -> Path:
    """Write ``sd`` as safetensors with ``metadata`` (str -> str) as the header, atomically (temp
    file + rename; the folder is made if needed): a failure leaves no partial file."""
    p = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    p.parent.mkdir(parents=True, exist_ok=True)
    blob = save(tensors, metadata=dict(metadata))
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
