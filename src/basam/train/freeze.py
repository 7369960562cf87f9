"""Freeze policies: which parameters a run trains (``--train``), and the train/eval modes that
keep frozen parts bit-identical.

======== ==========================================================================================
policy   parameters that require grad
======== ==========================================================================================
slopes   the BA-SAM head slopes only (``*.bam.slopes``); needs attention with the bias-mode mask
         on (``--attention basam``).
decoder  ``mask_decoder.*``: SAM's mask decoder (two-way transformer, output tokens, upscaling,
         hypernetwork MLPs, IoU head; for HQ-SAM also its HQ modules). The prompt encoder stays
         frozen, as in SAM/HQ-SAM fine-tuning practice: its embeddings are shared by every prompt
         kind and cheap to disturb.
hq       HQ-SAM's own policy: ``hf_token``, ``hf_mlp``, ``compress_vit_feat``,
         ``embedding_encoder``, ``embedding_maskfeature`` of the mask decoder (HQ models only).
full     every parameter.
======== ==========================================================================================

Policies combine with ``+`` (``decoder+slopes``). Slopes require grad exactly when the policy
includes ``slopes`` or ``full`` and the bias-mode mask is on.

Modes: :func:`set_train_mode` puts the model in train mode except modules all of whose parameters
are frozen and that behave differently in train mode: BatchNorm layers (TinyViT's) use and update
batch statistics in train mode, so a frozen BatchNorm is put in eval mode and its running
statistics never move. (SAM's ViT has no BatchNorm and no dropout, so for it modes do not matter.)
"""

from __future__ import annotations

from typing import Iterable, List, Set

from torch import nn

from ..errors import InputError

__all__ = ["HQ_MODULES", "trainable_parameter_names", "apply_policy", "set_train_mode", "policy_parts"]

#: HQ-SAM's trainable modules (its official training script's policy), under ``mask_decoder.``.
HQ_MODULES = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")


def policy_parts(policy: str) -> Set[str]:
    return {p.strip() for p in policy.split("+") if p.strip()}


def _bias_on(model: nn.Module) -> bool:
    cfg = getattr(model, "attention_config", None)
    return bool(cfg is not None and cfg.bias)


def trainable_parameter_names(model: nn.Module, policy: str) -> List[str]:
    """The names (``model.named_parameters()`` order) that ``policy`` trains.

    Raises:
        InputError: ``hq`` on a model without HQ-SAM's decoder; ``slopes`` (alone) on a model
            whose attention has the bias-mode mask off; an unknown policy.
    """
    parts = policy_parts(policy)
    unknown = parts - {"slopes", "decoder", "hq", "full"}
    if unknown or not parts:
        raise InputError(f"unknown training policy {policy!r}; choose slopes, decoder, hq, full or a + of them")
    name = getattr(model, "name", type(model).__name__)
    is_hq = bool(getattr(model, "is_hq", False))
    if "hq" in parts and not is_hq:
        raise InputError(f"--train hq trains HQ-SAM's own modules, but {name} has no HQ decoder; use a sam_hq_* model "
                         "or --train decoder")
    if "slopes" in parts and not _bias_on(model):
        preset = getattr(getattr(model, "attention_config", None), "preset_name", None) or "this attention"
        raise InputError(f"--train slopes needs the bias-mode mask (--attention basam), but the model runs {preset}: "
                         "there are no slopes in use to train")
    names = []
    for n, _ in model.named_parameters():
        is_slope = n.endswith(".bam.slopes")
        if is_slope:
            take = _bias_on(model) and bool(parts & {"slopes", "full"})
        elif "full" in parts:
            take = True
        elif "decoder" in parts and n.startswith("mask_decoder."):
            take = True
        elif "hq" in parts and any(n.startswith(f"mask_decoder.{m}.") for m in HQ_MODULES):
            take = True
        else:
            take = False
        if take:
            names.append(n)
    if not names:
        raise InputError(f"--train {policy} trains no parameter of {name}")
    return names


def apply_policy(model: nn.Module, policy: str) -> List[str]:
    """Set ``requires_grad`` per ``policy`` on every parameter; returns the trainable names."""
    names = trainable_parameter_names(model, policy)
    keep = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    set_train_mode(model)
    return names


def _all_frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters(recurse=False))


def set_train_mode(model: nn.Module, frozen_modules: Iterable[nn.Module] = ()) -> None:
    """``model.train()``, then eval mode for every BatchNorm whose parameters are frozen (so its
    running statistics stay as loaded) and for ``frozen_modules``."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and _all_frozen(m):
            m.eval()
    for m in frozen_modules:
        m.eval()
