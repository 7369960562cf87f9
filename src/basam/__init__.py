"""basam: Segment Anything at any resolution, with BA-SAM attention.

Quick start::

    import basam
    model = basam.load_model("mobile_sam", checkpoint="mobile_sam.pt", attention="basam")
    predictor = basam.Predictor(model, resolution=2048)
    predictor.set_image(image)                      # HxWx3 uint8 RGB
    masks, scores, logits = predictor.predict(point_coords=[[500, 375]], point_labels=[1])

The public names are imported on first use (PEP 562), so that ``import basam`` and ``basam --help``
do not pay for importing torch; ``basam.X`` works as an ordinary attribute.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import BasamError, CheckpointError, InputError

__version__ = "0.1.0"

#: public name -> the module that defines it
_LAZY = {
    "PRESETS": ".attention_config",
    "AttentionConfig": ".attention_config",
    "set_attention": ".attention",
    "save_model": ".checkpoint",
    "load_model": ".load",
    "load_weights_into": ".load",
    "Sam": ".models",
    "create_model": ".models",
    "list_models": ".models",
    "Predictor": ".predictor",
    "Sam2Predictor": ".sam2_predictor",
    "AutomaticMaskGenerator": ".amg",
}

__all__ = ["BasamError", "CheckpointError", "InputError", "__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'basam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .amg import AutomaticMaskGenerator
    from .attention import set_attention
    from .attention_config import PRESETS, AttentionConfig
    from .checkpoint import save_model
    from .load import load_model, load_weights_into
    from .models import Sam, create_model, list_models
    from .predictor import Predictor
    from .sam2_predictor import Sam2Predictor
