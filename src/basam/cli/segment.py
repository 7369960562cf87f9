"""``basam segment``: one image, point/box prompts, masks at the image's own size."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import InputError
from .options import (
    EXIT_OK, add_attention_options, add_device_options, add_model_options, check_architecture, parse_box,
    parse_point, parse_resolution, resolve_device,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "segment",
        help="segment one image from point and/or box prompts",
        description=(
            "Segment one image with a SAM-family model at any working resolution.\n"
            "Prompt coordinates are in the original image's pixels; masks are written at the\n"
            "image's own size."
        ),
        epilog=(
            "examples:\n"
            "  basam segment photo.jpg --point 500,375 --checkpoint mobile_sam.pt\n"
            "  basam segment photo.jpg --box 10,20,300,400 --point 120,80,0 --multimask --out m.png\n"
            "  basam segment big.png --point 2000,1500 --resolution 2048 --attention basam --overlay o.jpg"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="image file (JPEG, PNG, TIFF, WebP, ...)")

    g = p.add_argument_group("prompts (at least one)")
    g.add_argument("--point", metavar="X,Y[,LABEL]", type=parse_point, action="append", default=[],
                   help="a click in image pixels; LABEL 1 = foreground (default), 0 = background; repeatable")
    g.add_argument("--box", metavar="X0,Y0,X1,Y1", type=parse_box, action="append", default=[],
                   help="a box in image pixels (top-left, bottom-right corners); at most one")

    g = p.add_argument_group("model")
    add_model_options(g, architecture=False)
    g.add_argument("--resolution", metavar="R", type=parse_resolution, default=None,
                   help="working resolution, the longest side in px (>= 64; default: the model's own, 1024)")
    add_attention_options(g, attention_help="attention preset: vanilla (SAM), nsf (new scaling factor), basam (NSF + "
                                            "bias-mode mask); default: what a basam checkpoint records, else vanilla")
    add_device_options(g, max_memory=True)
    from .options import parse_architecture

    g.add_argument("--architecture", metavar="JSON", type=parse_architecture, default=None,
                   help="(testing) override the architecture, e.g. '{\"embed_dim\": 64, \"depth\": 4}'")
    g.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                   help="torch (default) or onnx: run the pair `basam export onnx` wrote in --onnx-dir "
                        "(model, resolution and attention are the export's)")
    g.add_argument("--onnx-dir", metavar="DIR", default=None, help="with --runtime onnx: the export folder")
    g.add_argument("--onnx-quantized", action="store_true", help="with --runtime onnx: run the int8 graphs (--quantize)")

    g = p.add_argument_group("output")
    g.add_argument("--multimask", action="store_true",
                   help="write SAM's 3 candidate masks as <out stem>_0.png, _1.png, _2.png")
    g.add_argument("--out", metavar="PATH.png", default=None,
                   help="mask PNG (default: <image stem>_mask.png in the current directory)")
    g.add_argument("--overlay", metavar="PATH", default=None,
                   help="also write the masks and prompts drawn over the image (.png, .jpg, .jpeg)")
    g.add_argument("-q", "--quiet", action="store_true", help="no timing or notes on stderr")
    p.set_defaults(func=run)
    return p


def _note(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _output_paths(args: argparse.Namespace, image_path: Path) -> Tuple[Path, List[Path], Optional[Path]]:
    """(--out, the mask files it stands for, --overlay), all checked; nothing is written."""
    out = Path(args.out) if args.out is not None else Path.cwd() / f"{image_path.stem}_mask.png"
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {str(out)!r}: the mask file must end in .png")
    n_masks = 3 if args.multimask else 1
    masks = [out] if n_masks == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n_masks)]
    overlay = Path(args.overlay) if args.overlay is not None else None
    if overlay is not None and overlay.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise InputError(f"--overlay {str(overlay)!r}: the overlay file must end in .png, .jpg or .jpeg")
    targets = masks + ([overlay] if overlay is not None else [])
    image_real = os.path.realpath(image_path)
    seen: Dict[str, Path] = {}
    for t in targets:
        real = os.path.realpath(t)
        if real == image_real:
            raise InputError(f"output {str(t)!r} would overwrite the input image")
        if real in seen:
            raise InputError(f"--out and --overlay both name {str(t)!r}")
        seen[real] = t
        if t.is_dir():
            raise InputError(f"cannot write {str(t)!r}: is a directory")
        parent = t.parent
        if not parent.is_dir():
            raise InputError(f"cannot write {str(t)!r}: directory {str(parent)!r} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {str(t)!r}: directory {str(parent)!r} is not writable")
    return out, masks, overlay


def _onnx_predictor(args: argparse.Namespace):
    """The :class:`basam.export.OnnxPredictor` for ``--runtime onnx``, after checking the flags against the export."""
    from .options import require_extra

    require_extra("onnx", "segment --runtime onnx")
    if args.onnx_dir is None:
        raise InputError("--runtime onnx needs --onnx-dir DIR (the folder `basam export onnx` wrote)")
    if args.checkpoint is not None or args.architecture is not None:
        raise InputError("--runtime onnx runs the exported weights; --checkpoint / --architecture do not apply")
    from ..export import OnnxPredictor

    predictor = OnnxPredictor(args.onnx_dir, quantized=args.onnx_quantized)
    meta = predictor.meta
    from ..constants import DEFAULT_MODEL

    if args.model not in (DEFAULT_MODEL, meta["model"]):
        raise InputError(f"--model {args.model}: {args.onnx_dir} holds an export of {meta['model']}")
    if args.resolution is not None and args.resolution != predictor.resolution:
        raise InputError(f"--resolution {args.resolution}: {args.onnx_dir} was exported at {predictor.resolution} px; "
                         "export again for another resolution")
    if args.attention is not None and args.attention != meta.get("attention_preset"):
        raise InputError(f"--attention {args.attention}: {args.onnx_dir} was exported with "
                         f"{meta.get('attention_preset') or 'a custom config'}; export again to change it")
    return predictor


def _describe_attention(config) -> str:
    name = config.preset_name or "custom"
    if config.bias:
        return f"{name} (beta {config.beta:g}, dist {config.dist})"
    return name


def run(args: argparse.Namespace) -> int:
    # 1. Arguments that need no file and no torch.
    if len(args.box) > 1:
        raise InputError(f"only one --box is allowed, got {len(args.box)}")
    box = args.box[0] if args.box else None
    points = list(args.point)
    if not points and box is None:
        raise InputError("no prompt given: pass at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")

    from ..attention_config import AttentionConfig
    from ..models.registry import get_spec

    spec = get_spec(args.model)  # unknown name -> the message lists the valid ones
    arch = check_architecture(args.model, args.architecture)
    overrides = {k: v for k, v in {"beta": args.beta, "dist": args.dist}.items() if v is not None}
    # No --attention: the checkpoint's own config (a fine-tuned basam file), else vanilla.
    config = AttentionConfig.from_preset(args.attention, **overrides) if args.attention else None
    if overrides and config is not None and not config.bias:
        _note(args, f"note: --beta/--dist only act with --attention basam; ignored with --attention {args.attention}")
    is_hq = bool(arch.get("hq", spec.hq)) if arch else spec.hq
    if args.hq_token_only and not is_hq and args.runtime == "torch":
        raise InputError(f"--hq-token-only applies to sam_hq_* models, not {args.model}")
    device = resolve_device(args.device)
    if args.runtime == "torch":  # (an ONNX export's resolution is fixed in the file)
        from ..memory import check_encode

        # Before any big allocation: an encoding that cannot fit (--resolution 99999) is refused here.
        check_encode(args.model, args.resolution or (arch or {}).get("img_size", spec.img_size), device, args.max_memory,
                     architecture=arch)

    # 2. Files: outputs writable, image readable, prompts inside it.
    from .. import io as bio

    image_path = Path(args.image)
    out, _, overlay = _output_paths(args, image_path)  # checked before any work; mask_writers names the files
    image = bio.read_image(image_path)
    height, width = image.shape[:2]
    from ..predictor import check_prompts

    check_prompts([[x, y] for x, y, _ in points] or None, [label for _, _, label in points] or None, box, width, height)

    # 3. Model (reads and checks the checkpoint strictly), or the exported ONNX pair.
    takes_hq_token = True  # basam.Predictor and OnnxPredictor take hq_token_only
    if args.runtime == "onnx":
        predictor = _onnx_predictor(args)
        meta = predictor.meta
        print(
            f"model {meta['model']} (onnx{', int8' if args.onnx_quantized else ''})  resolution {predictor.resolution}  "
            f"attention {meta.get('attention_preset') or 'custom'}  device cpu  image {width}x{height}",
            flush=True,
        )
    else:
        from ..load import load_model
        from ..predictor import Predictor

        model = load_model(
            args.model, checkpoint=args.checkpoint, attention=config, device=device,
            progress=not args.quiet, architecture=arch, **({} if config is not None else overrides),
        )
        from ..models.sam2 import Sam2

        if isinstance(model, Sam2):  # SAM 2's own preprocessing (square resize), as the ONNX runtime's
            from ..sam2_predictor import Sam2Predictor

            predictor = Sam2Predictor(model, resolution=args.resolution)
            takes_hq_token = False  # SAM2ImagePredictor's signature (--hq-token-only is refused for SAM 2)
        else:
            predictor = Predictor(model, resolution=args.resolution)
        print(
            f"model {args.model}  resolution {predictor.resolution}  attention {_describe_attention(model.attention_config)}  "
            f"device {device}  image {width}x{height}",
            flush=True,
        )

    # 4. Encode and decode.
    import numpy as np
    import torch

    start = time.perf_counter()
    with warnings.catch_warnings():
        # The resized image can be a read-only view; torch warns but copies it to the device anyway.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        predictor.set_image(image)
    if getattr(predictor, "device", None) is not None and predictor.device.type == "cuda":
        torch.cuda.synchronize(predictor.device)
    _note(args, f"encoded in {time.perf_counter() - start:.2f} s")

    coords = np.array([[x, y] for x, y, _ in points], dtype=float) if points else None
    labels = np.array([label for _, _, label in points], dtype=np.int64) if points else None
    box_arr = np.array(box, dtype=float) if box is not None else None
    hq = {"hq_token_only": True if args.hq_token_only else None} if takes_hq_token else {}
    masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box_arr,
                                         multimask_output=args.multimask, **hq)
    masks = np.asarray(masks) > 0  # Sam2Predictor returns 0/1 floats, as SAM2ImagePredictor does

    # 5. Write: every mask and the overlay staged first, then renamed together (all or nothing), so a
    #    failed overlay leaves the earlier masks as they were, not overwritten.
    files = bio.mask_writers(out, masks)
    if overlay is not None:
        files.append(bio.overlay_writer(overlay, image, masks, points=coords, point_labels=labels,
                                        boxes=box_arr[None] if box_arr is not None else None))
    written = bio.atomic_write_all(files)[: len(files) - (overlay is not None)]

    for i, (score, path) in enumerate(zip(scores, written)):
        print(f"mask {i}: predicted IoU {float(score):.3f}  -> {path}")
    if overlay is not None:
        print(f"overlay  -> {overlay}")
    return EXIT_OK
