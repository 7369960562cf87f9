#!/usr/bin/env python
"""Measure basam_tiny against issue #12's bars and write the table with its commands.

    python scripts/basam_tiny_bars.py --out docs/results/basam_tiny_bars.md     # the bundled weights
    python scripts/basam_tiny_bars.py --checkpoint runs/x/model.safetensors --out /tmp/bars.md

The bars: on the DUTS-TE images with one interior point (``--prompt center``: the pixel farthest
from the mask boundary) at 256 px, mean IoU >= 0.60 with the best of three candidates
(``--multimask oracle``) and >= 0.55 with the single-mask output (``--multimask off``). The model's
own pick of the three (``--multimask on``) is reported beside them, and the held-out part of
Kvasir-SEG (``:split=test``, never trained on) too. Each mean carries a 95 % bootstrap interval over
images. The three ``basam evaluate`` runs go to ``--work`` (resumable); the table and a JSON twin
are written atomically.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from basam.errors import BasamError
from basam.io import atomic_write_all
from basam.stats import paired_bootstrap

#: (multimask mode, what the row is, the bar its DUTS-TE IoU must reach or None)
OUTPUTS = [("oracle", "best of 3 (oracle)", 0.60), ("off", "single-mask output", 0.55), ("on", "model's pick of 3", None)]
METRICS = ["iou", "mae", "s_measure", "boundary_iou"]
BAR_DATASET = "duts-te"


def _mean_ci(values: np.ndarray) -> dict:
    b = paired_bootstrap(values, np.zeros_like(values), n=10000, seed=0)
    return {"mean": b.mean, "low": b.low, "high": b.high, "n_images": b.n_images}


def _read_per_image(folder: Path) -> dict:
    """{dataset: {metric: (N,) array}} of the scored (not skipped) images of one evaluate run."""
    out: dict = {}
    with open(folder / "per_image.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("skipped"):
                continue
            ds = out.setdefault(row["dataset"], {m: [] for m in METRICS})
            for m in METRICS:
                ds[m].append(float(row[m]))
    return {d: {m: np.array(v, dtype=np.float64) for m, v in ms.items()} for d, ms in out.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="basam_tiny weights to measure (default: the bundled ones)")
    ap.add_argument("--data", action="append", default=None,
                    help="datasets (default: ../shared/data/duts-te and ../shared/data/kvasir-seg:split=test)")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--max-images", type=int, help="first N images of each dataset (a quick check, not the bars)")
    ap.add_argument("--work", default="runs/bars", help="folder for the evaluate runs (default runs/bars)")
    ap.add_argument("--basam", default=str(Path(sys.executable).with_name("basam")), help="the basam command")
    ap.add_argument("--out", required=True, help="Markdown file to write (a .json twin beside it)")
    args = ap.parse_args(argv)
    data = args.data or ["../shared/data/duts-te", "../shared/data/kvasir-seg:split=test"]
    try:
        commands, results = [], {}
        for mode, _, _ in OUTPUTS:
            cmd = [args.basam, "evaluate", "--model", "basam_tiny"]
            cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else []
            for d in data:
                cmd += ["--data", d]
            cmd += ["--resolutions", str(args.resolution), "--attention", "vanilla", "--prompt", "center",
                    "--multimask", mode, "--device", "cpu", "--out", f"{args.work}/{mode}", "-q"]
            cmd += ["--max-images", str(args.max_images)] if args.max_images else []
            commands.append(shlex.join(["basam"] + cmd[1:]))
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                raise BasamError(f"`{commands[-1]}` failed (exit {proc.returncode}): {' '.join(proc.stderr.split())[-300:]}")
            per_image = _read_per_image(Path(args.work) / mode)
            results[mode] = {ds: {m: _mean_ci(v) for m, v in ms.items()} for ds, ms in per_image.items()}
            results[mode]["_seconds"] = round(time.perf_counter() - t0, 1)
        subset = f" FIRST {args.max_images} IMAGES per dataset (a quick check, not the bars)." if args.max_images else ""
        lines = [f"basam_tiny ({args.checkpoint or 'bundled weights'}) at {args.resolution} px, one interior point "
                 f"(`--prompt center`), vanilla attention, CPU. Mean over images [95 % bootstrap interval].{subset}", "",
                 "| dataset | output | images | IoU | MAE | S-measure | boundary IoU | bar (IoU) |",
                 "|---|---|---:|---|---|---|---|---|"]
        datasets = sorted({d for r in results.values() for d in r if not d.startswith("_")})
        for ds in datasets:
            for mode, what, bar in OUTPUTS:
                r = results[mode].get(ds)
                if r is None:
                    continue
                cells = [f"{r[m]['mean']:.3f} [{r[m]['low']:.3f}, {r[m]['high']:.3f}]" for m in METRICS]
                verdict = "" if bar is None or ds != BAR_DATASET else (
                    f">= {bar:.2f}: {'met' if r['iou']['mean'] >= bar else 'NOT met'}")
                lines.append(f"| {ds} | {what} | {r['iou']['n_images']} | " + " | ".join(cells) + f" | {verdict} |")
        lines += ["", "Commands (each resumable; timings on this machine):", ""]
        lines += [f"    {c}    # {results[m]['_seconds']} s" for c, (m, _, _) in zip(commands, OUTPUTS)]
        out = Path(args.out)
        payload = {"checkpoint": args.checkpoint, "resolution": args.resolution, "commands": commands, "results": results}
        texts = [(out.with_suffix(".json"), json.dumps(payload, indent=2, sort_keys=True) + "\n"), (out, "\n".join(lines) + "\n")]
        atomic_write_all([(p, (lambda b: lambda f: f.write(b))(t.encode())) for p, t in texts])
    except BasamError as e:
        print(f"basam_tiny_bars: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
