"""basam: Segment Anything at any resolution, with BA-SAM attention.

Quick start::

    import basam
    model = basam.load_model("mobile_sam", checkpoint="mobile_sam.pt", attention="basam")
    predictor = basam.Predictor(model, resolution=2048)
    predictor.set_image(image)                      # HxWx3 uint8 RGB
    masks, scores, logits = predictor.predict(point_coords=[[500, 375]], point_labels=[1])
"""

from .attention import PRESETS, AttentionConfig, set_attention
from .checkpoint import save_model
from .errors import BasamError, CheckpointError, InputError
from .load import load_model
from .models import Sam, create_model, list_models
from .predictor import Predictor

__version__ = "0.1.0"

__all__ = [
    "AttentionConfig", "BasamError", "CheckpointError", "InputError", "PRESETS", "Predictor", "Sam",
    "create_model", "list_models", "load_model", "save_model", "set_attention", "__version__",
]
