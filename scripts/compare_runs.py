#!/usr/bin/env python
"""Paired differences between `basam evaluate` folders of different models (same images, same prompts).

    python scripts/compare_runs.py --reference runs/study_v2/zero_shot \\
        add=runs/study_v2/hq_add product=runs/study_v2/hq_product --out runs/study_v2/hq_fusion.md

Each NAME=FOLDER is compared with the reference on every (dataset, preset, resolution) both hold:
NAME minus reference, per image, with a 95 % paired bootstrap interval (basam.evaluate.
paired_between_runs). Writes a Markdown table (``**``: the interval excludes 0) and, beside it, the
same numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from basam.errors import BasamError
from basam.evaluate import PAIRED_METRICS, paired_between_runs
from basam.io import atomic_write_all


def _cell(b: dict | None) -> str:
    if b is None:
        return "n/a"
    text = f"{b['mean']:+.4f} [{b['low']:+.4f}, {b['high']:+.4f}]"
    return f"**{text}**" if b["low"] > 0 or b["high"] < 0 else text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", required=True, help="the evaluate folder every other one is compared with")
    ap.add_argument("runs", nargs="+", metavar="NAME=FOLDER", help="evaluate folders to compare with the reference")
    ap.add_argument("--reference-name", default="reference", help="the reference's name in the table")
    ap.add_argument("--reference-attention", metavar="PRESET",
                    help="compare every preset of each run with this preset of the reference (default: the same preset)")
    ap.add_argument("--out", required=True, help="Markdown file to write (a .json twin is written beside it)")
    args = ap.parse_args(argv)
    try:
        runs = []
        for item in args.runs:
            name, sep, folder = item.partition("=")
            if not sep or not name or not folder:
                raise BasamError(f"{item!r}: give each run as NAME=FOLDER")
            runs.append((name, Path(folder)))
        lines = [f"Paired differences against {args.reference_name} ({args.reference}): each run minus it, per image, "
                 "mean and 95 % bootstrap interval; **bold**: the interval excludes 0.", "",
                 "| run | dataset | attention | vs | px | images | " + " | ".join(f"Δ {m}" for m in PAIRED_METRICS) + " |",
                 "|---|---|---|---|---:|---:|" + "---|" * len(PAIRED_METRICS)]
        payload = {"reference": str(args.reference), "runs": {}}
        for name, folder in runs:
            diffs = paired_between_runs(folder, Path(args.reference), args.reference_attention)
            if not diffs:
                raise BasamError(f"{folder} and {args.reference} share no (dataset, attention, resolution)")
            payload["runs"][name] = {"folder": str(folder), "differences": diffs}
            for d in diffs:
                lines.append(f"| {name} | {d['dataset']} | {d['attention']} | {d['vs_attention']} | {d['resolution']} | {d['n_images']} | "
                             + " | ".join(_cell(d.get(m)) for m in PAIRED_METRICS) + " |")
        out = Path(args.out)
        texts = [(out.with_suffix(".json"), json.dumps(payload, indent=2, sort_keys=True) + "\n"), (out, "\n".join(lines) + "\n")]
        atomic_write_all([(p, (lambda data: lambda f: f.write(data))(t.encode())) for p, t in texts])
    except BasamError as e:
        print(f"compare_runs: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
