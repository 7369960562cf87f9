"""Training losses: BCE + Dice on the mask logits, MSE on the IoU head.

Resolution: the decoder's low-resolution logits (B, M, R/4, R/4) are upsampled bilinearly to the
padded input side (exactly as :meth:`basam.Sam.postprocess_masks` does), cropped to R x R, and
compared with the ground truth at the full training resolution R. Scoring at R (rather than
downsampling the mask to R/4) is what the evaluation does and keeps thin structures and
boundaries in the loss, at the cost of (M x R x R) logits per sample.

Per sample and per candidate mask m:

* ``bce_m``: mean binary cross-entropy over pixels;
* ``dice_m``: ``1 - (2 sum(p g) + 1) / (sum p + sum g + 1)`` with ``p = sigmoid(logit)``;
* ``iou_m``: the IoU of the binarised candidate (logit > 0) with the ground truth (no gradient),
  the target of the IoU head's prediction ``iou_pred_m``.

Several candidates (SAM's multimask output for one-point prompts): only the candidate with the
lowest mask loss ``bce_weight * bce + dice_weight * dice`` is back-propagated (SAM's rule for
ambiguous prompts), while the IoU head is supervised on every candidate (each prediction learns its
own mask's IoU, which is what lets it rank them at inference). One candidate: that one.

Sample loss = ``mask loss of the chosen candidate + iou_weight * mean_m (iou_pred_m - iou_m)^2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossWeights", "upsample_logits", "mask_losses", "sample_losses"]


@dataclass(frozen=True)
class LossWeights:
    bce: float = 1.0
    dice: float = 1.0
    iou: float = 1.0


def upsample_logits(low_res: Tensor, padded: int, size: int) -> Tensor:
    """(B, M, h, w) low-res logits -> (B, M, size, size): upsample to the padded side, crop."""
    up = F.interpolate(low_res.float(), (padded, padded), mode="bilinear", align_corners=False)
    return up[..., :size, :size]


def mask_losses(logits: Tensor, gt: Tensor) -> Dict[str, Tensor]:
    """Per-candidate BCE, Dice and actual IoU. ``logits`` (B, M, H, W), ``gt`` (B, H, W) bool."""
    target = gt[:, None].float().expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(-1)
    prob = logits.sigmoid().flatten(2)
    t = target.flatten(2)
    dice = 1.0 - (2.0 * (prob * t).sum(-1) + 1.0) / (prob.sum(-1) + t.sum(-1) + 1.0)
    with torch.no_grad():
        pred = (logits > 0).flatten(2)
        tb = t > 0.5
        inter = (pred & tb).sum(-1).float()
        union = (pred | tb).sum(-1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return {"bce": bce, "dice": dice, "iou": iou}


def sample_losses(logits: Tensor, iou_pred: Tensor, gt: Tensor, weights: LossWeights) -> Dict[str, Tensor]:
    """Per-sample losses (each (B,)): ``loss``, ``bce``, ``dice``, ``iou_mse`` and the ``chosen``
    candidate index (see the module doc)."""
    parts = mask_losses(logits, gt)
    mask_loss = weights.bce * parts["bce"] + weights.dice * parts["dice"]  # (B, M)
    chosen = mask_loss.detach().argmin(dim=1)
    pick = lambda t: t.gather(1, chosen[:, None])[:, 0]  # noqa: E731
    iou_mse = ((iou_pred.float() - parts["iou"]) ** 2).mean(dim=1)
    return {
        "loss": pick(mask_loss) + weights.iou * iou_mse,
        "bce": pick(parts["bce"]).detach(),
        "dice": pick(parts["dice"]).detach(),
        "iou_mse": iou_mse.detach(),
        "chosen": chosen,
    }
