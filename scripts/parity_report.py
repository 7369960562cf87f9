"""Measure basam vs the official implementations (random weights, 1024 px, vanilla, fp32, CPU).

Prints a Markdown table of max |basam - official| / max |official| per output, per model:
    .venv/bin/python scripts/parity_report.py [--full] > docs/parity.md
"""

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import oracles  # noqa: E402

import basam  # noqa: E402


def rel(a, b):
    a = torch.as_tensor(np.asarray(a, dtype=np.float32))
    b = torch.as_tensor(np.asarray(b, dtype=np.float32))
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)


def measure(name, arch, tmp):
    official, ckpt = oracles.official_checkpoint(name, arch, tmp, seed=5)
    model = basam.load_model(name, checkpoint=ckpt, architecture=arch)
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    off, ours = oracles.official_predictor(name, official), basam.Predictor(model)
    with torch.no_grad():
        off.set_image(image)
    ours.set_image(image)
    row = {"embedding": rel(ours.get_image_embedding(), off.get_image_embedding())}
    hq = name.startswith("sam_hq")
    prompts = {
        "point": dict(point_coords=np.array([[256.0, 264.0]]), point_labels=np.array([1])),
        "box": dict(box=np.array([128.0, 120.0, 480.0, 384.0])),
    }
    worst_logit = worst_iou = 0.0
    for kw in prompts.values():
        for mm in (True, False):
            for extra in ([{"hq_token_only": False}, {"hq_token_only": True}] if hq else [{}]):
                with torch.no_grad():
                    _, s0, l0 = off.predict(multimask_output=mm, **kw, **extra)
                _, s1, l1 = ours.predict(multimask_output=mm, **kw, **extra)
                worst_logit, worst_iou = max(worst_logit, rel(l1, l0)), max(worst_iou, rel(s1, s0))
    with torch.no_grad():
        _, _, prev = off.predict(multimask_output=False, **prompts["point"])
        _, s0, l0 = off.predict(mask_input=prev, multimask_output=False, **prompts["point"])
    _, s1, l1 = ours.predict(mask_input=prev, multimask_output=False, **prompts["point"])
    row["low-res logits"] = max(worst_logit, rel(l1, l0))
    row["IoU"] = max(worst_iou, rel(s1, s0))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="also full-size SAM ViT-B, MobileSAM, HQ-SAM tiny")
    args = ap.parse_args()
    cases = [(n, "reduced", oracles.REDUCED[n]) for n in oracles.REDUCED]
    if args.full:
        cases += [(n, "full", oracles.FULL[n]) for n in ("sam_vit_b", "mobile_sam", "sam_hq_vit_tiny")]
    t0 = time.time()
    print("# Parity with the official implementations\n")
    print(f"Command: `.venv/bin/python scripts/parity_report.py{' --full' if args.full else ''}`  ")
    print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32, CPU.  ")
    print("Random weights (every tensor randomised, so zero-initialised relative positions and biases are exercised), "
          "1024 px, `vanilla`. Figures: max |basam - official| / max |official| over point, box and mask prompts, "
          "single and multimask (and `hq_token_only` on/off for HQ-SAM). The bar is 1e-4.\n")
    print("| model | architecture | image embedding | low-res logits | IoU predictions |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind, arch in cases:
            r = measure(name, arch, Path(tmp))
            print(f"| `{name}` | {kind} | {r['embedding']:.1e} | {r['low-res logits']:.1e} | {r['IoU']:.1e} |", flush=True)
    print(f"\nTook {time.time() - t0:.0f} s.")


if __name__ == "__main__":
    main()
