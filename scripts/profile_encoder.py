"""Where the encoder's GPU time goes: torch.profiler over a few encoder calls, top kernels by CUDA time.

    python scripts/profile_encoder.py --model sam_vit_b --resolution 1024 2048 --attention basam
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sam_vit_b")
    ap.add_argument("--resolution", nargs="+", type=int, default=[1024, 2048])
    ap.add_argument("--attention", default="basam")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rows", type=int, default=22)
    args = ap.parse_args()
    from basam.models import create_model

    model = create_model(args.model, attention=args.attention).eval().cuda().to(torch.bfloat16)
    for res in args.resolution:
        x = torch.randn(1, 3, res, res, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            for _ in range(3):
                model.encode(x)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(args.iters):
                    model.encode(x)
                torch.cuda.synchronize()
        print(f"=== {args.model} {res}px {args.attention} bf16: CUDA time per call by kernel (of {args.iters} calls)")
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70)
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
