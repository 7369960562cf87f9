"""Named model variants: ``create_model("sam_vit_b")`` builds the architecture with random weights.

Each entry (:class:`ModelSpec`) records everything basam knows about one variant: the official
architecture, where its official weights are and what they hash to, and which official package
implements it (the test and benchmark oracle). The encoder is built by the family registered for
the type of ``spec.encoder`` (:mod:`basam.models.family`), so a new family needs no edit here.
Keyword overrides shrink a variant (depth, width, heads, ...) for tests and experiments.
"""

from dataclasses import dataclass, fields, replace
from typing import Dict, Optional, Tuple

from ..attention import AttentionConfig
from ..errors import InputError
from ..hub import CheckpointInfo
from .family import family_of
from .image_encoder import ViTConfig
from .mask_decoder import MaskDecoder
from .mask_decoder_hq import MaskDecoderHQ
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .sam2 import HieraConfig  # registers the SAM 2 family
from .tiny_vit import TinyViTConfig
from .transformer import TwoWayTransformer

__all__ = ["ModelSpec", "Oracle", "DecoderConfig", "ViTConfig", "TinyViTConfig", "HieraConfig", "MODEL_SPECS", "register",
           "unregister", "get_spec", "list_models", "shrink", "build_sam", "create_model"]


@dataclass(frozen=True)
class DecoderConfig:
    transformer_dim: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16


@dataclass(frozen=True)
class Oracle:
    """The official implementation of a variant: ``__import__(package).sam_model_registry[key]``."""

    package: str  # import name, e.g. segment_anything
    key: str  # its sam_model_registry key, e.g. vit_b
    pip: str  # what pip installs it by, e.g. segment-anything


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry.

    Attributes:
        name: the registry name (``sam_vit_b``).
        encoder: the encoder's architecture config; its type selects the family that builds it.
        hq: HQ-SAM's decoder (HQ-Output token and feature fusion) instead of SAM's.
        decoder: the mask decoder's sizes.
        img_size: the pretraining input side (px).
        description: one line for listings.
        bundled: weights shipped inside the package (``basam/weights/<file>``).
        checkpoint: the official weights file: URL, pinned SHA-256, size.
        oracle: the official package that implements this variant (test and bench baseline).
    """

    name: str
    encoder: object
    hq: bool = False
    decoder: DecoderConfig = DecoderConfig()
    img_size: int = 1024
    description: str = ""
    bundled: Optional[str] = None
    checkpoint: Optional[CheckpointInfo] = None
    oracle: Optional[Oracle] = None


MODEL_SPECS: Dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add (or replace) a named variant; its encoder config's family must be registered."""
    family_of(spec.encoder)  # fail at registration, not at the first build
    MODEL_SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    MODEL_SPECS.pop(name, None)


_VIT_B = ViTConfig(768, 12, 12, (2, 5, 8, 11))
_VIT_L = ViTConfig(1024, 24, 16, (5, 11, 17, 23))
_VIT_H = ViTConfig(1280, 32, 16, (7, 15, 23, 31))
_TINY = TinyViTConfig()

_SAM_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM_PAGE = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
_HQ_BASE = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
_HQ_PAGE = "https://github.com/SysCV/sam-hq#model-checkpoints"
_MOBILE_PAGE = "https://github.com/ChaoningZhang/MobileSAM"
_SAM_PKG = ("segment_anything", "segment-anything")
_HQ_PKG = ("segment_anything_hq", "segment-anything-hq")
_MOBILE_PKG = ("mobile_sam", "mobilesam-mirror")


def _oracle(pkg: Tuple[str, str], key: str) -> Oracle:
    return Oracle(pkg[0], key, pkg[1])


