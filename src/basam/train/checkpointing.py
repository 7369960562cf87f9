"""Checkpoints you can trust: atomic step folders, an atomic ``latest`` pointer, pruning, RNG state.

Layout of ``OUT/checkpoints/``::

    step_<N>/model.safetensors   the whole model (basam.save_model), loadable for inference;
                                 metadata: basam_model, attention (JSON), architecture (JSON),
                                 hq_fusion, step, train_policy, resolution
    step_<N>/state.pt            optimizer, scheduler, RNG states, step, sampler position, config
                                 (read with torch.load(weights_only=True): tensors, numbers, strings)
    latest                       one line: the name of the newest complete step folder

Writing: both files go into a hidden temp folder (each fsynced), the folder is renamed to
``step_<N>`` (``os.replace``; atomic on one file system), then ``latest`` is replaced atomically
(temp file + ``os.replace``), and only then are old step folders pruned (the last ``keep``, never
the one ``latest`` names). A kill at any point leaves ``latest`` naming a complete checkpoint;
leftover temp folders are removed by the next run.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import CheckpointError, InputError
from ..io import fsync_dir

__all__ = [
    "STATE_FORMAT",
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "latest_checkpoint",
    "load_state",
    "list_steps",
    "prune",
    "clean_stale",
    "model_metadata",
    "load_trained",
]

STATE_FORMAT = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-step_"


# ----------------------------------------------------------------------------------------------
# RNG state as tensors and plain numbers (loadable with weights_only=True)


def rng_state() -> Dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python_version": int(version),
        "python": torch.tensor(list(internal), dtype=torch.int64),
        "python_gauss": None if gauss is None else float(gauss),
        "numpy_name": str(np_name),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_cached_gaussian": float(np_cached),
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate((int(state["python_version"]), tuple(int(x) for x in state["python"].tolist()), state["python_gauss"]))
    np.random.set_state((state["numpy_name"], state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                         int(state["numpy_has_gauss"]), float(state["numpy_cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------------------------
# Metadata


def model_metadata(model, *, architecture: Optional[dict], step: int, policy: str, resolution: int) -> Dict[str, str]:
    """What :func:`basam.save_model` stores beside the weights (it adds the name and attention)."""
    meta = {
        "architecture": json.dumps(architecture or {}, sort_keys=True),
        "step": str(int(step)),
        "train_policy": policy,
        "resolution": str(int(resolution)),
        "basam_train": "1",
    }
    if getattr(model, "is_hq", False):
        meta["hq_fusion"] = model.mask_decoder.hq_fusion
    return meta


# ----------------------------------------------------------------------------------------------
# Writing


def step_dir_name(step: int) -> str:
    return f"step_{int(step)}"


def save_checkpoint(ckpt_dir: Path, step: int, model, metadata: Dict[str, str], state: Dict[str, Any], keep: int) -> Path:
    """Write ``step_<step>/`` atomically, point ``latest`` at it, prune to the last ``keep``.

    Raises:
        InputError: the file system refuses a write (disk full, read-only); the temp folder is
            removed and ``latest`` is left naming the previous complete checkpoint.
    """
    from ..checkpoint import save_model
    from ..io import atomic_write

    ckpt_dir = Path(ckpt_dir)
    name = step_dir_name(step)
    final = ckpt_dir / name
    tmp = ckpt_dir / f"{_TMP_PREFIX}{step}-{os.getpid()}"
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        raise InputError(f"cannot write checkpoint {final}: {e.strerror or e}") from None
    try:
        save_model(model, tmp / "model.safetensors", metadata=metadata)
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(tmp / "state.pt", lambda f: f.write(buf.getvalue()))
        fsync_dir(tmp)
        if final.exists():  # the same step saved before (a rerun): move the old one out of the way
            trash = ckpt_dir / f"{_TMP_PREFIX}old-{step}-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(ckpt_dir)
    except BaseException as e:
        # Nothing half-written: the temp folder goes; ``latest`` still names the last complete one.
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # disk full, read-only file system: one line, not a traceback
            raise InputError(f"cannot write checkpoint {final}: {e.strerror or e}") from None
        raise
    atomic_write(ckpt_dir / "latest", lambda f: f.write((name + "\n").encode()))
    prune(ckpt_dir, keep)
    return final


def list_steps(ckpt_dir: Path) -> List[Tuple[int, Path]]:
    """``(step, folder)`` of every step folder, oldest first."""
    out = []
    if not Path(ckpt_dir).is_dir():
        return out
    for p in Path(ckpt_dir).iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _latest_name(ckpt_dir: Path) -> Optional[str]:
    p = Path(ckpt_dir) / "latest"
    try:
        return p.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def prune(ckpt_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` step folders (never the one ``latest`` names)."""
    steps = list_steps(ckpt_dir)
    protected = _latest_name(ckpt_dir)
    for _, p in steps[: max(0, len(steps) - keep)]:
        if p.name != protected:
            shutil.rmtree(p, ignore_errors=True)


def clean_stale(ckpt_dir: Path) -> None:
    """Remove temp folders a killed run left behind."""
    if not Path(ckpt_dir).is_dir():
        return
    for p in Path(ckpt_dir).iterdir():
        if p.name.startswith(_TMP_PREFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".latest.") and p.name.endswith(".tmp"):
            try:
                p.unlink()
            except OSError:
                pass


# ----------------------------------------------------------------------------------------------
# Reading


def load_state(step_dir: Path) -> Dict[str, Any]:
    """``state.pt`` of a step folder, read with ``weights_only=True``."""
    p = Path(step_dir) / "state.pt"
    if not p.is_file():
        raise CheckpointError(f"checkpoint {step_dir} has no state.pt")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "step" not in state:
        raise CheckpointError(f"{p} is not a basam training state (format {STATE_FORMAT})")
    return state


def _complete(step_dir: Path) -> bool:
    return (step_dir / "model.safetensors").is_file() and (step_dir / "state.pt").is_file()


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """The step folder ``latest`` names; if that one is gone or incomplete, the newest complete
    one (with a warning); None when there is none."""
    ckpt_dir = Path(ckpt_dir)
    name = _latest_name(ckpt_dir)
    if name is not None and _complete(ckpt_dir / name):
        return ckpt_dir / name
    for _, p in reversed(list_steps(ckpt_dir)):
        if _complete(p):
            if name is not None:
                warnings.warn(f"{ckpt_dir / 'latest'} names {name}, which is incomplete; resuming from {p.name}")
            return p
    return None


def load_trained(path: "str | os.PathLike[str]", device=None, **overrides):
    """Load a model ``basam train`` saved (a ``model.safetensors`` or its step folder), with the
    attention config, architecture and HQ fusion its metadata records."""
    from ..attention import AttentionConfig
    from ..checkpoint import read_metadata
    from ..load import load_model

    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    meta = read_metadata(p)
    if "basam_model" not in meta:
        raise InputError(f"{p} is not a basam safetensors file (no basam_model in its metadata)")
    attention = AttentionConfig(**json.loads(meta["attention"])) if "attention" in meta else "vanilla"
    kwargs: Dict[str, Any] = dict(checkpoint=p, attention=attention, device=device,
                                  architecture=json.loads(meta.get("architecture") or "{}") or None)
    if "hq_fusion" in meta:
        kwargs["hq_fusion"] = meta["hq_fusion"]
    kwargs.update(overrides)
    return load_model(meta["basam_model"], **kwargs)
