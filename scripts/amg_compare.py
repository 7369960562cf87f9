"""Segment everything: the official generator at 1024 px (with and without crops) against basam's at
the image's own resolution, on real Kvasir-SEG images and a synthetic 4096 x 4096 scene with known
instances (issue 10). Results: ``docs/results/amg.md``.

Every method runs in its own fresh subprocess, so its peak resident set size (``ru_maxrss``) is its
own: weights, image, generator and all; on CUDA ``torch.cuda.max_memory_allocated`` as well.

Model: basam_tiny (the only trained weights here). The official side is the official
``segment_anything`` code holding the same weights (``basam.bench_amg.official_twin``: the official
classes with basam_tiny's sizes, which compute basam's ``vanilla`` attention), run at 1024 px (its
absolute position embedding resampled from 16 to 64 tokens a side, as basam does) or at 256 px,
basam_tiny's training size. basam_tiny's predicted IoUs and stability scores stay far below the
official thresholds (0.88 / 0.95; it keeps no mask at all there), so every method here uses the
lower ``--pred-iou-thresh`` / ``--stability-score-thresh`` given (defaults 0.45 / 0.6).

Methods:
  official-256          official code at 256 px (basam_tiny's own img_size), no crops
  official-1024         official code at 1024 px, no crops
  official-1024-crops1  official code at 1024 px, crop_n_layers=1 (the whole image + 4 crops),
                        crop_n_points_downscale_factor=2 (as the official example notebook)
  official-1024-crops2  the same with crop_n_layers=2 (the whole image + 4 + 16 crops)
  basam-1024-vanilla    basam at 1024 px, vanilla: the same records as official-1024
  basam-native-vanilla  basam with resolution="native" (the whole image at its own size), vanilla
  basam-native-nsf      the same with the New Scaling Factor only
  basam-native-basam    the same with the BA-SAM attention (NSF + BM-AM)

Metrics per image: masks returned; for each ground-truth instance the best IoU over the masks
(mask-level, pycocotools RLE IoU); recall = fraction of instances whose best IoU >= 0.5 / 0.75;
time of ``generate`` per image (after a warm-up call on a small image).

Usage:
  python scripts/amg_compare.py run --dataset kvasir --n 8 --points 32 --out runs/amg_compare
  python scripts/amg_compare.py run --dataset synthetic --points 32 --out runs/amg_compare \\
      --methods basam-native-basam --timeout 3000
  python scripts/amg_compare.py report --out runs/amg_compare --plot docs/results/amg_compare.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
METHODS = ("official-256", "official-1024", "official-1024-crops1", "official-1024-crops2", "basam-1024-vanilla",
           "basam-native-vanilla", "basam-native-nsf", "basam-native-basam")
SYNTH_SIZE = 4096


# --- data -----------------------------------------------------------------------------------------


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}


def kvasir_items(n: int) -> List[Tuple[Path, Path]]:
    """The ``n`` largest-first Kvasir-SEG (image, mask) pairs, ties by name: the images above
    1024 px come first, where encoding at the native size differs most from the official 1024 px."""
    from PIL import Image

    d = DATA / "kvasir-seg"
    if not (d / "images").is_dir():
        sys.exit(f"Kvasir-SEG not found at {d}")
    items = []
    for img in sorted((d / "images").iterdir()):
        mask = d / "masks" / img.name
        if mask.is_file():
            with Image.open(img) as im:
                items.append((-max(im.size), img.name, img, mask))
    items.sort()
    return [(img, mask) for _, _, img, mask in items[:n]]


def kvasir_instances(mask_path: Path, min_frac: float = 0.002) -> List[dict]:
    """Ground-truth instances of a Kvasir-SEG mask: the 8-connected components of (mask >= 128)
    covering at least ``min_frac`` of the image (the JPEG masks carry compression specks)."""
    from PIL import Image
    from scipy import ndimage

    m = np.asarray(Image.open(mask_path).convert("L")) >= 128
    labels, n = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    return [_rle(labels == k) for k in range(1, n + 1) if sizes[k] >= min_frac * m.size]


def _texture(rng, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 fill for a shape: flat, stripes, checks, blotches or a gradient."""
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    kind = rng.integers(5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        t = np.zeros((h, w), np.float32)
    elif kind == 1:  # stripes at a random angle
        a, period = rng.uniform(0, np.pi), rng.uniform(12, 48)
        t = (np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period) > 0).astype(np.float32)
    elif kind == 2:  # checks
        s = rng.uniform(10, 40)
        t = ((np.floor(xx / s) + np.floor(yy / s)) % 2).astype(np.float32)
    elif kind == 3:  # smooth blotches: coarse noise, bilinearly enlarged
        from PIL import Image

        coarse = rng.uniform(0, 1, (max(2, h // 24), max(2, w // 24))).astype(np.float32)
        t = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
    else:  # a linear gradient
        t = (xx / max(w - 1, 1)).astype(np.float32)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _shape_mask(rng, h: int, w: int) -> np.ndarray:
    """(h, w) bool: an ellipse, rectangle, triangle, star or rounded blob filling the box."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xx + 0.5) / w * 2 - 1, (yy + 0.5) / h * 2 - 1  # [-1, 1] in the box
    kind = rng.integers(5)
    if kind == 0:
        return u * u + v * v <= 1
    if kind == 1:
        return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.95)
    if kind == 2:
        return (v >= -0.95) & (np.abs(u) <= (v + 0.95) / 1.9)
    r, th = np.sqrt(u * u + v * v), np.arctan2(v, u)
    if kind == 3:
        k = rng.integers(5, 9)
        return r <= 0.55 + 0.4 * (np.cos(k * th) > 0)
    a = rng.uniform(0.1, 0.25, 3)
    ph = rng.uniform(0, 2 * np.pi, 3)
    return r <= 0.7 + sum(a[i] * np.sin((i + 2) * th + ph[i]) for i in range(3)) * 0.6


def synthetic_scene(size: int = SYNTH_SIZE, seed: int = 0, n_shapes: int = 48, n_objects: int = 16) -> Tuple[np.ndarray, List[dict]]:
    """A (size, size, 3) uint8 scene and its instances (COCO RLE), no two overlapping.

    ``n_objects`` salient objects cut out of DUTS-TE images with their ground-truth masks (natural
    textures; basam_tiny was trained on DUTS-TR, not on these; a mask's separate parts count as
    instances of their own) and ``n_shapes`` geometric shapes
    with flat, striped, checked, blotchy or graded fills, on a smoothly varying background. Long
    sides: objects 300-1100 px, shapes 80-700 px (so some are only 20-175 px once the image is
    shrunk to 1024 px). Placement by rejection with a 24 px gap; what does not fit is left out.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    # background: a few very wide colour blobs, so it has no edges of its own
    low = rng.uniform(60, 200, (4, 4, 3)).astype(np.uint8)
    canvas = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC)).astype(np.float32)
    taken = np.zeros((size, size), bool)
    inst: List[dict] = []

    def place(fill: np.ndarray, mask: np.ndarray, split: bool = False) -> bool:
        """Paste ``fill`` where ``mask`` is set, at a free random spot; record its instance(s).
        ``split``: each 8-connected part of at least 10 % of the mask is an instance of its own
        (a DUTS mask can hold two birds); smaller parts are painted but not counted."""
        h, w = mask.shape
        gap = 24
        for _ in range(200):
            y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
            y0, x0, y1, x1 = max(0, y - gap), max(0, x - gap), min(size, y + h + gap), min(size, x + w + gap)
            if taken[y0:y1, x0:x1].any():
                continue
            region = canvas[y:y + h, x:x + w]
            region[mask] = fill[mask]
            taken[y:y + h, x:x + w] = True  # the whole box, so the gap is kept around it
            parts = [mask]
            if split:
                from scipy import ndimage

                labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
                sizes = np.bincount(labels.ravel(), minlength=n + 1)
                parts = [labels == k for k in range(1, n + 1) if sizes[k] >= 0.1 * mask.sum()]
            for part in parts:
                full = np.zeros((size, size), bool)
                full[y:y + h, x:x + w] = part
                inst.append(_rle(full))
            return True
        return False

    duts = DATA / "duts-te"
    if n_objects and (duts / "images").is_dir():
        names = sorted(p.name for p in (duts / "images").iterdir())
        picked = 0
        for k in rng.permutation(len(names)):
            if picked == n_objects:
                break
            img_p, msk_p = duts / "images" / names[k], duts / "masks" / (Path(names[k]).stem + ".png")
            if not msk_p.is_file():
                continue
            m = np.asarray(Image.open(msk_p).convert("L")) >= 128
            if m.mean() < 0.05 or m.mean() > 0.6:
                continue
            ys, xs = np.nonzero(m)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            img = np.asarray(Image.open(img_p).convert("RGB"))[y0:y1, x0:x1]
            side = rng.uniform(300, 1100)
            s = side / max(y1 - y0, x1 - x0)
            nh, nw = max(8, round((y1 - y0) * s)), max(8, round((x1 - x0) * s))
            img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC)).astype(np.float32)
            m = np.asarray(Image.fromarray(m[y0:y1, x0:x1].astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)) >= 128
            picked += place(img, m, split=True)
    for _ in range(n_shapes):
        side = np.exp(rng.uniform(np.log(80), np.log(700)))
        aspect = rng.uniform(0.5, 1.0)
        h, w = (round(side), round(side * aspect)) if rng.integers(2) else (round(side * aspect), round(side))
        place(_texture(rng, h, w), _shape_mask(rng, h, w))
    canvas += rng.normal(0, 3, canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8), inst