# Pinned SHA-256 values, each with the public sources it was taken from (no value here was
# computed by us; each was found published and cross-checked against a second source).
register(ModelSpec(
    "sam_vit_b", _VIT_B, description="SAM ViT-B (91M encoder)", oracle=_oracle(_SAM_PKG, "vit_b"),
    checkpoint=CheckpointInfo(
        filename="sam_vit_b_01ec64.pth",
        url=_SAM_BASE + "sam_vit_b_01ec64.pth",
        # computational-cell-analytics/micro-sam micro_sam/util.py (pooch registry "vit_b",
        # commit 00006fc6a86d4f6888f7ef333cf070987ffabb51); same sha256 and size 375042383 in
        # the Hugging Face LFS pointer of huggingface.co/mashb1t/misc commit 78e1813
        # (sam_vit_b_01ec64.pth).
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        size_bytes=375_042_383,
        source_page=_SAM_PAGE,
    ),
))
register(ModelSpec(
    "sam_vit_l", _VIT_L, description="SAM ViT-L (308M encoder)", oracle=_oracle(_SAM_PKG, "vit_l"),
    checkpoint=CheckpointInfo(
        filename="sam_vit_l_0b3195.pth",
        url=_SAM_BASE + "sam_vit_l_0b3195.pth",
        # computational-cell-analytics/micro-sam micro_sam/util.py (pooch registry "vit_l",
        # commit 00006fc6a86d4f6888f7ef333cf070987ffabb51); same sha256 and size 1249524607 in
        # the LFS pointer of huggingface.co/mashb1t/misc commit 78e1813 (sam_vit_l_0b3195.pth).
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        size_bytes=1_249_524_607,
        source_page=_SAM_PAGE,
    ),
))
register(ModelSpec(
    "sam_vit_h", _VIT_H, description="SAM ViT-H (632M encoder)", oracle=_oracle(_SAM_PKG, "vit_h"),
    checkpoint=CheckpointInfo(
        filename="sam_vit_h_4b8939.pth",
        url=_SAM_BASE + "sam_vit_h_4b8939.pth",
        # computational-cell-analytics/micro-sam micro_sam/util.py (pooch registry "vit_h",
        # commit 00006fc6a86d4f6888f7ef333cf070987ffabb51); also
        # AlexanderBarabanov/geti-instant-learn lib/src/getiprompt/utils/constants.py
        # (MODEL_MAP[SAM]); same sha256 and size 2564550879 in the LFS pointer of
        # huggingface.co/mashb1t/misc commit 78e1813 (sam_vit_h_4b8939.pth).
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        size_bytes=2_564_550_879,
        source_page=_SAM_PAGE,
    ),
))
register(ModelSpec(
    "mobile_sam", _TINY, description="MobileSAM: TinyViT-5M encoder + SAM decoder", oracle=_oracle(_MOBILE_PKG, "vit_t"),
    checkpoint=CheckpointInfo(
        filename="mobile_sam.pt",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        # AlexanderBarabanov/geti-instant-learn lib/src/getiprompt/utils/constants.py
        # (MODEL_MAP[MOBILE_SAM], same GitHub weights/mobile_sam.pt URL); also
        # computational-cell-analytics/micro-sam micro_sam/util.py (pooch registry "vit_t");
        # same sha256 and size 40728226 in the LFS pointer of
        # huggingface.co/xingren23/comfyflow-models commit 8297c11 (sams/mobile_sam.pt).
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        size_bytes=40_728_226,
        source_page=_MOBILE_PAGE,
    ),
))
register(ModelSpec(
    "sam_hq_vit_b", _VIT_B, hq=True, description="HQ-SAM on ViT-B", oracle=_oracle(_HQ_PKG, "vit_b"),
    checkpoint=CheckpointInfo(
        filename="sam_hq_vit_b.pth",
        url=_HQ_BASE + "sam_hq_vit_b.pth",
        # LFS pointer in huggingface.co/lkeab/hq-sam commit 8a94b5e ("Upload sam_hq_vit_b.pth",
        # size 379335069); same sha256 on huggingface.co/Uminosachi/sam-hq/blob/main/sam_hq_vit_b.pth
        # and in huggingface.co/xingren23/comfyflow-models commit 8297c11.
        sha256="14a9d662cd6f5a9c2dba6d40ab0058d88d287e4a18fd6fdc6ad5fb1a3fdeaa57",
        size_bytes=379_335_069,
        source_page=_HQ_PAGE,
    ),
))
register(ModelSpec(
    "sam_hq_vit_l", _VIT_L, hq=True, description="HQ-SAM on ViT-L", oracle=_oracle(_HQ_PKG, "vit_l"),
    checkpoint=CheckpointInfo(
        filename="sam_hq_vit_l.pth",
        url=_HQ_BASE + "sam_hq_vit_l.pth",
        # LFS pointer in huggingface.co/lkeab/hq-sam commit 519b37f ("Upload sam_hq_vit_l.pth",
        # size 1254865805); same sha256 on huggingface.co/lkeab/hq-sam/blob/
        # 09b02a333b37772133eff3997bdba997867374b7/sam_hq_vit_l.pth (a later revision).
        sha256="e1a6c385d62bf005ded91a54d5ec55c985cfc4103ef89c08d90f39f04934c343",
        size_bytes=1_254_865_805,
        source_page=_HQ_PAGE,
    ),
))
register(ModelSpec(
    "sam_hq_vit_h", _VIT_H, hq=True, description="HQ-SAM on ViT-H", oracle=_oracle(_HQ_PKG, "vit_h"),
    checkpoint=CheckpointInfo(
        filename="sam_hq_vit_h.pth",
        url=_HQ_BASE + "sam_hq_vit_h.pth",
        # LFS pointer in huggingface.co/lkeab/hq-sam commit 67ab824 ("Upload sam_hq_vit_h.pth",
        # size 2570940653); also AlexanderBarabanov/geti-instant-learn
        # lib/src/getiprompt/utils/constants.py (MODEL_MAP[SAM_HQ]) and the refiners conversion
        # recipe for lkeab/hq-sam sam_hq_vit_h.pth (expected_sha256).
        sha256="a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35",
        size_bytes=2_570_940_653,
        source_page=_HQ_PAGE,
    ),
))
register(ModelSpec(
    "sam_hq_vit_tiny", _TINY, hq=True, description="HQ-SAM on MobileSAM's TinyViT", oracle=_oracle(_HQ_PKG, "vit_tiny"),
    checkpoint=CheckpointInfo(
        filename="sam_hq_vit_tiny.pth",
        url=_HQ_BASE + "sam_hq_vit_tiny.pth",
        # LFS pointer in huggingface.co/lkeab/hq-sam commit a3a77cd ("Upload
        # sam_hq_vit_tiny.pth", size 42526881); also AlexanderBarabanov/geti-instant-learn
        # lib/src/getiprompt/utils/constants.py (MODEL_MAP[SAM_HQ_TINY]).
        sha256="0f32c075ccdd870ae54db2f7630e7a0878ede5a2b06d05d6fe02c65a82fb7196",
        size_bytes=42_526_881,
        source_page=_HQ_PAGE,
    ),
))
# basam's own demonstration model: SAM's architecture, small, trained from scratch at 256 px on a few
# thousand salient-object and polyp images (recipes basam_tiny_v5, v6, v7, v8, v9, then v10b; see the README for how good it is).
# An HQ variant for the fusion study: architecture={"hq": True} (HQ modules trained with --train hq).
register(ModelSpec(
    "basam_tiny",
    ViTConfig(embed_dim=160, depth=6, num_heads=5, global_attn_indexes=(2, 5), window_size=8),
    decoder=DecoderConfig(transformer_dim=128, depth=2, num_heads=4, mlp_dim=512, iou_head_hidden_dim=128),
    img_size=256,
    description="basam's demonstration model (ViT 160x6, trained from scratch at 256 px; not SAM)",
    bundled="basam_tiny.safetensors",
))


