"""SAM-family components, one file each, and the registry of named variants."""

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .mask_decoder_hq import HQ_FUSIONS, MaskDecoderHQ
from .prompt_encoder import PromptEncoder
from .registry import MODEL_SPECS, ModelSpec, create_model, get_spec, list_models
from .sam import ImageFeatures, Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

__all__ = [
    "HQ_FUSIONS", "ImageEncoderViT", "ImageFeatures", "MODEL_SPECS", "MaskDecoder", "MaskDecoderHQ", "ModelSpec",
    "PromptEncoder", "Sam", "TinyViT", "TwoWayTransformer", "create_model", "get_spec", "list_models",
]
