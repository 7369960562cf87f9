"""``basam export onnx``: the image encoder at one resolution + the prompt decoder, as ONNX graphs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError
from .options import (
    EXIT_OK, add_attention_options, add_model_options, check_architecture, parse_resolution, require_extra,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a model for deployment (ONNX: encoder at one resolution + decoder)",
        description="Export a model for another runtime. Only ONNX for now: `basam export onnx --help`.",
    )
    formats = p.add_subparsers(dest="format", metavar="FORMAT", title="formats")
    formats.required = True
    q = formats.add_parser(
        "onnx",
        help="encoder.onnx at one resolution (BA-SAM folded in) + decoder.onnx (the official decoder's contract)",
        description=(
            "Write encoder.onnx (the image encoder at --resolution, with the attention preset's NSF\n"
            "scale, BM-AM bias, relative-position tables and resampled position embedding folded in)\n"
            "and decoder.onnx (the official SAM ONNX decoder's inputs and outputs), plus\n"
            "basam_onnx.json with the export settings (SAM 2: the encoder also outputs the two\n"
            "high-resolution maps, the decoder takes them; see basam.export.exporter). Run them with\n"
            "`basam segment --runtime onnx` or basam.export.OnnxPredictor. Needs the [onnx] extra."
        ),
        epilog=(
            "examples:\n"
            "  basam export onnx --model basam_tiny --out onnx/tiny\n"
            "  basam export onnx --model sam_vit_b --checkpoint sam_vit_b_01ec64.pth --resolution 1536 \\\n"
            "      --attention basam --quantize --out onnx/vit_b_1536"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(q, hq_token_only=True)
    q.add_argument("--resolution", metavar="R", type=parse_resolution, default=None,
                   help="the longest image side the pair works at (default: the model's own)")
    add_attention_options(q, nsf_options=True,
                          attention_help="attention preset folded into the encoder: vanilla, nsf, basam "
                                         "(default: what a basam checkpoint records, else vanilla)")
    q.add_argument("--out", metavar="DIR", required=True, help="output folder (created)")
    q.add_argument("--opset", type=int, default=None, help="ONNX opset, 14-20 (default 17)")
    q.add_argument("--quantize", action="store_true",
                   help="also write encoder.quant.onnx / decoder.quant.onnx (onnxruntime dynamic int8)")
    q.add_argument("--return-single-mask", action="store_true",
                   help="SAM / MobileSAM: the decoder returns one mask, chosen as the official export does "
                        "(SAM 2: by its multimask-via-stability rule, as Sam2Predictor)")
    q.add_argument("--multimask-output", action="store_true",
                   help="HQ-SAM: fuse the HQ mask with SAM's best multimask output (official HQ export option)")
    q.add_argument("-q", "--quiet", action="store_true", help="no notes on stderr")
    q.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    require_extra("onnx", "export onnx")
    from ..attention_config import AttentionConfig
    from ..models.registry import get_spec

    spec = get_spec(args.model)
    arch = check_architecture(args.model, args.architecture)
    is_hq = bool(arch.get("hq", spec.hq)) if arch else spec.hq
    if (args.hq_token_only or args.multimask_output) and not is_hq:
        raise InputError(f"--hq-token-only / --multimask-output apply to sam_hq_* models, not {args.model}")
    if args.return_single_mask and is_hq:
        raise InputError("--return-single-mask: HQ-SAM's decoder always returns one mask")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {args.out!r} is a file, not a folder")
    overrides = {k: v for k, v in {"beta": args.beta, "dist": args.dist, "nsf_count": args.nsf_count}.items()
                 if v is not None}
    if args.decoder_nsf:
        overrides["decoder_nsf"] = True
    config = AttentionConfig.from_preset(args.attention, **overrides) if args.attention else None

    from ..export import export_onnx
    from ..load import load_model

    model = load_model(args.model, checkpoint=args.checkpoint, attention=config, device="cpu",
                       progress=not args.quiet, architecture=arch, **({} if config is not None else overrides))
    kwargs = {"opset": args.opset} if args.opset is not None else {}
    paths = export_onnx(model, out, resolution=args.resolution, quantize=args.quantize,
                        return_single_mask=args.return_single_mask, hq_token_only=bool(args.hq_token_only),
                        multimask_output=args.multimask_output, **kwargs)
    resolution = args.resolution or model.img_size
    preset = model.attention_config.preset_name or "custom"
    if not args.quiet:
        print(f"exported {args.model} at {resolution} px, attention {preset}", file=sys.stderr, flush=True)
    for key, path in paths.items():
        print(f"{key:14s} -> {path}")
    return EXIT_OK