# SAM 2 / SAM 2.1 (image prediction only; the video weights are dropped on load). Architectures
# from the sam2 package's configs/sam2{,.1}/*.yaml (identical between 2.0 and 2.1 for images).
_HIERA = {
    "tiny": HieraConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), (8, 4, 14, 7), (7, 7)),
    "small": HieraConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), (8, 4, 14, 7), (7, 7)),
    "base_plus": HieraConfig(112, 2, (2, 3, 16, 3), (12, 16, 20), (8, 4, 14, 7), (14, 14)),
    "large": HieraConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7)),
}
_SAM2_PAGE = "https://github.com/facebookresearch/sam2#model-description"
_SAM2_CFG = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
#: The official SAM 2 files (URLs from the sam2 README / checkpoints/download_ckpts.sh). No
#: SHA-256 is published for them (Meta's download script checks none, and none could be found), so
#: their downloads are trust-on-first-use (basam.hub prints the hash it got and checks the cached
#: file against it later); pin them here once someone has hashed the real files.
SAM2_OFFICIAL_FILES: Dict[str, CheckpointInfo] = {}
for _version, _release, _cfg_dir in (("sam2.1", "092824", "configs/sam2.1/sam2.1"), ("sam2", "072824", "configs/sam2/sam2")):
    for _size, _hiera in _HIERA.items():
        _name = f"{_version}_hiera_{_size}"
        SAM2_OFFICIAL_FILES[_name] = CheckpointInfo(
            filename=f"{_name}.pt", url=f"https://dl.fbaipublicfiles.com/segment_anything_2/{_release}/{_name}.pt",
            sha256=None, size_bytes=None, source_page=_SAM2_PAGE)
        register(ModelSpec(
            _name, _hiera, description=f"SAM {_version[3:]} Hiera-{_size.replace('_plus', '+')} (image prediction)",
            checkpoint=SAM2_OFFICIAL_FILES[_name],
            oracle=Oracle("sam2", f"{_cfg_dir}_hiera_{_SAM2_CFG[_size]}.yaml", "sam2"),
        ))


