"""Write a randomly initialised basam checkpoint (safetensors), for demos and format examples.

    .venv/bin/python scripts/random_checkpoint.py mobile_sam out.safetensors --seed 0 \
        --architecture '{"embed_dims": [16, 32, 48, 320], "depths": [1, 1, 2, 1], "num_heads": [1, 2, 3, 10]}'
"""

import argparse
import json

import torch

import basam


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--architecture", type=json.loads, default=None)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = basam.create_model(args.model, **(args.architecture or {}))
    print(basam.save_model(model, args.out, metadata={"note": f"random weights, seed {args.seed}"}))


if __name__ == "__main__":
    main()
