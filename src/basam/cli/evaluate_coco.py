"""``basam evaluate-coco``: COCO instance segmentation AP with box prompts (``basam.coco`` does the work)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import InputError
from .options import (
    EXIT_OK, add_attention_options, add_device_options, add_model_options, check_architecture, parse_architecture,
    parse_resolution, require_extra, resolve_device,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate-coco",
        help="COCO instance segmentation AP with box prompts (the paper's Table 3)",
        description="Prompt the model with a detector's boxes (or the ground-truth boxes) on a COCO-format set and\n"
                    "report mask AP / AP50 / AP75 / APs / APm / APl through pycocotools.",
        epilog="example:\n  basam evaluate-coco --images val2017/ --annotations instances_val2017.json \\\n"
               "      --detections detr_val2017.json --model sam_vit_b --checkpoint sam_vit_b_01ec64.pth --attention basam",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--images", metavar="DIR", required=True, help="folder of the images named in the annotations")
    p.add_argument("--annotations", metavar="JSON", required=True, help="COCO instances JSON (ground truth)")
    p.add_argument("--detections", metavar="JSON", default=None,
                   help="a detector's COCO results (image_id, category_id, bbox, score); default: the ground-truth boxes")
    p.add_argument("--score-threshold", type=float, default=0.0, help="drop detections scored below this (default 0)")
    add_model_options(p, checkpoint_help="weights file; default: the official download", architecture=False, hq_token_only=False)
    p.add_argument("--resolution", type=parse_resolution, default=None, help="working resolution (default: the model's own)")
    add_attention_options(p, attention_default="vanilla")
    p.add_argument("--hq-token-only", action="store_true", default=None, help="HQ-SAM: the HQ token's mask alone")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="only the first N images")
    add_device_options(p)
    p.add_argument("--architecture", type=parse_architecture, default=None, help="(testing) override the architecture")
    p.add_argument("--out", metavar="JSON", default=None, help="also write the AP summary here (and the masks as RLE results beside it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    require_extra("eval", "evaluate-coco")
    from ..coco import STAT_KEYS, evaluate_coco
    from ..io import atomic_write
    from ..load import load_model
    from ..predictor import Predictor

    if args.max_images is not None and args.max_images <= 0:
        raise InputError(f"--max-images must be positive, got {args.max_images}")
    out = Path(args.out) if args.out else None
    if out is not None and (out.suffix.lower() != ".json" or not out.parent.is_dir()):
        raise InputError(f"--out must be a .json file in an existing folder, got {args.out!r}")
    device = resolve_device(args.device)
    overrides = {k: getattr(args, k) for k in ("beta", "dist") if getattr(args, k) is not None}
    model = load_model(args.model, checkpoint=args.checkpoint, attention=args.attention, device=device,
                       architecture=check_architecture(args.model, args.architecture), **overrides)
    predictor = Predictor(model, resolution=args.resolution)
    t0 = time.time()
    result = evaluate_coco(predictor, Path(args.images), Path(args.annotations), Path(args.detections) if args.detections else None,
                           score_threshold=args.score_threshold, max_images=args.max_images, progress=not args.quiet,
                           hq_token_only=args.hq_token_only,
                           results_path=out.with_name(out.stem + "_segm_results.json") if out is not None else None)
    print(f"model {args.model}  resolution {predictor.resolution}  attention {args.attention}  "
          f"images {result['n_images']}  instances {result['n_instances']}  ({time.time() - t0:.1f} s)")
    print("  ".join(f"{k} {result[k]:.3f}" for k in STAT_KEYS))
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} image(s): " + "; ".join(f"{f}: {r}" for f, r in result["skipped"][:5]))
    if out is not None:
        payload = {"model": args.model, "resolution": predictor.resolution, "attention": args.attention, **result}
        atomic_write(out, lambda f: f.write(json.dumps(payload, indent=2, default=str).encode()))
    return EXIT_OK
