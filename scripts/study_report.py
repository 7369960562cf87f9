#!/usr/bin/env python
"""The BA-SAM study's tables and plots, from the folders scripts/study.sh wrote.

    python scripts/study_report.py --study runs/study_v4 --out docs/results/study

Reads ``zero_shot/``, ``fine_tuned_*/``, ``hq_*/`` (basam evaluate folders) and the ``ft_vs_*`` /
``hq_fusion_vs_*`` comparisons (scripts/compare_runs.py), and writes into ``--out``:

* ``study.md``: per dataset, IoU of every zero-shot variant at every size (mean and 95 % bootstrap
  interval over images); each variant minus vanilla (paired, same images and prompts); each size
  minus 1x for vanilla / nsf / basam; the fine-tuned models against the untuned vanilla and against
  the decoder-only control; the HQ fusion modes. ``**``: the interval excludes 0.
* ``study.json``: the same numbers.
* ``study_<dataset>.png``: IoU against resolution with its interval for the untuned and fine-tuned
  models (left), and every zero-shot variant minus vanilla with its paired interval (right).

Folders the study has not written yet are left out of the report (said so in it).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from basam.errors import BasamError
from basam.io import atomic_write_all
from basam.stats import paired_bootstrap

RESAMPLES = 10000
#: the untuned and fine-tuned curves of the left plot: (folder, preset, label)
CURVES = [("zero_shot", "vanilla", "vanilla"), ("zero_shot", "nsf", "nsf"), ("zero_shot", "basam", "basam (beta 1)"),
          ("fine_tuned_slopes", "basam", "basam, slopes fine-tuned at 2x"),
          ("fine_tuned_decoder_slopes", "basam", "basam, decoder + slopes fine-tuned at 2x"),
          ("fine_tuned_decoder", "vanilla", "vanilla, decoder fine-tuned at 2x (control)")]


def _cell(b: Optional[dict], signed: bool = True) -> str:
    if not b:
        return "n/a"
    f = "{:+.4f}" if signed else "{:.3f}"  # differences are small: one more digit
    text = f"{f.format(b['mean'])} [{f.format(b['low'])}, {f.format(b['high'])}]"
    return f"**{text}**" if signed and (b["low"] > 0 or b["high"] < 0) else text


def _per_image(folder: Path) -> Dict[tuple, Dict[str, float]]:
    """{(dataset, attention, resolution): {image: iou}} of an evaluate folder's per_image.csv."""
    out: Dict[tuple, Dict[str, float]] = {}
    with open(folder / "per_image.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("skipped"):
                continue
            out.setdefault((row["dataset"], row["attention"], int(row["resolution"])), {})[row["image"]] = float(row["iou"])
    return out


def _mean_ci(values: List[float]) -> Optional[dict]:
    if len(values) < 2:
        return None
    v = np.asarray(values, dtype=np.float64)
    return paired_bootstrap(v, np.zeros_like(v), n=RESAMPLES, seed=0).as_dict()


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def build(study: Path) -> dict:
    """Everything the report shows, read from ``study``; raises BasamError without a zero_shot run."""
    if not (study / "zero_shot" / "summary.json").is_file():
        raise BasamError(f"{study} has no finished zero_shot evaluation (zero_shot/summary.json); run scripts/study.sh")
    zs = _summary(study / "zero_shot")
    settings = zs["settings"]
    report: dict = {"study": str(study), "checkpoint": settings["checkpoint"], "variants": settings["attention"],
                    "resolutions": settings["resolutions"], "datasets": {}, "missing": []}
    folders = {}
    for name in ["zero_shot", "fine_tuned_slopes", "fine_tuned_decoder_slopes", "fine_tuned_decoder",
                 "hq_independent", "hq_add", "hq_product"]:
        if (study / name / "summary.json").is_file():
            folders[name] = _per_image(study / name)
        else:
            report["missing"].append(name)
    for ds_name, ds in zs["datasets"].items():
        entry: dict = {"absolute": {}, "vs_vanilla": [], "vs_first_size": []}
        for name, recs in folders.items():
            for (d, att, res), per in recs.items():
                if d == ds_name:
                    entry["absolute"].setdefault(name, {}).setdefault(att, {})[str(res)] = _mean_ci(list(per.values()))
        for p in ds["paired"]:
            key = "vs_vanilla" if p["kind"] == "preset" else "vs_first_size"
            entry[key].append({k: p[k] for k in ("attention", "vs_attention", "resolution", "vs_resolution", "n_images", "iou", "mae")})
        report["datasets"][ds_name] = entry
    for name in ("ft_vs_zero_shot", "ft_vs_decoder_only", "hq_fusion_vs_plain", "hq_fusion_vs_independent"):
        path = study / f"{name}.json"
        if path.is_file():
            report[name] = json.loads(path.read_text())["runs"]
        else:
            report["missing"].append(name)
    return report


def _comparison(runs: Optional[dict], ds: str, res: List[int], title: str, what: str) -> List[str]:
    """Markdown lines of one compare_runs result on ``ds``: a row per (run, attention), IoU differences by size."""
    if not runs:
        return []
    lines = ["", title, "", f"| {what} | attention | " + " | ".join(f"{x} px" for x in res) + " |", "|---|---|" + "---|" * len(res)]
    for name, run in runs.items():
        diffs = [d for d in run["differences"] if d["dataset"] == ds]
        for att in dict.fromkeys(d["attention"] for d in diffs):
            cells = {d["resolution"]: d.get("iou") for d in diffs if d["attention"] == att}
            lines.append(f"| {name} | {att} | " + " | ".join(_cell(cells.get(x)) for x in res) + " |")
    return lines


def _markdown(r: dict) -> str:
    res = r["resolutions"]
    lines = [f"# The BA-SAM study in miniature: tables", "",
             f"Study model `{r['checkpoint']}`; written by `python scripts/study_report.py --study {r['study']}` "
             "from the folders of `scripts/study.sh`. IoU from one interior point (`--prompt center`); mean over images "
             f"with its 95 % bootstrap interval ({RESAMPLES} resamples of the images); differences are paired (same images, "
             "same prompts); **bold**: the interval excludes 0.", ""]
    if r["missing"]:
        lines += [f"Not in this report (not run yet): {', '.join(r['missing'])}.", ""]
    for ds, e in r["datasets"].items():
        z = e["absolute"].get("zero_shot", {})
        n = next((v.get("n_images") for att in z.values() for v in att.values() if v), "?")
        lines += [f"## {ds} ({n} images)", "", "### Zero-shot IoU", "",
                  "| variant | " + " | ".join(f"{x} px" for x in res) + " |", "|---|" + "---|" * len(res)]
        for att in r["variants"]:
            lines.append(f"| {att} | " + " | ".join(_cell(z.get(att, {}).get(str(x)), signed=False) for x in res) + " |")
        lines += ["", "### Zero-shot: each variant minus vanilla (IoU; MAE below, lower is better)", "",
                  "| variant | " + " | ".join(f"{x} px" for x in res) + " |", "|---|" + "---|" * len(res)]
        by = {(p["attention"], p["resolution"]): p for p in e["vs_vanilla"]}
        for metric in ("iou", "mae"):
            if metric == "mae":
                lines += ["", "| variant (MAE) | " + " | ".join(f"{x} px" for x in res) + " |", "|---|" + "---|" * len(res)]
            for att in r["variants"][1:]:
                lines.append(f"| {att} | " + " | ".join(_cell((by.get((att, x)) or {}).get(metric)) for x in res) + " |")
        lines += ["", f"### Each size minus {res[0]} px (IoU)", "",
                  "| variant | " + " | ".join(f"{x} px" for x in res[1:]) + " |", "|---|" + "---|" * len(res[1:])]
        sz = {(p["attention"], p["resolution"]): p for p in e["vs_first_size"]}
        for att in ("vanilla", "nsf", "basam"):
            lines.append(f"| {att} | " + " | ".join(_cell((sz.get((att, x)) or {}).get("iou")) for x in res[1:]) + " |")
        ft_abs = [(f, a, lbl) for f, a, lbl in CURVES[3:] if f in e["absolute"]]
        # the sizes the fine-tuned models were evaluated at (the study's default: the one tuned at)
        fres = sorted({int(x) for f, a, _ in ft_abs for x in e["absolute"][f].get(a, {})}) or res
        if ft_abs:
            lines += ["", "### Fine-tuned at 2x: IoU", "", "| model | " + " | ".join(f"{x} px" for x in fres) + " |",
                      "|---|" + "---|" * len(fres)]
            for f, a, lbl in ft_abs:
                lines.append(f"| {lbl} | " + " | ".join(_cell(e["absolute"][f].get(a, {}).get(str(x)), signed=False) for x in fres) + " |")
        for key, title in (("ft_vs_zero_shot", "Fine-tuned minus the untuned model's vanilla (IoU)"),
                           ("ft_vs_decoder_only", "Decoder + slopes minus the decoder-only control (both fine-tuned at 2x; IoU)")):
            lines += _comparison(r.get(key), ds, fres, f"### {title}", "run")
        hq = [f for f in ("hq_independent", "hq_add", "hq_product") if f in e["absolute"]]
        if hq:
            hres = sorted({int(x) for f in hq for att in e["absolute"][f].values() for x in att})
            lines += ["", "### HQ-SAM fusion modes: IoU", "", "| fusion | attention | " + " | ".join(f"{x} px" for x in hres) + " |",
                      "|---|---|" + "---|" * len(hres)]
            for f in hq:
                for att, cells in e["absolute"][f].items():
                    lines.append(f"| {f[3:]} | {att} | " + " | ".join(_cell(cells.get(str(x)), signed=False) for x in hres) + " |")
            for key, title in (("hq_fusion_vs_plain", "minus the plain study model"), ("hq_fusion_vs_independent", "minus independent")):
                lines += _comparison(r.get(key), ds, hres, f"HQ fusion {title} (IoU):", "fusion")
        lines += ["", f"![{ds}](study_{ds}.png)", ""]
    return "\n".join(lines) + "\n"


def _plot(r: dict, ds: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = r["datasets"][ds]
    res = r["resolutions"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 4.6))
    curves = [(f, a, lbl) for f, a, lbl in CURVES if a in e["absolute"].get(f, {})]
    for k, (f, a, lbl) in enumerate(curves):
        cells = e["absolute"][f][a]
        xs = [i + (k - (len(curves) - 1) / 2) * 0.06 for i, x in enumerate(res) if cells.get(str(x))]
        vals = [cells[str(x)] for x in res if cells.get(str(x))]
        left.errorbar(xs, [v["mean"] for v in vals], yerr=[[v["mean"] - v["low"] for v in vals], [v["high"] - v["mean"] for v in vals]],
                      fmt="-o" if f == "zero_shot" else "--s", capsize=3, markersize=4, label=lbl)
    left.set_xticks(range(len(res)))
    left.set_xticklabels([f"{x} px ({x // res[0]}x)" if x % res[0] == 0 else f"{x} px" for x in res])
    left.set_ylabel("IoU (mean, 95 % interval)")
    left.set_title(f"{ds}: IoU against resolution", fontsize=10)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    variants = r["variants"][1:]
    width = 0.8 / max(1, len(variants))
    for k, att in enumerate(variants):
        ps = sorted((p for p in e["vs_vanilla"] if p["attention"] == att), key=lambda p: p["resolution"])
        xs = [res.index(p["resolution"]) + (k - (len(variants) - 1) / 2) * width for p in ps]
        m = [p["iou"]["mean"] for p in ps]
        right.errorbar(xs, m, yerr=[[p["iou"]["mean"] - p["iou"]["low"] for p in ps], [p["iou"]["high"] - p["iou"]["mean"] for p in ps]],
                       fmt="o", capsize=2, markersize=3, label=att)
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_xticks(range(len(res)))
    right.set_xticklabels([f"{x} px" for x in res])
    right.set_ylabel("IoU minus vanilla (paired, 95 % interval)")
    right.set_title(f"{ds}: zero-shot variants minus vanilla", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot: no point hidden
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", required=True, type=Path, help="the OUT folder of scripts/study.sh")
    ap.add_argument("--out", required=True, type=Path, help="folder for study.md, study.json and the plots")
    args = ap.parse_args(argv)
    try:
        report = build(args.study)
        args.out.mkdir(parents=True, exist_ok=True)
        files = [(args.out / "study.json", (json.dumps(report, indent=1, sort_keys=True) + "\n").encode()),
                 (args.out / "study.md", _markdown(report).encode())]
        files += [(args.out / f"study_{ds}.png", _plot(report, ds)) for ds in report["datasets"]]
        atomic_write_all([(p, (lambda data: lambda f: f.write(data))(b)) for p, b in files])
    except (BasamError, OSError) as e:
        print(f"study_report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(p) for p, _ in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
