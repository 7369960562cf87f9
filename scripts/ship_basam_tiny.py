#!/usr/bin/env python
"""Put a trained basam_tiny checkpoint into the package as the bundled weights.

    python scripts/ship_basam_tiny.py runs/basam_tiny_v2/checkpoints/step_12000/model.safetensors \\
        --note "trained from scratch ... (basam train --recipe basam_tiny_v2), 12000 steps"

Checks that the file is a basam_tiny training checkpoint that loads into the registry's
basam_tiny as it is (strict, no architecture override), then writes
``src/basam/weights/basam_tiny.safetensors`` (temp file + rename) with the same tensors and its
metadata plus ``note``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from basam.checkpoint import read_metadata, read_state_dict, save_state_dict
from basam.errors import BasamError

TARGET = Path(__file__).resolve().parents[1] / "src" / "basam" / "weights" / "basam_tiny.safetensors"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--note", required=True, help="what the weights are, stored in the file's header")
    ap.add_argument("--out", type=Path, default=TARGET)
    args = ap.parse_args(argv)
    try:
        import basam

        meta = read_metadata(args.checkpoint)
        if meta.get("basam_model") != "basam_tiny":
            raise BasamError(f"{args.checkpoint} is not a basam_tiny checkpoint (basam_model={meta.get('basam_model')!r})")
        model = basam.load_model("basam_tiny", checkpoint=args.checkpoint)  # strict, registry architecture
        arch = json.loads(meta.get("architecture") or "{}")
        spec = model.spec.encoder
        if any(getattr(spec, k) != (tuple(v) if isinstance(v, list) else v) for k, v in arch.items()):
            raise BasamError(f"{args.checkpoint} records architecture {arch}, which is not the registry's basam_tiny")
        sd = read_state_dict(args.checkpoint)
        save_state_dict(sd, args.out, {**meta, "architecture": "{}", "note": args.note})
    except BasamError as e:
        print(f"ship_basam_tiny: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB, {len(sd)} tensors, step {meta.get('step')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
