"""The ``basam`` command line.

Subcommands (one parser each, registered in :data:`COMMANDS`)::

    basam segment IMAGE --point X,Y[,LABEL] ... [--box X0,Y0,X1,Y1] [options]

Conventions shared by every subcommand:

* Results go to stdout with ``print``; progress and timing go to stderr (silenced by ``--quiet``).
* Every :class:`~basam.errors.BasamError` and every usage error becomes exactly one line
  ``basam: error: <message>`` on stderr and exit code 2, with no traceback. Everything that can be
  checked (arguments, image, prompts, output paths, model name, checkpoint) is checked before any
  file is written, and the writers are atomic, so a failed run leaves no output behind.
* Ctrl-C exits with 130 and one line. Any other exception is a bug and propagates with its
  traceback (except running out of memory, which gets a one-line hint and exit code 1).

:func:`main` takes ``argv`` and returns the exit code, so tests can call it in-process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

from .errors import BasamError, InputError

__all__ = ["main", "build_parser", "UsageError", "COMMANDS"]

PROG = "basam"
EXIT_OK = 0
EXIT_RESOURCE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_MODEL = "mobile_sam"
# Kept in sync with basam.attention (not imported here so `basam --help` stays fast).
ATTENTION_PRESETS = ("vanilla", "nsf", "basam")
ATTENTION_DISTANCES = ("manhattan", "euclidean", "flat")
MIN_RESOLUTION = 64


# ----------------------------------------------------------------------------------------------
# Parser plumbing


class UsageError(BasamError):
    """A command line argparse rejected (bad option, missing argument, unparsable value)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and calling ``sys.exit(2)``.

    Subparsers made by ``add_subparsers`` inherit this class, so every level behaves the same.
    ``--help`` still prints and exits 0 through :meth:`exit` (SystemExit, caught in :func:`main`).
    """

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(message)


def _one_line(text: object) -> str:
    """A message on one line (error messages are one line by contract; make sure of it)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return " ".join(lines)


def _numbers(value: str, what: str, form: str, counts: Tuple[int, ...]) -> List[float]:
    """Comma-separated finite numbers, as many as one of ``counts``; else a message naming ``value``."""
    parts = [p.strip() for p in value.split(",")]
    bad = f"invalid {what} {value!r}: expected {form}"
    if len(parts) not in counts or any(p == "" for p in parts):
        raise argparse.ArgumentTypeError(bad)
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(bad + " with numbers") from None
    if not all(math.isfinite(n) for n in nums):
        raise argparse.ArgumentTypeError(f"invalid {what} {value!r}: coordinates must be finite numbers")
    return nums


def parse_point(value: str) -> Tuple[float, float, int]:
    """``X,Y`` or ``X,Y,LABEL`` (LABEL 1 = foreground, the default; 0 = background)."""
    nums = _numbers(value, "point", "X,Y or X,Y,LABEL", (2, 3))
    label = 1
    if len(nums) == 3:
        if nums[2] not in (0.0, 1.0):
            raise argparse.ArgumentTypeError(
                f"invalid point {value!r}: LABEL must be 1 (foreground) or 0 (background)"
            )
        label = int(nums[2])
    return nums[0], nums[1], label


