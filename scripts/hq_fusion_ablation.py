"""The HQ-token fusion ablation: train HQ-SAM's HQ modules with each fusion mode, evaluate, tabulate.

    .venv/bin/python scripts/hq_fusion_ablation.py --model sam_hq_vit_b --checkpoint sam_hq_vit_b.pth \\
        --data DIS5K/DIS-TR:dis5k --val-data DIS5K/DIS-VD:dis5k --steps 2000 --resolution 1024 --out runs/fusion

Runs ``basam train --train hq --hq-fusion MODE`` for MODE in independent, add, product (same seed,
data and steps), then ``basam evaluate`` of each result at the given resolution, and writes
``<out>/fusion_ablation.md`` / ``.json``: one row per mode (IoU, boundary IoU, MAE, S-measure, ...).
Extra arguments after ``--`` go to ``basam train``.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODES = ("independent", "add", "product")
SHOWN = ("iou", "boundary_iou", "dice", "mae", "s_measure", "weighted_f")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--architecture", default=None, help="JSON (testing: reduced models)")
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--val-data", action="append", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", required=True)
    ap.add_argument("train_args", nargs="*", help="after --: more basam train options")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    basam = [sys.executable, "-m", "basam"]
    common = ["--model", args.model, "--device", args.device] + (["--architecture", args.architecture] if args.architecture else [])
    rows = []
    for mode in MODES:
        run = out / mode
        t0 = time.time()
        train = basam + ["train", *common, "--train", "hq", "--hq-fusion", mode, "--attention", "vanilla",
                         "--resolution", str(args.resolution), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                         "--save-every", str(args.steps), "--eval-every", str(10**9), "--out", str(run), "-q", *args.train_args]
        train += (["--checkpoint", args.checkpoint] if args.checkpoint else [])
        for d in args.data:
            train += ["--data", d]
        subprocess.run(train, check=True)
        evaluate = basam + ["evaluate", *common, "--checkpoint", str(run / "checkpoints" / f"step_{args.steps}" / "model.safetensors"),
                            "--resolutions", str(args.resolution), "--attention", "vanilla", "--hq-fusion", mode,
                            "--out", str(run / "eval"), "-q"]
        evaluate += ["--max-images", str(args.max_images)] if args.max_images else []
        for d in args.val_data:
            evaluate += ["--data", d]
        subprocess.run(evaluate, check=True, stdout=subprocess.DEVNULL)
        summary = json.loads((run / "eval" / "summary.json").read_text())["datasets"]
        for name, s in summary.items():
            rows.append({"mode": mode, "dataset": name, **{k: s["rows"][0][k] for k in SHOWN}, "n": s["rows"][0]["n"],
                         "seconds": round(time.time() - t0, 1)})
    lines = [f"# HQ-token fusion ablation: {args.model}", "",
             f"`basam train --train hq` for {args.steps} steps at {args.resolution} px, then `basam evaluate` (point prompt).", "",
             "| fusion | dataset | n | " + " | ".join(SHOWN) + " | seconds |", "|---|---|---|" + "---|" * (len(SHOWN) + 1)]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['dataset']} | {r['n']} | " + " | ".join(f"{r[k]:.4f}" for k in SHOWN) + f" | {r['seconds']} |")
    (out / "fusion_ablation.md").write_text("\n".join(lines) + "\n")
    (out / "fusion_ablation.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
