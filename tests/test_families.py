"""Model families are plug-ins: a new encoder family registers a builder, a checkpoint filter, its
official file and oracle on its ModelSpec, and every part of basam works with it without an edit
to build_sam, the loader, the downloader or any table keyed by model name.

The toy family here has a stride of 8 px per token (SAM's is 16), so anything that still assumes
16 breaks these tests.
"""

import hashlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import basam
from basam.attention import AttentionConfig, attend, layer_scale
from basam.checkpoint import identify_checkpoint, save_model
from basam.errors import CheckpointError
from basam.hub import CheckpointInfo, download_checkpoint, official_checkpoints
from basam.models import ImageEncoder, ModelFamily, ModelSpec, register, register_family, unregister, unregister_family
from basam.models.registry import DecoderConfig


@dataclass(frozen=True)
class ToyConfig:
    dim: int = 32
    heads: int = 2


class ToyEncoder(ImageEncoder):
    """(B, 3, S, S) -> ((B, C, S/8, S/8), [(B, S/8, S/8, dim)]): a stride-8 patch embedding and one
    global attention layer through basam.attention.attend (so NSF applies to it)."""

    def __init__(self, cfg: ToyConfig, img_size: int, out_chans: int, attention=None):
        super().__init__()
        self.img_size, self.stride, self.interm_dim = img_size, 8, cfg.dim
        self.heads = cfg.heads
        self.embed = nn.Conv2d(3, cfg.dim, 8, 8)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Conv2d(cfg.dim, out_chans, 1)
        self.attention_config = attention or AttentionConfig()

    def configure_attention(self, config, reset_slopes=True):
        self.attention_config = config

    def forward(self, x):
        t = self.embed(x)  # (B, dim, h, w)
        b, c, h, w = t.shape
        tok = t.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tok).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scale = layer_scale(q.shape[-1], self.attention_config, window_tokens=None, image_tokens=h * w,
                            stride=self.stride, default_train_size=self.img_size)
        a = attend(q, k, v, scale=scale).transpose(1, 2).reshape(b, h * w, c)
        grid = (tok + a).transpose(1, 2).reshape(b, c, h, w)
        return self.out(grid), [grid.permute(0, 2, 3, 1)]


def toy_filter(sd):
    """The toy family's 'official' files name the patch embedding ``patchify``: rename it."""
    return {k.replace("image_encoder.patchify.", "image_encoder.embed."): v for k, v in sd.items()}


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    monkeypatch.setenv("BASAM_HOME", str(tmp_path / "home"))
    family = register_family(ModelFamily("toy", ToyConfig, lambda cfg, *, img_size, out_chans, attention:
                                         ToyEncoder(cfg, img_size, out_chans, attention), toy_filter))
    small = DecoderConfig(transformer_dim=32, depth=1, num_heads=2, mlp_dim=64, iou_head_hidden_dim=32, mask_in_chans=4)
    specs = [ModelSpec("toy_sam", ToyConfig(), decoder=small, img_size=128, description="toy family (test)"),
             ModelSpec("toy_sam_hq", ToyConfig(), hq=True, decoder=small, img_size=128, description="toy HQ (test)")]
    for spec in specs:
        register(spec)
    yield specs
    for spec in specs:
        unregister(spec.name)
    unregister_family(family)


def test_a_new_family_builds_and_predicts_at_any_resolution(toy_family):
    assert "toy_sam" in basam.list_models()
    for name in ("toy_sam", "toy_sam_hq"):
        model = basam.create_model(name, attention="basam").eval()
        assert model.spec.name == name and isinstance(model.image_encoder, ToyEncoder)
        pred = basam.Predictor(model, resolution=200)
        image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
        pred.set_image(image)
        side = 200 if 200 % 8 == 0 else -(-200 // 8) * 8
        assert pred.get_image_embedding().shape == (1, 32, side // 8, side // 8)  # stride 8, not 16
        assert pred.mask_input_size == (4 * side // 8, 4 * side // 8)
        masks, scores, low = pred.predict(point_coords=np.array([[100, 70]]), point_labels=np.array([1]))
        assert masks.shape[1:] == (150, 200) and np.isfinite(scores).all()
        m2, _, _ = pred.predict(mask_input=low[:1], multimask_output=False)
        assert m2.shape == (1, 150, 200)


def test_decoder_nsf_counts_tokens_with_the_family_stride(toy_family):
    model = basam.create_model("toy_sam", attention=AttentionConfig(decoder_nsf=True, train_resolution=256))
    from basam.models.transformer import Attention

    layers = [m for m in model.mask_decoder.modules() if isinstance(m, Attention)]
    assert layers and all(m.token_stride == 8 and m.train_image_tokens == (128 // 8) ** 2 for m in layers)


def test_foreign_checkpoint_loads_through_the_family_filter(toy_family, tmp_path):
    """An 'official' toy file (foreign key names, .pth) loads strictly; identify_checkpoint names it;
    a file of another family is refused naming the keys; basam's own save round-trips."""
    src = basam.create_model("toy_sam").eval()
    official = {k.replace("image_encoder.embed.", "image_encoder.patchify."): v
                for k, v in src.state_dict().items() if not k.endswith(".bam.slopes")}
    path = tmp_path / "toy_official.pth"
    torch.save(official, path)
    assert identify_checkpoint(official) == "toy_sam"
    loaded = basam.load_model("toy_sam", checkpoint=path)
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ours = save_model(loaded, tmp_path / "toy.safetensors")
    again = basam.load_model("toy_sam", checkpoint=ours)
    assert torch.equal(again.image_encoder.embed.weight, src.image_encoder.embed.weight)
    other = tmp_path / "vit.pth"
    torch.save(basam.create_model("sam_vit_b", embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,)).state_dict(), other)
    with pytest.raises(CheckpointError, match="does not fit toy_sam.*image_encoder"):
        basam.load_model("toy_sam", checkpoint=other)


def test_official_file_and_oracle_live_on_the_spec(toy_family, tmp_path, monkeypatch):
    """The downloader finds the toy's official file from its ModelSpec alone (served on 127.0.0.1
    through $BASAM_HUB_URL), and bench's oracle lookup names what is missing."""
    import http.server
    import threading

    payload = b"toy checkpoint bytes" * 100
    served = tmp_path / "served"
    served.mkdir()
    (served / "toy.pth").write_bytes(payload)
    info = CheckpointInfo("toy.pth", "https://example.invalid/toy.pth", hashlib.sha256(payload).hexdigest(), len(payload),
                          "https://example.invalid")
    base = toy_family[0]
    register(ModelSpec(base.name, base.encoder, decoder=base.decoder, img_size=base.img_size, checkpoint=info))
    assert official_checkpoints()["toy_sam"] == info

    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("BASAM_HUB_URL", f"http://127.0.0.1:{server.server_address[1]}/")
        path = download_checkpoint("toy_sam", progress=False)
    finally:
        server.shutdown()
    assert path.read_bytes() == payload

    from basam.bench import build_official

    with pytest.raises(basam.errors.InputError, match="no official implementation is known for toy_sam"):
        build_official("toy_sam")