def parse_box(value: str) -> Tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` with ``X1 >= X0`` and ``Y1 >= Y0``."""
    x0, y0, x1, y1 = _numbers(value, "box", "X0,Y0,X1,Y1", (4,))
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(
            f"invalid box {value!r}: needs X1 >= X0 and Y1 >= Y0 (corners are top-left, bottom-right)"
        )
    return x0, y0, x1, y1


def parse_resolution(value: str) -> int:
    """A positive integer of at least :data:`MIN_RESOLUTION` px."""
    try:
        r = int(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be a positive integer, got {value!r}") from None
    if r <= 0:
        raise argparse.ArgumentTypeError(f"resolution must be a positive integer, got {value!r}")
    if r < MIN_RESOLUTION:
        raise argparse.ArgumentTypeError(f"resolution must be at least {MIN_RESOLUTION} px, got {r}")
    return r


def parse_beta(value: str) -> float:
    try:
        b = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"beta must be a number >= 0, got {value!r}") from None
    if not math.isfinite(b) or b < 0:
        raise argparse.ArgumentTypeError(f"beta must be a finite number >= 0, got {value!r}")
    return b


def parse_device(value: str) -> str:
    v = value.strip().lower()
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise argparse.ArgumentTypeError(f"device must be cpu, cuda, cuda:N or auto, got {value!r}")


def parse_architecture(value: str) -> dict:
    try:
        arch = json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--architecture is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(arch, dict):
        raise argparse.ArgumentTypeError(f"--architecture must be a JSON object, got {value!r}")
    return arch


# ----------------------------------------------------------------------------------------------
# segment


def _add_segment_parser(subparsers) -> argparse.ArgumentParser:
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
    g.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME",
                   help="registry name: sam_vit_b|l|h, mobile_sam, sam_hq_vit_b|l|h|tiny (default: %(default)s)")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="weights file (.pth/.pt/.safetensors); default: download the official one once")
    g.add_argument("--resolution", metavar="R", type=parse_resolution, default=None,
                   help="working resolution, the longest side in px (>= 64; default: the model's own, 1024)")
    g.add_argument("--attention", choices=ATTENTION_PRESETS, default=None,
                   help="attention preset: vanilla (SAM), nsf (new scaling factor), basam (NSF + bias-mode mask); "
                        "default: what a basam checkpoint records, else vanilla")
    g.add_argument("--beta", metavar="B", type=parse_beta, default=None,
                   help="BA-SAM slope scale (default 1.0; only used with --attention basam)")
    g.add_argument("--dist", choices=ATTENTION_DISTANCES, default=None,
                   help="BA-SAM token distance (default manhattan; only used with --attention basam)")
    g.add_argument("--hq-token-only", action="store_true",
                   help="HQ-SAM models: the mask from the HQ token alone")
    g.add_argument("--device", metavar="DEVICE", type=parse_device, default="auto",
                   help="cpu, cuda, cuda:N or auto (cuda if available; default)")
    g.add_argument("--architecture", metavar="JSON", type=parse_architecture, default=None,
                   help="(testing) override the architecture, e.g. '{\"embed_dim\": 64, \"depth\": 4}'")

    g = p.add_argument_group("output")
    g.add_argument("--multimask", action="store_true",
                   help="write SAM's 3 candidate masks as <out stem>_0.png, _1.png, _2.png")
    g.add_argument("--out", metavar="PATH.png", default=None,
                   help="mask PNG (default: <image stem>_mask.png in the current directory)")
    g.add_argument("--overlay", metavar="PATH", default=None,
                   help="also write the masks and prompts drawn over the image (.png, .jpg, .jpeg)")
    g.add_argument("-q", "--quiet", action="store_true", help="no timing or notes on stderr")
    p.set_defaults(func=run_segment)
    return p


def _note(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return name


def _check_architecture(name: str, arch: Optional[dict]) -> Optional[dict]:
    """Validate ``--architecture`` keys against the model's spec; JSON lists become tuples."""
    if not arch:
        return None
    from .models.registry import DecoderConfig, get_spec

    spec = get_spec(name)
    encoder_fields = {f.name for f in dataclasses.fields(spec.encoder)}
    allowed = encoder_fields | {"img_size", "decoder", "hq"}
    bad = sorted(set(arch) - allowed)
    if bad:
        raise InputError(
            f"--architecture: unknown field(s) {', '.join(bad)} for {name}; allowed: {', '.join(sorted(allowed))}"
        )
    out: dict = {}
    for key, val in arch.items():
        if key == "decoder":
            if not isinstance(val, dict):
                raise InputError("--architecture: 'decoder' must be a JSON object")
            dec_fields = {f.name for f in dataclasses.fields(DecoderConfig)}
            bad = sorted(set(val) - dec_fields)
            if bad:
                raise InputError(f"--architecture: unknown decoder field(s) {', '.join(bad)}")
            val = DecoderConfig(**val)
        elif isinstance(val, list):
            val = tuple(val)
        out[key] = val
    return out


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


def _check_prompts(points, box, width: int, height: int) -> None:
    """Prompts inside the ``width`` x ``height`` image (the Predictor's rule: 0 <= x <= W)."""
    for x, y, _ in points:
        if not (0 <= x <= width and 0 <= y <= height):
            raise InputError(f"point ({x:g}, {y:g}) is outside the {width}x{height} image")
    if box is not None:
        x0, y0, x1, y1 = box
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise InputError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the {width}x{height} image")


def _describe_attention(config) -> str:
    name = config.preset_name or "custom"
    if config.bias:
        return f"{name} (beta {config.beta:g}, dist {config.dist})"
    return name


def run_segment(args: argparse.Namespace) -> int:
    # 1. Arguments that need no file and no torch.
    if len(args.box) > 1:
        raise InputError(f"only one --box is allowed, got {len(args.box)}")
    box = args.box[0] if args.box else None
    points = list(args.point)
    if not points and box is None:
        raise InputError("no prompt given: pass at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")

    from .attention import AttentionConfig
    from .models.registry import get_spec

    spec = get_spec(args.model)  # unknown name -> the message lists the valid ones
    arch = _check_architecture(args.model, args.architecture)
    overrides = {k: v for k, v in {"beta": args.beta, "dist": args.dist}.items() if v is not None}
    # No --attention: the checkpoint's own config (a fine-tuned basam file), else vanilla.
    config = AttentionConfig.from_preset(args.attention, **overrides) if args.attention else None
    if overrides and config is not None and not config.bias:
        _note(args, f"note: --beta/--dist only act with --attention basam; ignored with --attention {args.attention}")
    is_hq = bool(arch.get("hq", spec.hq)) if arch else spec.hq
    if args.hq_token_only and not is_hq:
        raise InputError(f"--hq-token-only applies to sam_hq_* models, not {args.model}")
    device = _resolve_device(args.device)

    # 2. Files: outputs writable, image readable, prompts inside it.
    from . import io as bio

    image_path = Path(args.image)
    out, mask_paths, overlay = _output_paths(args, image_path)
    image = bio.read_image(image_path)
    height, width = image.shape[:2]
    _check_prompts(points, box, width, height)

    # 3. Model (reads and checks the checkpoint strictly).
    from .load import load_model
    from .predictor import Predictor

    model = load_model(
        args.model, checkpoint=args.checkpoint, attention=config, device=device,
        progress=not args.quiet, architecture=arch, **({} if config is not None else overrides),
    )
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
    if predictor.device.type == "cuda":
        torch.cuda.synchronize(predictor.device)
    _note(args, f"encoded in {time.perf_counter() - start:.2f} s")

    coords = np.array([[x, y] for x, y, _ in points], dtype=float) if points else None
    labels = np.array([label for _, _, label in points], dtype=np.int64) if points else None
    box_arr = np.array(box, dtype=float) if box is not None else None
    masks, scores, _ = predictor.predict(
        point_coords=coords, point_labels=labels, box=box_arr,
        multimask_output=args.multimask, hq_token_only=True if args.hq_token_only else None,
    )
    if masks.shape[0] != len(mask_paths):  # a model that returned another number of masks
        mask_paths = [out] if masks.shape[0] == 1 else [
            out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(masks.shape[0])
        ]

    # 5. Write: all masks (all or nothing), then the overlay; undo new masks if the overlay fails.
    existed = {p for p in mask_paths if p.exists()}
    written = bio.save_masks(out, masks)
    if overlay is not None:
        try:
            bio.save_overlay(overlay, image, masks, points=coords, point_labels=labels,
                             boxes=box_arr[None] if box_arr is not None else None)
        except BaseException:
            for p in written:
                if p not in existed:
                    try:
                        p.unlink()
                    except OSError:
                        pass
            raise

    for i, (score, path) in enumerate(zip(scores, written)):
        print(f"mask {i}: predicted IoU {float(score):.3f}  -> {path}")
    if overlay is not None:
        print(f"overlay  -> {overlay}")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# Entry point

#: Subcommand name -> function adding its parser (which sets ``func``). Further subcommands
#: (``evaluate``, ``train``, ``bench``) register here.
def _add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    from .evaluate import add_parser

    return add_parser(subparsers)


def _add_evaluate_coco_parser(subparsers) -> argparse.ArgumentParser:
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
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME", help="registry name (default: %(default)s)")
    p.add_argument("--checkpoint", metavar="PATH", help="weights file; default: the official download")
    p.add_argument("--resolution", type=parse_resolution, default=None, help="working resolution (default: the model's own)")
    p.add_argument("--attention", choices=ATTENTION_PRESETS, default="vanilla", help="attention preset (default: vanilla)")
    p.add_argument("--beta", type=parse_beta, default=None, help="BA-SAM slope scale (default 1.0)")
    p.add_argument("--dist", choices=ATTENTION_DISTANCES, default=None, help="BA-SAM distance (default manhattan)")
    p.add_argument("--hq-token-only", action="store_true", default=None, help="HQ-SAM: the HQ token's mask alone")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="only the first N images")
    p.add_argument("--device", type=parse_device, default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--architecture", type=parse_architecture, default=None, help="(testing) override the architecture")
    p.add_argument("--out", metavar="JSON", default=None, help="also write the AP summary here (and the masks as RLE results beside it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_evaluate_coco)
    return p


def run_evaluate_coco(args: argparse.Namespace) -> int:
    from .coco import STAT_KEYS, evaluate_coco
    from .io import atomic_write
    from .load import load_model
    from .predictor import Predictor

    if args.max_images is not None and args.max_images <= 0:
        raise InputError(f"--max-images must be positive, got {args.max_images}")
    out = Path(args.out) if args.out else None
    if out is not None and (out.suffix.lower() != ".json" or not out.parent.is_dir()):
        raise InputError(f"--out must be a .json file in an existing folder, got {args.out!r}")
    device = _resolve_device(args.device)
    overrides = {k: getattr(args, k) for k in ("beta", "dist") if getattr(args, k) is not None}
    model = load_model(args.model, checkpoint=args.checkpoint, attention=args.attention, device=device,
                       architecture=_check_architecture(args.model, args.architecture), **overrides)
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


def _add_train_parser(subparsers) -> argparse.ArgumentParser:
    from .train import add_parser

    return add_parser(subparsers)


def _add_bench_parser(subparsers) -> argparse.ArgumentParser:
    from .bench import add_parser

    return add_parser(subparsers)


COMMANDS: Dict[str, Callable[[object], argparse.ArgumentParser]] = {
    "segment": _add_segment_parser,
    "evaluate": _add_evaluate_parser,
    "evaluate-coco": _add_evaluate_coco_parser,
    "train": _add_train_parser,
    "bench": _add_bench_parser,
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Segment Anything at any resolution, with BA-SAM attention.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for add in COMMANDS.values():
        add(sub)
    return parser


def _error(message: object) -> int:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help / --version: argparse printed and wants to exit
            code = e.code
            return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
        try:
            return args.func(args)
        except _out_of_memory_errors() as e:
            print(
                f"{PROG}: error: out of memory ({type(e).__name__}); try a lower --resolution "
                f"or --device cpu",
                file=sys.stderr, flush=True,
            )
            return EXIT_RESOURCE
    except BasamError as e:
        return _error(e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def _out_of_memory_errors() -> tuple:
    errors: list = [MemoryError]
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if isinstance(oom, type):
        errors.append(oom)
    return tuple(errors)


if __name__ == "__main__":
    sys.exit(main())
