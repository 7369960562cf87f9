"""``basam app``: serve the interactive page (:mod:`basam.app`) on 127.0.0.1 with uvicorn."""

from __future__ import annotations

import argparse
import socket
import sys

from ..errors import InputError
from .options import (
    EXIT_OK, add_attention_options, add_device_options, add_model_options, parse_resolution, require_extra,
    resolve_device,
)

DEFAULT_PORT = 7860
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer in 0..65535, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be an integer in 0..65535, got {value!r}")
    return port


def _memory(value: str):
    from ..memory import parse_memory

    try:
        return parse_memory(value)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "app",
        help="a local web page: click to segment, switch models, resolutions and presets",
        description=(
            "Serve an interactive page on this machine (default http://127.0.0.1:7860/).\n"
            "Open an image, left click for a foreground point, right click for a background point,\n"
            "drag for a box; the image is encoded once per (model, resolution, preset) and every\n"
            "click is one decoder call. Offline by default with basam_tiny."
        ),
        epilog=(
            "examples:\n"
            "  basam app\n"
            "  basam app --model mobile_sam --checkpoint mobile_sam.pt --attention basam --port 8000\n"
            "  basam app --model sam_vit_b --download --device cuda --max-memory 20G"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: only this machine can open the page)")
    g.add_argument("--port", type=_port, default=DEFAULT_PORT, help="port (default %(default)s; 0 picks a free one)")
    g.add_argument("--max-memory", metavar="SIZE", type=_memory, default=None,
                   help="refuse an image and resolution whose estimated memory exceeds SIZE (e.g. 8G); "
                        "default: what the device has free")
    g.add_argument("--no-paths", action="store_true",
                   help="do not let the page open files on this machine by path (uploads only)")
    g = p.add_argument_group("model")
    add_model_options(g, architecture=False, hq_token_only=False, model_default="basam_tiny",
                      checkpoint_help="weights for --model (default: bundled for basam_tiny, else the cached official file)")
    g.add_argument("--download", action="store_true",
                   help="offer every model and download official checkpoints on first use (default: offline)")
    g.add_argument("--resolution", metavar="R", type=parse_resolution, default=None,
                   help="the page's initial resolution (default: the model's own)")
    add_attention_options(g, attention_help="initial attention preset (default: what the checkpoint records, else vanilla)")
    add_device_options(g)
    p.set_defaults(func=run)
    return p


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a port in use is one clear line, not a uvicorn log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    require_extra("app", "app")
    from ..models.registry import get_spec

    get_spec(args.model)  # an unknown name: one line listing the valid ones
    device = resolve_device(args.device)
    loopback = args.host in _LOOPBACK
    allow_paths = not args.no_paths and loopback
    if not loopback:
        print(f"basam app: warning: --host {args.host} lets other machines open the page; opening files by path "
              "is off", file=sys.stderr, flush=True)
    sock = _bind(args.host, args.port)
    try:
        import uvicorn

        from ..app.server import LOOPBACK_HOSTS, create_app

        app = create_app(
            model=args.model, checkpoint=args.checkpoint, device=device, attention=args.attention,
            beta=args.beta, dist=args.dist, resolution=args.resolution, max_memory=args.max_memory,
            allow_paths=allow_paths, download=args.download,
            allowed_hosts=LOOPBACK_HOSTS if loopback else None,
        )
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"basam app: serving {args.model} on http://{shown}:{port}/ (Ctrl-C to stop)", flush=True)
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return EXIT_OK
