#!/usr/bin/env python
"""Average the weights of basam checkpoints fine-tuned from one start (a uniform "model soup").

    python scripts/average_checkpoints.py runs/a/checkpoints/step_4500/model.safetensors \\
        runs/b/checkpoints/step_4500/model.safetensors --out runs/soup.safetensors

Why: runs that start from the same weights and differ in a loss weight or a sample stream stay in
one basin, and their mean is often better than either (Wortsman et al., "Model soups", ICML 2022).
Measure the result like any checkpoint; nothing here claims it is better.

The files must be basam safetensors checkpoints of the same model and architecture with the same
tensors (names, shapes, dtypes). Floating tensors are averaged in float32 and cast back; any other
tensor must be equal in every file. The header is the first file's, with ``averaged_from`` (the
files and their steps) added. Written atomically (temp file + rename): a failure leaves no file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from basam.checkpoint import read_metadata, read_state_dict, save_state_dict
from basam.errors import BasamError

#: header fields that must agree between the files (what the weights mean)
MUST_AGREE = ("basam_model", "architecture", "attention", "trained_outputs")


def average_state_dicts(sds: Sequence[Dict[str, torch.Tensor]], names: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The element-wise mean of state dicts with the same tensors; ``names`` label them in errors."""
    first, keys = sds[0], set(sds[0])
    for sd, name in zip(sds[1:], names[1:]):
        if set(sd) != keys:
            missing, extra = sorted(keys - set(sd)), sorted(set(sd) - keys)
            raise BasamError(f"{name} has other tensors than {names[0]}: missing {missing[:3]}, extra {extra[:3]}")
        for k in sorted(keys):
            if sd[k].shape != first[k].shape or sd[k].dtype != first[k].dtype:
                raise BasamError(f"{name}: {k} is {tuple(sd[k].shape)} {sd[k].dtype}, "
                                 f"{names[0]} has {tuple(first[k].shape)} {first[k].dtype}")
    out = {}
    for k in first:
        if first[k].is_floating_point():
            out[k] = torch.stack([sd[k].float() for sd in sds]).mean(0).to(first[k].dtype)
        else:  # integer buffers (counters, indices) cannot be averaged: they must agree
            for sd, name in zip(sds[1:], names[1:]):
                if not torch.equal(sd[k], first[k]):
                    raise BasamError(f"{name}: non-float tensor {k} differs from {names[0]}'s")
            out[k] = first[k]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", type=Path, nargs="+", help="two or more basam .safetensors checkpoints")
    ap.add_argument("--out", type=Path, required=True, help="the averaged .safetensors file to write")
    args = ap.parse_args(argv)
    try:
        if len(args.checkpoints) < 2:
            raise BasamError("give two or more checkpoints to average")
        if args.out.suffix != ".safetensors":
            raise BasamError(f"--out must be a .safetensors file, got {args.out}")
        metas = []
        for p in args.checkpoints:
            if p.suffix != ".safetensors" or not p.is_file():
                raise BasamError(f"{p} is not a .safetensors file")
            metas.append(read_metadata(p))
            if not metas[-1].get("basam_model"):
                raise BasamError(f"{p} is not a basam checkpoint (no basam_model in its header)")
        for p, meta in zip(args.checkpoints[1:], metas[1:]):
            for field in MUST_AGREE:
                if meta.get(field) != metas[0].get(field):
                    raise BasamError(f"{p} has {field}={meta.get(field)!r}, {args.checkpoints[0]} has {metas[0].get(field)!r}")
        names = [str(p) for p in args.checkpoints]
        sd = average_state_dicts([read_state_dict(p) for p in args.checkpoints], names)
        header = {**metas[0], "averaged_from": json.dumps([{"file": n, "step": m.get("step")} for n, m in zip(names, metas)])}
        save_state_dict(sd, args.out, header)
    except (BasamError, OSError) as e:  # OSError: the output cannot be written
        print(f"average_checkpoints: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: the mean of {len(args.checkpoints)} checkpoints, {len(sd)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
