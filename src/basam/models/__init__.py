"""SAM-family components, one file each, the encoder families and the registry of named variants."""

from .encoder import ImageEncoder, ImageFeatures
from .family import ModelFamily, family_of, register_family, unregister_family
from .image_encoder import ImageEncoderViT, ViTConfig
from .mask_decoder import MaskDecoder
from .mask_decoder_hq import HQ_FUSIONS, MaskDecoderHQ
from .prompt_encoder import PromptEncoder
from .registry import (
    MODEL_SPECS, DecoderConfig, ModelSpec, Oracle, create_model, get_spec, list_models, register, unregister,
)
from .sam import Sam
from .tiny_vit import TinyViT, TinyViTConfig
from .transformer import TwoWayTransformer

__all__ = [
    "DecoderConfig", "HQ_FUSIONS", "ImageEncoder", "ImageEncoderViT", "ImageFeatures", "MODEL_SPECS", "MaskDecoder",
    "MaskDecoderHQ", "ModelFamily", "ModelSpec", "Oracle", "PromptEncoder", "Sam", "TinyViT", "TinyViTConfig",
    "TwoWayTransformer", "ViTConfig", "create_model", "family_of", "get_spec", "list_models", "register",
    "register_family", "unregister", "unregister_family",
]
