"""``basam amg``: segment everything in an image or a folder (``basam.amg`` does the work)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from .options import (
    add_attention_options, add_device_options, add_model_options, check_architecture, parse_resolution, require_extra,
    resolve_device,
)


def _resolution(value: str):
    return "native" if value.strip().lower() == "native" else parse_resolution(value)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "amg",
        help="segment everything (automatic mask generation) in an image or a folder",
        description="Generate every mask of an image from a grid of point prompts, as the official\n"
                    "SamAutomaticMaskGenerator / scripts/amg.py do, at any resolution (--resolution native:\n"
                    "the whole image at its own size). Writes one folder per image (0.png ..., metadata.csv,\n"
                    "overlay.png) or, with --output-format coco, COCO RLE annotations. Rerun to resume.",
        epilog="examples:\n"
               "  basam amg photo.jpg --out masks/ --model basam_tiny\n"
               "  basam amg images/ --out masks/ --resolution native --attention basam --output-format coco",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IMAGE_OR_FOLDER", help="an image file or a folder of images")
    p.add_argument("--out", metavar="DIR", required=True, help="output folder (created; images already done are skipped)")
    add_model_options(p)
    p.add_argument("--resolution", type=_resolution, default=None, metavar="R|native",
                   help="longest side each crop is encoded at (default: the model's own; native: the crop's own size)")
    add_attention_options(p, attention_default="vanilla")
    add_device_options(p, max_memory=True)
    g = p.add_argument_group("generator (the official flags)")
    g.add_argument("--points-per-side", type=int, default=32)
    g.add_argument("--points-per-batch", type=int, default=64)
    g.add_argument("--pred-iou-thresh", type=float, default=0.88)
    g.add_argument("--stability-score-thresh", type=float, default=0.95)
    g.add_argument("--stability-score-offset", type=float, default=1.0)
    g.add_argument("--box-nms-thresh", type=float, default=0.7)
    g.add_argument("--crop-n-layers", type=int, default=0)
    g.add_argument("--crop-nms-thresh", type=float, default=0.7)
    g.add_argument("--crop-overlap-ratio", type=float, default=512 / 1500)
    g.add_argument("--crop-n-points-downscale-factor", type=int, default=1)
    g.add_argument("--min-mask-region-area", type=int, default=0)
    p.add_argument("--output-format", choices=("png", "coco"), default="png", help="per-image PNG folders (default) or COCO RLE JSON")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlay.png per image")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    require_extra("amg", "amg")
    from ..amg import AutomaticMaskGenerator, run_folder
    from ..distributed import init_distributed
    from ..load import load_model

    source = Path(args.input)
    if not source.exists():
        raise InputError(f"{args.input!r} does not exist")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {args.out!r} is a file, not a folder")
    if args.hq_token_only and not args.model.startswith("sam_hq"):
        raise InputError(f"--hq-token-only applies to sam_hq_* models, not {args.model}")
    device = resolve_device(args.device)
    overrides = {k: getattr(args, k) for k in ("beta", "dist") if getattr(args, k) is not None}
    arch = check_architecture(args.model, args.architecture)
    if args.resolution != "native":  # native: each crop at its own size, known only per image
        from ..memory import check_encode
        from ..models.registry import get_spec

        check_encode(args.model, args.resolution or (arch or {}).get("img_size", get_spec(args.model).img_size), device,
                     args.max_memory, architecture=arch)
    model = load_model(args.model, checkpoint=args.checkpoint, attention=args.attention, device=device,
                       progress=not args.quiet, architecture=arch, **overrides)
    generator = AutomaticMaskGenerator(
        model, resolution=args.resolution, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh,
        stability_score_offset=args.stability_score_offset, box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers, crop_nms_thresh=args.crop_nms_thresh, crop_overlap_ratio=args.crop_overlap_ratio,
        crop_n_points_downscale_factor=args.crop_n_points_downscale_factor, min_mask_region_area=args.min_mask_region_area,
        output_mode="binary_mask",
        hq_token_only=True if args.hq_token_only else None,
    )
    out.mkdir(parents=True, exist_ok=True)
    dist = init_distributed(device)
    try:
        result = run_folder(generator, str(source), out, output_format=args.output_format, overlay=not args.no_overlay,
                            progress=not args.quiet, rank=dist.rank, world_size=dist.world)
    finally:
        dist.close()
    print(f"{len(result['done'])} image(s) segmented, {len(result['skipped'])} already done, "
          f"{len(result['failed'])} failed -> {out}")
    for name, message in result["failed"].items():
        print(f"  failed {name}: {message}")
    return 2 if result["failed"] and not result["done"] and not result["skipped"] else 0