def prepare_synthetic(out: Path) -> Tuple[Path, Path]:
    """Build the scene once (deterministic) into ``out`` (PNG + instances JSON), so that workers only
    read it and their peak memory is the generator's, not the scene builder's."""
    from PIL import Image

    from basam.io import atomic_write

    png, js = out / "synthetic_4096.png", out / "synthetic_4096_instances.json"
    if not (png.is_file() and js.is_file()):
        image, inst = synthetic_scene()
        atomic_write(png, lambda f: Image.fromarray(image).save(f, format="PNG"))
        atomic_write(js, lambda f: f.write(json.dumps(inst).encode()))
    return png, js


# --- one method (worker process) -----------------------------------------------------------------


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def build_generator(method: str, args):
    import torch

    import basam
    from basam.amg import AutomaticMaskGenerator
    from basam.bench_amg import official_twin
    from basam.models.registry import get_spec

    kw = dict(points_per_side=args.points, pred_iou_thresh=args.pred_iou_thresh,
              stability_score_thresh=args.stability_score_thresh, output_mode="coco_rle")
    attention = method.rsplit("-", 1)[1] if method.startswith("basam-") else "vanilla"
    model = basam.load_model("basam_tiny", attention=attention, device=args.device, progress=False)
    if method.startswith("official"):
        from segment_anything import SamAutomaticMaskGenerator

        size = 256 if method == "official-256" else 1024
        twin = official_twin(get_spec("basam_tiny"), model.state_dict(), run_size=size).to(args.device)
        del model
        layers = int(method[-1]) if "-crops" in method else 0
        crops = dict(crop_n_layers=layers, crop_n_points_downscale_factor=2) if layers else {}
        return SamAutomaticMaskGenerator(twin, points_per_batch=args.official_points_per_batch, **crops, **kw)
    resolution = "native" if "-native-" in method else 1024
    torch.set_grad_enabled(False)
    return AutomaticMaskGenerator(model, resolution=resolution, **kw)


