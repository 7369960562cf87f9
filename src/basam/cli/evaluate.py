"""``basam evaluate``: the resolution study (``basam.evaluate`` does the work)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import InputError
from .options import (
    add_attention_options, add_device_options, add_model_options, parse_resolution, require_extra, resolve_device,
)

DESCRIPTION = (
    "Evaluate a model across resolutions and attention presets: each image is encoded once per\n"
    "(resolution, preset), the predicted mask is scored with the standard metrics, and the summary\n"
    "shows how much each preset degrades away from the first resolution (the paper's Δdiff).\n"
    "Pairs left out (an image without its mask or the reverse, a mask of another size, a file that\n"
    "cannot be read) are listed with their reasons in the summary it prints and in per_image.csv.\n"
    "Refused in one line (exit 2) before any work: an --out that is a file or cannot be written,\n"
    "an --out holding a run with other settings, an encoding that would not fit in memory\n"
    "(--max-memory); a full disk later is one line too, with no half-written file."
)


def parse_attention_variant(value: str) -> str:
    """``PRESET[:OPTION]...`` (checked by :func:`basam.evaluate.parse_variant`)."""
    from ..evaluate import attention_variant

    try:
        attention_variant(value)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a model across resolutions and attention presets on benchmark datasets",
        description=DESCRIPTION,
        epilog=("examples:\n"
                "  basam evaluate --data DUTS-TE/ --model sam_vit_b --checkpoint sam_vit_b_01ec64.pth \\\n"
                "      --resolutions 1024 1536 2048 --attention vanilla nsf basam --prompt point --out runs/duts\n"
                "  torchrun --standalone --nproc_per_node 4 -m basam.evaluate --data DIS5K/:dis5k ... --out runs/dis"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", metavar="PATH[:LAYOUT][:split=S]", action="append", required=True,
                   help="dataset folder, layout detected or named: duts, dis5k, cod10k, isic, generic (repeatable); "
                        ":split=test or :split=train takes basam.data's fixed seeded 20/80 part of it")
    add_model_options(p, checkpoint_help="weights file; default: the official download", hq_fusion=True)
    p.add_argument("--resolutions", metavar="R", type=parse_resolution, nargs="+", default=[1024],
                   help="working resolutions; Δdiff is reported against the first (default: 1024)")
    p.add_argument("--attention", metavar="PRESET[:OPT]", type=parse_attention_variant, nargs="+", default=["vanilla", "nsf", "basam"],
                   help="attention variants to compare (default: vanilla nsf basam): a preset, with options after colons "
                        "that change one knob each: a distance (basam:euclidean), beta=B (basam:beta=0.3), "
                        "count=row|image (nsf:count=image) or decoder (NSF on the decoder too: basam:decoder); "
                        "each is compared image by image with the first")
    add_attention_options(p, attention=False, nsf_options=True)
    p.add_argument("--prompt", choices=("point", "center", "box", "box+point"), default="point",
                   help="point: one seeded random foreground pixel (the paper's); center: the interior point farthest "
                        "from the boundary; box: the ground-truth box; box+point (default: %(default)s)")
    p.add_argument("--multimask", choices=("auto", "on", "off", "oracle"), default="auto",
                   help="on: ask for 3 candidates and keep the one with the best predicted IoU; off: the single-mask "
                        "output; auto: on for point prompts; oracle: 3 candidates, keep the one closest to the ground "
                        "truth (SAM's oracle figure, the best of three)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random point prompts (default 0)")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="first N images of each dataset")
    add_device_options(p, max_memory=True)
    p.add_argument("--out", metavar="DIR", required=True,
                   help="output folder (created); rerun with the same folder to resume (data folders and the checkpoint "
                        "are compared as resolved paths)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    require_extra("eval", "evaluate")
    from ..distributed import init_distributed
    from ..evaluate import EvalSettings, run as run_study

    if args.max_images is not None and args.max_images <= 0:
        raise InputError(f"--max-images must be positive, got {args.max_images}")
    settings = EvalSettings(
        data=list(args.data), model=args.model, checkpoint=args.checkpoint, resolutions=list(dict.fromkeys(args.resolutions)),
        attention=list(dict.fromkeys(args.attention)), prompt=args.prompt, beta=args.beta, dist=args.dist, nsf_count=args.nsf_count,
        decoder_nsf=args.decoder_nsf, multimask=args.multimask, hq_token_only=args.hq_token_only, hq_fusion=args.hq_fusion, seed=args.seed,
        max_images=args.max_images, architecture=args.architecture,
    )
    device = resolve_device(args.device)
    from ..memory import check_encode

    # The largest resolution decides: refused before the model loads, with the estimate and the limit.
    check_encode(settings.model, max(settings.resolutions), device, args.max_memory, architecture=args.architecture)
    dist = init_distributed(device)
    if dist.world > 1 and device.startswith("cuda"):
        device = f"cuda:{dist.local_rank}"
    t0 = time.time()
    try:
        summary = run_study(settings, Path(args.out), device=device, progress=not args.quiet, dist=dist)
    finally:
        dist.close()
    if summary is not None:
        print((Path(args.out) / "summary.md").read_text())
        skipped = sum(s["skipped"] for s in summary.values())
        note = f"; {skipped} pair(s) skipped, listed above with their reasons" if skipped else ""
        print(f"wrote {args.out}/summary.md, summary.csv, summary.json, per_image.csv and plots in {time.time() - t0:.1f} s{note}")
    return 0
