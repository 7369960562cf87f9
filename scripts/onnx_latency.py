"""Latency of the exported ONNX pair against basam in PyTorch, on this machine's CPU.

For each model: export at the resolution (random weights: latency does not depend on their values),
then time, each as the median of --repeats runs after one warm-up run:

* encode: ``Predictor.set_image`` (PyTorch, sdpa backend) vs ``OnnxPredictor.set_image`` (fp32
  and int8 graphs);
* click: one foreground point on the encoded image (decoder + mask upsampling to the original
  size), ``predict`` in both.

    python scripts/onnx_latency.py --models sam_vit_b mobile_sam --resolution 1024 --out docs/perf_runs/onnx_cpu.json

Prints a markdown table (copied into docs/performance.md) and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import basam
from basam.export import OnnxPredictor, export_onnx


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, onnxruntime's first-run planning)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str, resolution: int, preset: str, repeats: int, threads: int) -> dict:
    torch.manual_seed(0)
    model = basam.create_model(name, attention=preset).eval()
    image = np.random.default_rng(0).integers(0, 256, (resolution * 3 // 4, resolution, 3), dtype=np.uint8)
    point = dict(point_coords=np.array([[resolution * 0.4, resolution * 0.3]]), point_labels=np.array([1]))
    row = {"model": name, "resolution": resolution, "attention": preset}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_onnx(model, tmp, resolution=resolution, quantize=True)
        row["export_s"] = time.perf_counter() - t0
        pt = basam.Predictor(model, resolution=resolution)
        with torch.inference_mode():
            row["encode_torch_s"] = _median_s(lambda: pt.set_image(image), repeats)
            row["click_torch_ms"] = 1e3 * _median_s(lambda: pt.predict(**point), repeats * 5)
        for tag, quantized in (("onnx", False), ("onnx_int8", True)):
            ox = OnnxPredictor(tmp, quantized=quantized, threads=threads)
            row[f"encode_{tag}_s"] = _median_s(lambda: ox.set_image(image), repeats)
            row[f"click_{tag}_ms"] = 1e3 * _median_s(lambda: ox.predict(**point), repeats * 5)
            del ox
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["sam_vit_b", "mobile_sam"])
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--attention", default="basam")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for name in args.models:
        row = measure(name, args.resolution, args.attention, args.repeats, args.threads)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    print("| model | px | attention | encode PyTorch | encode ONNX | encode ONNX int8 | click PyTorch | click ONNX | click ONNX int8 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['resolution']} | {r['attention']} | {r['encode_torch_s']:.2f} s | {r['encode_onnx_s']:.2f} s | "
              f"{r['encode_onnx_int8_s']:.2f} s | {r['click_torch_ms']:.0f} ms | {r['click_onnx_ms']:.0f} ms | "
              f"{r['click_onnx_int8_ms']:.0f} ms |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        import onnxruntime

        env = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "threads": torch.get_num_threads(),
               "machine": platform.machine(), "processor": platform.processor()}
        args.out.write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
