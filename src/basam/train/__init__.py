"""``basam train``: fine-tune (or train from scratch) any registry model with BA-SAM attention.

::

    basam train --data DUTS-TR/ --data DIS5K/:dis5k@2 --val-data DUTS-TE/ --model sam_vit_b \\
        --checkpoint sam_vit_b_01ec64.pth --attention basam --beta 0.1 --train slopes --resolution 1024 \\
        --steps 2000 --batch-size 4 --lr 1e-3 --out runs/slopes
    basam train --config my.yaml --lr 3e-4          # YAML keys = flags; flags win
    basam train --recipe example --data ... --out ...
    torchrun --standalone --nproc_per_node 4 -m basam.train --config my.yaml   # DDP, one process per GPU
    basam train --config my.yaml --resume           # continue OUT/checkpoints/latest exactly

Pieces (one module each): :mod:`.config` (options, YAML), :mod:`.freeze` (``--train`` policies),
:mod:`.data` (weighted multi-dataset stream, augmentation, prompts), :mod:`.losses` (BCE + Dice +
IoU MSE), :mod:`.checkpointing` (atomic checkpoints, RNG state, :func:`load_trained`),
:mod:`.trainer` (the loop, DDP, validation, logging).

Output folder::

    config.yaml                 the resolved settings
    log.jsonl                   one JSON line per log step (loss, bce, dice, iou_mse, lr, grad_norm,
                                slopes per layer) and per validation ({"step", "val": {dataset: metrics}})
    tensorboard/                train/*, val/<dataset>/*, slopes/<layer>/head<h>
    checkpoints/step_<N>/       model.safetensors + state.pt; checkpoints/latest names the newest

The trained model loads for inference with :func:`load_trained` (attention, architecture and HQ
fusion from the file's metadata) or ``basam.load_model(name, checkpoint=".../model.safetensors",
attention=..., architecture=..., hq_fusion=...)``.
"""

from __future__ import annotations

from .config import TrainConfig, config_from_args, resolve_config

__all__ = ["TrainConfig", "load_trained", "resolve_config", "run"]


def load_trained(path, device=None, **overrides):
    """Load a ``basam train`` checkpoint for inference (see :func:`.checkpointing.load_trained`)."""
    from .checkpointing import load_trained as _load

    return _load(path, device=device, **overrides)


def run(cfg: TrainConfig) -> dict:
    """Train as ``cfg`` says (see :func:`basam.train.trainer.run`)."""
    from .trainer import run as _run

    return _run(cfg)
