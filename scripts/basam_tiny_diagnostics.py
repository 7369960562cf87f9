#!/usr/bin/env python
"""Two measurements behind basam_tiny v4's recipe (docs/results/README.md, "What was tried").

    python scripts/basam_tiny_diagnostics.py frame --checkpoint docs/results/v2_v3/basam_tiny_v2_step6000.safetensors --n 150
    python scripts/basam_tiny_diagnostics.py ceiling

``frame``: one model on the first N DUTS-TE images, one interior point, 256 px, in the two frames an
image can be given to it: SAM's (longest side 256, aspect kept, zero padding: what basam.Predictor
and basam evaluate do) and squashed to 256 x 256 (what a ``--frame square`` training run showed the
model). A model trained squashed loses in SAM's frame what it never saw there: padding and the true
aspect ratio. Prints mean IoU, best of three and single-mask, per frame.

``ceiling``: the IoU a perfect mask predictor reaches on DUTS-TE at 256 px when its logits live on a
grid of stride 4 (SAM's low-res masks) or 16 (one value per token): the ground truth area-averaged
onto that grid, upsampled bilinearly to the original size as the predictor does, thresholded at 0.5.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def frame(args) -> None:
    import torch
    import torch.nn.functional as F

    import basam
    from basam.data.datasets import open_data_spec
    from basam.data.prompts import make_prompt

    model = basam.load_model("basam_tiny", checkpoint=args.checkpoint, attention="vanilla").eval()
    ds = open_data_spec(args.data)[0]
    R = args.resolution
    res = {"SAM's frame (longest side, padded)": [], "squashed to R x R": []}
    for i in range(min(args.n, len(ds))):
        img, gt = ds.load(i)
        H, W = gt.shape
        (x, y), = make_prompt(gt, "center").point_coords
        t = torch.from_numpy(img).permute(2, 0, 1).float()[None]
        for name in res:
            if name.startswith("squashed"):
                size = (R, R)
            else:
                s = R / max(H, W)
                size = (int(H * s + 0.5), int(W * s + 0.5))
            resized = F.interpolate(t, size, mode="bilinear", antialias=True, align_corners=False)
            with torch.no_grad():
                x_in = model.preprocess(resized, R)
                feats = model.encode(x_in)
                pc = torch.tensor([[[x * size[1] / W, y * size[0] / H]]], dtype=torch.float32)
                pl = torch.ones(1, 1, dtype=torch.int)
                scores = []
                for multimask in (True, False):
                    low, _ = model.decode(feats, pc, pl, None, None, multimask_output=multimask)
                    masks = model.postprocess_masks(low, size, (H, W), tuple(x_in.shape[-2:]))[0] > 0
                    scores.append(max(_iou(m.numpy(), gt) for m in masks))
            res[name].append(scores)
    print(f"{args.checkpoint}: {args.n} images of {args.data}, one interior point, {R} px")
    for name, v in res.items():
        a = np.array(v)
        print(f"  {name:36s} IoU best of 3 {a[:, 0].mean():.3f}   single-mask {a[:, 1].mean():.3f}")


def ceiling(args) -> None:
    import torch
    import torch.nn.functional as F

    from basam.data.datasets import open_data_spec

    ds = open_data_spec(args.data)[0]
    out = {4: [], 16: []}
    for i in range(len(ds)):
        _, gt = ds.load(i)
        H, W = gt.shape
        s = args.resolution / max(H, W)
        h, w = int(H * s + 0.5), int(W * s + 0.5)
        g = torch.from_numpy(gt).float()[None, None]
        for stride in out:
            low = F.interpolate(g, (max(1, h // stride), max(1, w // stride)), mode="area")
            up = F.interpolate(low, (H, W), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5
            out[stride].append(_iou(up, gt))
    print(f"{len(ds)} images of {args.data} at {args.resolution} px: the best IoU a mask on a grid of")
    for stride, v in out.items():
        print(f"  stride {stride:2d}: {np.mean(v):.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    f = sub.add_parser("frame", help="a model in SAM's frame vs squashed")
    f.add_argument("--checkpoint", required=True)
    f.add_argument("--n", type=int, default=150)
    c = sub.add_parser("ceiling", help="the IoU ceiling of stride-4 and stride-16 masks")
    for p in (f, c):
        p.add_argument("--data", default="../shared/data/duts-te")
        p.add_argument("--resolution", type=int, default=256)
    args = ap.parse_args(argv)
    frame(args) if args.what == "frame" else ceiling(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
