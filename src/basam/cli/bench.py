"""``basam bench``: parameters, speed and peak memory (``basam.bench`` does the work)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Tuple

from ..attention_config import PRESETS
from ..constants import BENCH_DTYPES, BENCH_PARTS
from ..errors import InputError
from .options import add_device_options, parse_resolution, require_extra, resolve_device


def _bool_modes(value: str) -> List[bool]:
    modes = {"off": [False], "on": [True], "both": [False, True]}
    if value not in modes:
        raise InputError(f"takes off, on or both, got {value!r}")
    return modes[value]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="parameters, speed and peak memory of the encoder / predictor, optionally against the official code",
        description="Measure parameters, time per image and peak memory of the image encoder and of the whole\n"
                    "predictor (encode + one point prompt) at the given resolutions, dtypes and attention presets.\n"
                    "--baseline official runs the official implementation on the same random weights in the same run.",
        epilog="examples:\n"
               "  basam bench --model sam_vit_b --resolution 1024 2048 --dtype bf16 --baseline official\n"
               "  basam bench --model mobile_sam --resolution 1024 --device cpu --baseline official --iters 3\n"
               "  basam bench --model sam_vit_b --part encoder predictor --compile both --json bench.json --plot bench.png\n"
               "  basam bench --model sam_vit_b --part amg --baseline official --device cpu --points-per-side 8 --iters 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", nargs="+", default=["sam_vit_b"], metavar="NAME", help="registry names (default: sam_vit_b)")
    p.add_argument("--resolution", nargs="+", type=parse_resolution, default=[1024], metavar="PX", help="longest sides (default 1024)")
    p.add_argument("--dtype", nargs="+", choices=BENCH_DTYPES, default=None, help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--attention", nargs="+", choices=tuple(PRESETS), default=["vanilla", "basam"],
                   help="attention presets for basam (default: vanilla basam)")
    p.add_argument("--part", nargs="+", choices=BENCH_PARTS, default=["encoder"],
                   help="what to time (default: encoder; amg: the whole automatic mask generator)")
    p.add_argument("--points-per-side", type=int, default=32, metavar="N",
                   help="--part amg: the N x N point grid of both generators (default 32, the official default)")
    p.add_argument("--compile", default="off", choices=["off", "on", "both"], help="torch.compile the encoder (default off)")
    p.add_argument("--cuda-graph", default="off", choices=["off", "on", "both"],
                   help="replay basam's encoder from a captured CUDA graph (default off)")
    p.add_argument("--baseline", choices=["official"], default=None, help="also run the official implementation")
    p.add_argument("--autocast", action="store_true", help="keep fp32 weights and run under autocast (default: cast the weights)")
    p.add_argument("--checkpoint", metavar="PATH", default=None, help="basam weights to load (default: random weights)")
    p.add_argument("--batch", type=int, default=1, help="images per encoder call (default 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed calls; the median is reported (default 20 on CUDA, 3 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    add_device_options(p)
    p.add_argument("--json", metavar="PATH", default=None, help="write every figure and the environment here")
    p.add_argument("--plot", metavar="PATH", default=None, help="plot time and memory against resolution (.png/.svg/.pdf)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _check_out(path: Optional[str], suffixes: Tuple[str, ...], flag: str) -> Optional[Path]:
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise InputError(f"{flag} must end in {' or '.join(suffixes)}, got {path!r}")
    if not p.parent.is_dir():
        raise InputError(f"{flag}: folder {str(p.parent)!r} does not exist")
    if p.is_dir():
        raise InputError(f"{flag}: {path!r} is a folder")
    return p


def run(args) -> int:
    import torch

    from ..bench import environment, format_table, plot_results, run_bench, write_json
    from ..models.registry import get_spec

    for m in args.model:
        get_spec(m)
    json_path = _check_out(args.json, (".json",), "--json")
    plot_path = _check_out(args.plot, (".png", ".svg", ".pdf"), "--plot")
    if plot_path is not None:
        require_extra("eval", "bench --plot")
    if "amg" in args.part:
        require_extra("amg", "bench --part amg")
        if args.points_per_side < 1:
            raise InputError(f"--points-per-side must be at least 1, got {args.points_per_side}")
    if args.batch < 1:
        raise InputError(f"--batch must be at least 1, got {args.batch}")
    if args.iters is not None and args.iters < 1:
        raise InputError(f"--iters must be at least 1, got {args.iters}")
    if args.warmup is not None and args.warmup < 1:
        raise InputError(f"--warmup must be at least 1, got {args.warmup}")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    cuda = device.type == "cuda"
    dtypes = args.dtype or (["bf16"] if cuda else ["fp32"])
    args.warmup = args.warmup or (3 if cuda else 1)
    args.iters = args.iters or (20 if cuda else 3)
    args.dtype = dtypes
    results = run_bench(
        args.model, args.resolution, dtypes=dtypes, presets=args.attention, parts=args.part,
        compile_modes=_bool_modes(args.compile), graph_modes=_bool_modes(args.cuda_graph), baseline=args.baseline, device=device,
        warmup=args.warmup, iters=args.iters, batch=args.batch,
        autocast=args.autocast, checkpoint=args.checkpoint, progress=not args.quiet,
        amg_points_per_side=args.points_per_side,
    )
    env = environment()
    print(f"device {device}  " + "  ".join(f"{k} {v}" for k, v in env.items()))
    print(format_table(results))
    for r in results:  # amg: how much work each generator did (same weights -> same masks)
        if r.case.part == "amg" and r.status == "ok":
            ratio = r.extra.get("time_vs_official")
            print(f"amg {r.case.impl} {r.case.model} {r.case.preset} {r.case.resolution}px {r.extra['image']}: "
                  f"{r.extra['points_per_side']}x{r.extra['points_per_side']} points, {r.extra['masks']} masks, "
                  f"{r.extra['s_per_image']:.2f} s/image" + ("" if ratio is None else f", x{ratio:.3f} official"))
    meta = {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(args).items() if k != "func"}
    if json_path is not None:
        write_json(json_path, results, meta)
    if plot_path is not None:
        plot_results(results, plot_path)
    return 0
