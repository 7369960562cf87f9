"""``basam train``: fine-tune or train a model (``basam.train`` does the work)."""

from __future__ import annotations

import argparse

from .options import require_extra

EXAMPLES = """examples:
  basam train --data DUTS-TR/ --data DIS5K/:dis5k@2 --val-data DUTS-TE/ --model sam_vit_b \\
      --checkpoint sam_vit_b_01ec64.pth --attention basam --beta 0.1 --train slopes --resolution 1024 \\
      --steps 2000 --batch-size 4 --lr 1e-3 --out runs/slopes
  basam train --config my.yaml --lr 3e-4                 # YAML keys = flags; flags win
  basam train --recipe example --data DUTS-TR/ --out runs/example
  torchrun --standalone --nproc_per_node 4 -m basam.train --config my.yaml   # DDP
  basam train --config my.yaml --resume                  # continue OUT/checkpoints/latest exactly"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..train.config import add_options

    p = subparsers.add_parser(
        "train",
        help="fine-tune or train a model (BA-SAM slopes, decoder, HQ modules or everything)",
        description="Train a SAM-family model on image/mask datasets. Every option is also a YAML key\n"
                    "(--config FILE, --recipe NAME); flags override the YAML. Under torchrun: DDP.\n"
                    "Refused in one line (exit 2) before training: an --out that is a file or cannot be written,\n"
                    "an --out holding a run without --resume, a --resume with other run-defining settings (data\n"
                    "folders compare as resolved paths). A full disk later is one line too; checkpoints stay whole.\n"
                    "--resume with no checkpoint in --out says so once on stderr and starts from step 0.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    require_extra("train", "train")
    from ..train import run as train
    from ..train.config import config_from_args

    summary = train(config_from_args(args))
    if summary:
        val = summary.get("val") or {}
        vtxt = "  ".join(f"{name}: IoU {s['iou']:.4f} MAE {s['mae']:.4f}" for name, s in val.items())
        print(f"trained to step {summary['step']} ({summary['trainable_params']} trainable parameters) in "
              f"{summary['seconds']:.1f} s; checkpoint {summary['checkpoint']}" + (f"; validation {vtxt}" if vtxt else ""), flush=True)
    return 0
