"""The ``basam`` command line: a dispatcher over one small module per subcommand.

Each subcommand module (``segment``, ``evaluate``, ``evaluate_coco``, ``train``, ``bench``, ...)
has ``add_parser(subparsers)`` and ``run(args) -> int``: it parses, checks what can be checked
before any work, and calls the library (``basam.evaluate``, ``basam.train``, ...), which never
imports from here. Shared option groups and value parsers live in :mod:`.options`.

Conventions shared by every subcommand:

* Results go to stdout with ``print``; progress and timing go to stderr (silenced by ``--quiet``).
* Every :class:`~basam.errors.BasamError` and every usage error becomes exactly one line
  ``basam: error: <message>`` on stderr and exit code 2, with no traceback. Everything that can be
  checked (arguments, image, prompts, output paths, model name, checkpoint) is checked before any
  file is written, and the writers are atomic, so a failed run leaves no output behind.
* Ctrl-C exits with 130 and one line. Running out of memory gets one line of advice that fits the
  device and exit code 1. Any other exception is a bug and propagates with its traceback.
* ``basam --help`` imports no torch (tested): modules are imported when their command runs.

:func:`main` takes ``argv`` and returns the exit code, so tests can call it in-process.
"""

from __future__ import annotations

import importlib
import sys
from typing import Dict, Optional, Sequence

from ..errors import BasamError
from .options import (
    EXIT_INTERRUPTED, EXIT_RESOURCE, EXIT_USAGE, PROG, Parser, UsageError, one_line, out_of_memory_errors,
    out_of_memory_message,
)

__all__ = ["main", "build_parser", "UsageError", "COMMANDS"]

#: subcommand -> the module (in this package) with its ``add_parser`` and ``run``
COMMANDS: Dict[str, str] = {
    "segment": "segment",
    "evaluate": "evaluate",
    "evaluate-coco": "evaluate_coco",
    "train": "train",
    "bench": "bench",
    "amg": "amg",
    "export": "export",
    "app": "app",
}


def build_parser() -> Parser:
    from .. import __version__

    parser = Parser(prog=PROG, description="Segment Anything at any resolution, with BA-SAM attention.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for module in COMMANDS.values():
        importlib.import_module(f".{module}", __name__).add_parser(sub)
    return parser


def _error(message: object) -> int:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    import warnings

    from ..errors import BasamNote

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        # A BasamNote (something to know once, e.g. which mask a model can give) is one line.
        if issubclass(category, BasamNote):
            print(f"{PROG}: note: {one_line(message)}", file=sys.stderr, flush=True)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        return _main(argv)
    finally:
        warnings.showwarning = previous


def _main(argv: Optional[Sequence[str]]) -> int:
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help / --version: argparse printed and wants to exit
            code = e.code
            return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
        try:
            return args.func(args)
        except out_of_memory_errors() as e:
            print(f"{PROG}: error: {out_of_memory_message(e, _device_of(args))}", file=sys.stderr, flush=True)
            return EXIT_RESOURCE
    except BasamError as e:
        return _error(e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def _device_of(args) -> str:
    """The device the command ran on (``auto`` resolved the way :func:`.options.resolve_device` does)."""
    device = str(getattr(args, "device", "cpu") or "cpu")
    if device == "auto":
        torch = sys.modules.get("torch")
        device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    return device