def worker(args) -> None:
    import torch
    from PIL import Image
    from pycocotools import mask as mask_utils

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if args.dataset == "kvasir":
        items = [(p, kvasir_instances(m)) for p, m in kvasir_items(args.n)]
    else:
        png, js = prepare_synthetic(Path(args.out))
        items = [(png, json.loads(js.read_text()))]
    gen = build_generator(args.method, args)
    rss_model = _rss_gib()
    warm = np.zeros((96, 128, 3), np.uint8)
    warm[20:70, 30:90] = 200
    with torch.inference_mode():
        gen.generate(warm)  # one-time costs (allocator, lazy imports) out of the timings
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for path, gt in items:
        image = np.array(Image.open(path).convert("RGB"))  # writable: torch warns on read-only arrays
        t = time.perf_counter()
        with torch.inference_mode():
            records = gen.generate(image)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        dt_rles = [r["segmentation"] for r in records]
        if dt_rles and gt:
            ious = mask_utils.iou(dt_rles, gt, [0] * len(gt))  # (masks, instances)
            best = np.asarray(ious).max(axis=0).tolist()
        else:
            best = [0.0] * len(gt)
        areas = [int(r["area"]) for r in records]
        rows.append({"image": path.name, "hw": list(image.shape[:2]), "masks": len(records), "time_s": dt,
                     "best_iou": best, "mask_area_median": float(np.median(areas)) if areas else 0.0})
        print(f"{args.method} {path.name} {image.shape[1]}x{image.shape[0]}: {len(records)} masks, {dt:.1f} s, "
              f"best IoU {np.round(best, 3).tolist()}", flush=True)
        del image, records, dt_rles
    out = {
        "dataset": args.dataset, "method": args.method, "points_per_side": args.points,
        "pred_iou_thresh": args.pred_iou_thresh, "stability_score_thresh": args.stability_score_thresh,
        "official_points_per_batch": args.official_points_per_batch, "device": args.device,
        "threads": args.threads, "torch": torch.__version__, "images": rows,
        "peak_rss_gib": _rss_gib(), "rss_after_model_gib": rss_model,
        "cuda_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    from basam.io import atomic_write

    atomic_write(Path(args.json), lambda f: f.write(json.dumps(out, indent=1).encode()))


# --- driver and report ---------------------------------------------------------------------------


def result_path(out: Path, dataset: str, method: str, points: int) -> Path:
    return out / f"{dataset}_{method}_p{points}.json"


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dataset == "synthetic":
        prepare_synthetic(out)
    for method in args.methods:
        path = result_path(out, args.dataset, method, args.points)
        if path.is_file() and not args.force:
            print(f"{path.name}: done already (--force to redo)")
            continue
        cmd = [sys.executable, __file__, "worker", "--method", method, "--json", str(path)]
        for k in ("dataset", "n", "points", "pred_iou_thresh", "stability_score_thresh", "official_points_per_batch",
                  "device", "threads", "out"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        print("$", " ".join(cmd), flush=True)
        t = time.time()
        try:
            proc = subprocess.run(cmd, timeout=args.timeout, stderr=subprocess.PIPE, text=True)
        except subprocess.TimeoutExpired:
            print(f"{method}: did not finish within {args.timeout} s", flush=True)
            continue
        sys.stderr.write(proc.stderr)
        print(f"{method}: exit {proc.returncode} after {time.time() - t:.0f} s", flush=True)
        if proc.returncode != 0:  # a crash is a result too (the official crop pyramid crashes on some images)
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            error = lines[-1][:300] if lines else ""
            if proc.returncode == -9:  # SIGKILL: on Linux, almost always the kernel's out-of-memory killer
                error = "killed by SIGKILL (the kernel's out-of-memory killer, if dmesg says so)"
            failed = {"dataset": args.dataset, "method": method, "points_per_side": args.points, "status": "crashed",
                      "exit": proc.returncode, "error": error}
            from basam.io import atomic_write

            atomic_write(path, lambda f: f.write(json.dumps(failed, indent=1).encode()))


def _summary(d: dict) -> dict:
    best = [b for r in d["images"] for b in r["best_iou"]]
    return {
        "images": len(d["images"]),
        "instances": len(best),
        "masks": float(np.mean([r["masks"] for r in d["images"]])),
        "r50": float(np.mean([b >= 0.5 for b in best])) if best else float("nan"),
        "r75": float(np.mean([b >= 0.75 for b in best])) if best else float("nan"),
        "miou": float(np.mean(best)) if best else float("nan"),
        "time": float(np.mean([r["time_s"] for r in d["images"]])),
        "rss": d["peak_rss_gib"],
        "rss_model": d["rss_after_model_gib"],
        "cuda": d.get("cuda_peak_gib"),
    }


def report(args) -> None:
    out = Path(args.out)
    rows: Dict[Tuple[str, int], List[Tuple[str, dict]]] = {}
    for f in sorted(out.glob("*_p*.json")):
        if f.name.endswith("_instances.json"):
            continue
        d = json.loads(f.read_text())
        if d.get("status") == "crashed":
            rows.setdefault((d["dataset"], d["points_per_side"]), []).append((d["method"], {"crashed": d["error"]}))
            continue
        rows.setdefault((d["dataset"], d["points_per_side"]), []).append((d["method"], _summary(d)))
    order = {m: i for i, m in enumerate(METHODS)}
    lines = []
    for (dataset, points), rs in sorted(rows.items()):
        rs.sort(key=lambda r: order.get(r[0], 99))
        s0 = next((s for _, s in rs if "crashed" not in s), None)
        if s0 is None:
            continue
        lines.append(f"**{dataset}**, {points}x{points} points, {s0['images']} image(s), {s0['instances']} instances")
        lines.append("")
        lines.append("| method | masks / image | recall @0.5 | recall @0.75 | mean best IoU | s / image | peak RSS GiB (after model load) |")
        lines.append("|---|---|---|---|---|---|---|")
        for m, s in rs:
            if "crashed" in s:
                lines.append(f"| {m} | crashed: `{s['crashed'][:120]}` | | | | | |")
                continue
            mem = f"{s['rss']:.2f} ({s['rss_model']:.2f})" + (f", CUDA {s['cuda']:.2f}" if s["cuda"] is not None else "")
            lines.append(f"| {m} | {s['masks']:.1f} | {s['r50']:.3f} | {s['r75']:.3f} | {s['miou']:.3f} | {s['time']:.1f} | {mem} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.plot:
        plot(rows, Path(args.plot))


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from basam.io import atomic_write

    keys = sorted(rows)
    fig, axes = plt.subplots(len(keys), 3, figsize=(15, 3.6 * len(keys)), squeeze=False)
    order = {m: i for i, m in enumerate(METHODS)}
    for row, key in enumerate(keys):
        rs = sorted((r for r in rows[key] if "crashed" not in r[1]), key=lambda r: order.get(r[0], 99))
        names = [m for m, _ in rs]
        x = np.arange(len(names))
        colours = ["#888888" if m.startswith("official") else "#1f77b4" for m in names]
        ax = axes[row, 0]
        ax.bar(x - 0.2, [s["r50"] for _, s in rs], 0.4, label="recall @0.5", color=colours)
        ax.bar(x + 0.2, [s["r75"] for _, s in rs], 0.4, label="recall @0.75", color=colours, alpha=0.5)
        ax.set_ylim(0, 1)
        ax.set_title(f"{key[0]} ({key[1]}x{key[1]} points): recall (solid 0.5, light 0.75)")
        for j, (title, field, unit) in enumerate((("time per image", "time", "s"), ("peak RSS", "rss", "GiB")), start=1):
            ax = axes[row, j]
            ax.bar(x, [s[field] for _, s in rs], color=colours)
            ax.set_title(f"{key[0]}: {title}")
            ax.set_ylabel(unit)
            if field == "time":
                ax.set_yscale("log")
        for ax in axes[row]:
            ax.set_xticks(x)
            ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
            ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("basam_tiny, official generator (grey) vs basam (blue); CPU, 2 shared cores", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=110))
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "worker"):
        q = sub.add_parser(name)
        q.add_argument("--dataset", choices=("kvasir", "synthetic"), required=True)
        q.add_argument("--n", type=int, default=8, help="Kvasir images (largest first)")
        q.add_argument("--points", type=int, default=32, help="points per side (default 32)")
        q.add_argument("--pred-iou-thresh", type=float, default=0.45)
        q.add_argument("--stability-score-thresh", type=float, default=0.6)
        q.add_argument("--official-points-per-batch", type=int, default=64,
                       help="the official points_per_batch (it upsamples a whole batch to the image size at once)")
        q.add_argument("--device", default="cpu")
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--out", default="runs/amg_compare")
        if name == "run":
            q.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
            q.add_argument("--timeout", type=int, default=3600, help="seconds per method")
            q.add_argument("--force", action="store_true")
        else:
            q.add_argument("--method", choices=METHODS, required=True)
            q.add_argument("--json", required=True)
    q = sub.add_parser("report")
    q.add_argument("--out", default="runs/amg_compare")
    q.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    {"run": run, "worker": worker, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
