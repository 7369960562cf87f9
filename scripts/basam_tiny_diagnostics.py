#!/usr/bin/env python
"""Measurements behind basam_tiny's recipes (docs/results/README.md, "What was tried").

    python scripts/basam_tiny_diagnostics.py frame --checkpoint docs/results/v2_v3/basam_tiny_v2_step6000.safetensors --n 150
    python scripts/basam_tiny_diagnostics.py ceiling
    python scripts/basam_tiny_diagnostics.py disc [--checkpoint C] [--label v7]
    python scripts/basam_tiny_diagnostics.py testtime [--checkpoint C] [--n 400]

``frame``: one model on the first N DUTS-TE images, one interior point, 256 px, in the two frames an
image can be given to it: SAM's (longest side 256, aspect kept, zero padding: what basam.Predictor
and basam evaluate do) and squashed to 256 x 256 (what a ``--frame square`` training run showed the
model). A model trained squashed loses in SAM's frame what it never saw there: padding and the true
aspect ratio. Prints mean IoU, best of three and single-mask, per frame.

``ceiling``: the IoU a perfect mask predictor reaches on DUTS-TE at 256 px when its logits live on a
grid of stride 4 (SAM's low-res masks) or 16 (one value per token): the ground truth area-averaged
onto that grid, upsampled bilinearly to the original size as the predictor does, thresholded at 0.5.

``disc``: the synthetic disc of tests/test_basam_tiny.py (radius 80 in a 300 x 400 image, one click
at its centre) at 256, 512, 768 and 1024 px under ``vanilla``, ``nsf`` and ``basam`` attention: IoU
of the model's pick of its three candidates / of the single-mask output, as Markdown table rows.

``testtime``: whether inference-time tricks would close the single-mask gap, on the first N DUTS-TE
images (centre point, 256 px): the single-mask output as is, after one and two passes that feed its
own low-res logits back as the mask prompt (same click), and averaged with the prediction on the
horizontally flipped image; the best of three and the model's pick beside them.
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


def _disc_image():
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - 150) ** 2 + (xx - 200) ** 2 < 80**2
    rng = np.random.default_rng(0)
    image = np.where(disc[..., None], [230, 60, 40], [30, 40, 60]).astype(np.float64) + rng.normal(0, 8, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), disc


def disc(args) -> None:
    import basam

    image, target = _disc_image()
    click, fg = np.array([[200, 150]]), np.array([1])
    for att in ("vanilla", "nsf", "basam"):
        model = basam.load_model("basam_tiny", checkpoint=args.checkpoint, attention=att)
        row = []
        for r in (256, 512, 768, 1024):
            p = basam.Predictor(model, resolution=r)
            p.set_image(image)
            masks, scores, _ = p.predict(point_coords=click, point_labels=fg)
            single, _, _ = p.predict(point_coords=click, point_labels=fg, multimask_output=False)
            row.append(f"{_iou(masks[int(np.argmax(scores))], target):.2f} / {_iou(single[0], target):.2f}")
        print(f"| {args.label} {att} | " + " | ".join(row) + " |")


def testtime(args) -> None:
    import basam
    from basam.data.datasets import open_data_spec
    from basam.data.prompts import make_prompt

    model = basam.load_model("basam_tiny", checkpoint=args.checkpoint, attention="vanilla")
    pred = basam.Predictor(model, resolution=args.resolution)
    ds = open_data_spec(args.data)[0]
    rows = {k: [] for k in ("single-mask", "+1 self-refinement pass", "+2 self-refinement passes",
                            "flip-averaged single-mask", "best of 3", "model's pick of 3")}
    for i in range(min(args.n, len(ds))):
        image, gt = ds.load(i)
        gt = gt.astype(bool)
        pr = make_prompt(gt, "center")
        kw = dict(point_coords=pr.point_coords, point_labels=pr.point_labels, return_logits=True)
        pred.set_image(image)
        single, _, low = pred.predict(multimask_output=False, **kw)
        rows["single-mask"].append(_iou(single[0] >= 0, gt))
        for n in (1, 2):
            again, _, low = pred.predict(mask_input=low, multimask_output=False, **kw)
            rows[f"+{n} self-refinement pass{'es' if n > 1 else ''}"].append(_iou(again[0] >= 0, gt))
        three, scores, _ = pred.predict(multimask_output=True, **kw)
        ious = [_iou(m >= 0, gt) for m in three]
        rows["best of 3"].append(max(ious))
        rows["model's pick of 3"].append(ious[int(np.argmax(scores))])
        pred.set_image(np.ascontiguousarray(image[:, ::-1]))
        flipped = pr.point_coords.copy()
        flipped[:, 0] = image.shape[1] - 1 - flipped[:, 0]
        mirrored, _, _ = pred.predict(point_coords=flipped, point_labels=pr.point_labels, multimask_output=False, return_logits=True)
        rows["flip-averaged single-mask"].append(_iou((single[0] + mirrored[0][:, ::-1]) / 2 >= 0, gt))
    print(f"{len(rows['best of 3'])} images of {args.data}, centre point, {args.resolution} px: mean IoU")
    for name, v in rows.items():
        print(f"  {name:27s} {np.mean(v):.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    f = sub.add_parser("frame", help="a model in SAM's frame vs squashed")
    f.add_argument("--checkpoint", required=True)
    f.add_argument("--n", type=int, default=150)
    c = sub.add_parser("ceiling", help="the IoU ceiling of stride-4 and stride-16 masks")
    d = sub.add_parser("disc", help="the synthetic disc at 1x-4x the training grid, three attention modes")
    d.add_argument("--checkpoint", help="basam_tiny weights (default: the bundled ones)")
    d.add_argument("--label", default="basam_tiny", help="row label")
    t = sub.add_parser("testtime", help="self-refinement and flip averaging of the single-mask output")
    t.add_argument("--checkpoint", help="basam_tiny weights (default: the bundled ones)")
    t.add_argument("--n", type=int, default=400)
    for p in (f, c, t):
        p.add_argument("--data", default="../shared/data/duts-te")
        p.add_argument("--resolution", type=int, default=256)
    args = ap.parse_args(argv)
    {"frame": frame, "ceiling": ceiling, "disc": disc, "testtime": testtime}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