def list_models() -> Tuple[str, ...]:
    return tuple(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODEL_SPECS)}") from None


def shrink(spec: ModelSpec, **overrides) -> ModelSpec:
    """A copy of ``spec`` with encoder fields (``embed_dim``, ``depth``, ...), ``img_size`` or
    ``decoder`` replaced: for reduced models in tests."""
    top = {k: overrides.pop(k) for k in ("img_size", "decoder", "hq") if k in overrides}
    if isinstance(top.get("decoder"), dict):
        top["decoder"] = _replace_checked(spec.decoder, top["decoder"], "decoder")
    enc = _replace_checked(spec.encoder, overrides, "encoder") if overrides else spec.encoder
    return replace(spec, encoder=enc, **top)


def _replace_checked(cfg, overrides: dict, what: str):
    known = {f.name for f in fields(cfg)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise InputError(f"unknown {what} architecture field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def build_sam(spec: ModelSpec, attention: Optional[AttentionConfig] = None, hq_fusion: str = "add") -> Sam:
    """Instantiate ``spec`` with freshly initialised weights (train mode)."""
    attention = attention or AttentionConfig()
    family = family_of(spec.encoder)
    if getattr(family, "build_model", None) is not None:  # a family whose whole model differs (SAM 2)
        return family.build_model(spec, attention)
    d = spec.decoder
    encoder = family.build_encoder(spec.encoder, img_size=spec.img_size, out_chans=d.transformer_dim,
                                                    attention=attention)
    transformer = TwoWayTransformer(depth=d.depth, embedding_dim=d.transformer_dim, num_heads=d.num_heads, mlp_dim=d.mlp_dim)
    common = dict(transformer_dim=d.transformer_dim, transformer=transformer, num_multimask_outputs=3, iou_head_depth=3,
                  iou_head_hidden_dim=d.iou_head_hidden_dim, high_res_channels=getattr(encoder, "multiscale_channels", None))
    decoder = MaskDecoderHQ(vit_dim=encoder.interm_dim, hq_fusion=hq_fusion, **common) if spec.hq else MaskDecoder(**common)
    sam = Sam(encoder, PromptEncoder(embed_dim=d.transformer_dim, mask_in_chans=d.mask_in_chans), decoder, name=spec.name)
    sam.spec = spec
    sam.set_attention(attention)
    return sam


def create_model(name: str, attention: "AttentionConfig | str | None" = None, hq_fusion: str = "add", **overrides) -> Sam:
    """Build a registered model with random weights; ``overrides`` shrink it (see :func:`shrink`)."""
    spec = get_spec(name)
    if overrides:
        spec = shrink(spec, **overrides)
    return build_sam(spec, AttentionConfig.coerce(attention), hq_fusion=hq_fusion)
