"""Export a basam model to ONNX: ``encoder.onnx`` at one resolution + ``decoder.onnx``.

The pair follows the deployment split of the official SAM ONNX export: the heavy image encoder
runs once per image, the light prompt decoder once per click.

``encoder.onnx``
    input ``image``: float32 (1, 3, h, w), RGB in 0..255, the image already resized so that its
    longest side is the export ``resolution`` (``basam.transforms.ResizeLongestSide``); h and w are
    dynamic. Normalisation (pixel mean/std) and the zero padding to the S x S encoder input
    (S = ``model.padded_size(resolution)``) are in the graph.
    outputs ``image_embeddings``: (1, C, S/16, S/16); HQ-SAM models also ``interm_embeddings``:
    (1, 1, S/16, S/16, C_vit), the early ViT feature HQ-SAM fuses (only the first one: it is the only
    one the HQ decoder reads, and all of them would cost 4x the memory of the embedding itself);
    a ViT with a detail branch (basam_tiny) then also ``high_res_feats_0`` (1, c4, S/4, S/4) and
    ``high_res_feats_1`` (1, c8, S/8, S/8), the branch's maps, projected in the decoder
    (``"high_res": true`` in ``basam_onnx.json``).
    Everything that depends on the resolution only is a constant of the graph: the NSF scale of every
    layer, the relative-position tables resized to the grid, the BM-AM distance bias, the resampled
    absolute position embedding, TinyViT's bias tables and folded BatchNorms. Attention is exported
    through basam's ``reference`` backend (explicit softmax over the full N x N logits): no fused
    kernel and no chunking loop in the graph.

    Attention materialises the full N x N logits of each layer (N = (S/16)^2 tokens in a global
    layer): heads x N^2 x 4 bytes, 0.8 GB for ViT-B at 1024 px, 13 GB at 2048 px; plan memory for it.

``decoder.onnx``
    the official SAM ONNX decoder contract (``segment_anything/utils/onnx.py``; HQ-SAM's adds
    ``interm_embeddings`` after ``image_embeddings``), so an application written for the official
    decoder runs this one unchanged. Inputs, all float32:

    * ``image_embeddings`` (1, C, h, w): the encoder's output (h = w = S/16, fixed at export);
    * ``interm_embeddings`` (K, 1, h, w, C_vit): HQ-SAM only, only [0] is read (K dynamic, so
      the official K = 4 stack works as well as the encoder's single one);
    * ``high_res_feats_0``, ``high_res_feats_1``: a detail branch's maps, as the encoder gives them
      (models with one only);
    * ``point_coords`` (1, N, 2): x, y in the resized-longest-side frame, N dynamic;
    * ``point_labels`` (1, N): 1 foreground, 0 background, 2 / 3 box corners, -1 the padding point
      that goes with clicks given without a box;
    * ``mask_input`` (1, 1, 4h, 4w): low-res logits of an earlier call, with ``has_mask_input``
      (1,) = 1, else zeros and 0;
    * ``orig_im_size`` (2,): H, W of the original image.

    Outputs ``masks`` (1, M, H, W) logits at the original size, ``iou_predictions`` (1, M),
    ``low_res_masks`` (1, M, 4h, 4w). SAM / MobileSAM: M = 4 (the single-mask token first, then
    the three multimask tokens), or M = 1 with ``return_single_mask`` (the official rule: the
    single-mask token when the decoder gets 3 or more points, padding and box corners included,
    else the best multimask token). HQ-SAM: M = 1, ``multimask_output`` and ``hq_token_only``
    fixed at export, as in the official HQ export.

    As the official decoder is fixed at 1024 px / 64 x 64, this one is fixed at its export
    resolution: coordinates are normalised by S, the dense positional encoding is a constant of
    the export grid, and masks are upscaled to S x S, cropped to the resized image and resized to
    ``orig_im_size`` (the crop follows ``orig_im_size`` at run time; the official graph freezes it
    at its dummy input's 1500 x 2250). Embeddings of another grid fail onnxruntime's shape check:
    export one pair per resolution.

SAM 2 / SAM 2.1 (``family`` "sam2" in ``basam_onnx.json``; the image path of :class:`basam.Sam2Predictor`)
    ``encoder.onnx``: ``image`` float32 (1, 3, R, R), RGB 0..255, the image already *stretched* to
    R x R (bilinear, antialiased: SAM 2 does not keep the aspect ratio); normalisation, and the
    zero padding to S x S where R is not a multiple of 32, in the graph. Outputs
    ``image_embeddings`` (1, C, S/16, S/16) with ``no_mem_embed`` added, ``high_res_feats_0``
    (1, C/8, S/4, S/4) and ``high_res_feats_1`` (1, C/4, S/8, S/8): the FPN's stride-4 / stride-8
    maps already projected by the decoder's ``conv_s0`` / ``conv_s1`` (what the official
    ``high_res_feats`` hold; C = 256: 32 and 64 channels).

    ``decoder.onnx``: inputs ``image_embeddings``, ``high_res_feats_0``, ``high_res_feats_1``, then
    SAM's ``point_coords`` (1, N, 2) in the R x R frame (pixels), ``point_labels`` (1, N),
    ``mask_input`` (1, 1, 4h, 4w), ``has_mask_input`` (1,), ``orig_im_size`` (2,). SAM 2's layout:
    the box corners (2, 3) first, then the clicks, then one padding point (-1) whenever there is a
    point or a box; N = 0 for a mask alone. Outputs ``masks`` (1, M, H, W) logits, ``iou_predictions``
    (1, M), ``low_res_masks`` (1, M, 4h, 4w) clamped to [-32, 32] (as the predictor returns them,
    ready to feed back), ``object_score_logits`` (1, 1) (> 0: an object). M = 4 (single-mask token
    first), or M = 1 with ``return_single_mask``: what ``Sam2Predictor.predict(multimask_output=False)``
    returns, i.e. SAM 2's "multimask via stability" rule (the single-mask token unless its logits'
    stability is below 0.98, then the best multimask token), not SAM's point-count rule; on a 4-mask
    decoder :class:`~basam.export.runtime.OnnxPredictor` applies the same rule. Masks: the low-res
    logits resized straight to ``orig_im_size`` (R = S), else upscaled to S, cropped to R, resized.

After tracing (TorchScript exporter), onnxruntime's basic optimisation level folds every
weight- and shape-only subgraph into constants, broadcast copies among them are stored at their
un-broadcast size and equal ones once; the graphs hold standard ONNX operators only (opsets 14-20
checked with onnxruntime 1.32). Models over 1 GB of weights keep them in ``<file>.data`` beside the
graph (protobuf's 2 GiB limit: ViT-H).

Quantization (``quantize=True``): ``onnxruntime.quantization.quantize_dynamic`` (int8 weights of
every MatMul / Gemm, uint8 activations quantized per call; convolutions stay fp32) on both graphs,
written as ``encoder.quant.onnx`` and ``decoder.quant.onnx``. Cost measured on basam_tiny (trained
weights, 256 px, 40 DUTS-TE images, a box and a point each, single mask): mask IoU against the fp32
graph 0.999 mean / 0.996 worst, IoU against the ground truth -0.0002, predicted IoU mean |change| 0.002,
embedding max error 0.3 % of its scale; on random weights (full-size MobileSAM / ViT-B at 1024 px)
the embedding error is 3-5 %. Encoder 2.7x (basam_tiny) to 3.7x (ViT-B) smaller; on 2 CPU cores
ViT-B's encode at 1024 px takes 6.8 s instead of 9.5 s (PyTorch 9.0 s).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError

#: onnxruntime >= 1.17 runs opset 17 everywhere (LayerNormalization is a native op from 17 on)
DEFAULT_OPSET = 17
#: the TorchScript-based exporter of torch 2.x writes opsets up to 20
SUPPORTED_OPSETS = range(14, 21)
METADATA_FILE = "basam_onnx.json"
ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"
ENCODER_QUANT_FILE, DECODER_QUANT_FILE = "encoder.quant.onnx", "decoder.quant.onnx"

PathLike = Union[str, os.PathLike]


class EncoderForExport(nn.Module):
    """The image encoder with normalisation and padding folded in.

    (1, 3, h, w) RGB 0..255, max(h, w) <= S -> image_embeddings (1, C, S/16, S/16)
    [, interm_embeddings (1, 1, S/16, S/16, C_vit) for HQ-SAM].
    """

    def __init__(self, model: nn.Module, resolution: int) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone().view(1, 3, 1, 1), persistent=False)
        self.side = int(model.padded_size(resolution))
        self.is_hq = bool(model.is_hq)

    def forward(self, image: Tensor):
        """image_embeddings[, interm_embeddings][, high_res_feats_0, high_res_feats_1]"""
        x = (image - self.pixel_mean) / self.pixel_std
        s = self.side
        # Zero padding after normalising, as Sam.preprocess does: pad by the full side, then crop
        # to S x S (a constant pad and slice: no shape arithmetic on the dynamic h, w). The reshape
        # to constant sizes gives every later layer a static input shape, so that all their shape
        # arithmetic and resolution-only tables fold into constants.
        x = F.pad(x, (0, s, 0, s))[:, :, :s, :s].reshape(1, 3, s, s)
        out = self.image_encoder(x)
        emb, interm = out[0], out[1]
        fine = list(out[2]) if len(out) > 2 else []
        outs = [emb] + ([interm[0].unsqueeze(0)] if self.is_hq else []) + fine
        return outs[0] if len(outs) == 1 else tuple(outs)


class DecoderForExport(nn.Module):
    """Prompt encoder + mask decoder + mask postprocessing with the official ONNX decoder's I/O.

    See the module docstring for the inputs and outputs.
    """

    def __init__(self, model: nn.Module, resolution: int, grid, return_single_mask: bool = False,
                 multimask_output: bool = False, hq_token_only: bool = False) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.is_hq = bool(model.is_hq)
        self.resolution = int(resolution)
        self.side = int(model.padded_size(resolution))
        self.grid = (int(grid[0]), int(grid[1]))
        self.return_single_mask = bool(return_single_mask)
        self.multimask_output = bool(multimask_output)
        self.hq_token_only = bool(hq_token_only)
        with torch.no_grad():
            # The dense positional encoding of the export grid: a constant of the graph.
            pe = self.prompt_encoder.get_dense_pe(self.grid).detach().clone()
        self.register_buffer("image_pe", pe, persistent=False)

    def _embed_points(self, coords: Tensor, labels: Tensor) -> Tensor:
        """(1, N, 2) coordinates and (1, N) float labels -> (1, N, C) sparse embeddings."""
        pe = self.prompt_encoder
        emb = pe.pe_layer.forward_with_coords(coords + 0.5, (self.side, self.side))
        labels = labels.unsqueeze(-1)
        emb = emb * (labels != -1)
        emb = emb + pe.not_a_point_embed.weight * (labels == -1)
        # labels 0/1: background/foreground points, 2/3: box corners (the official encoding)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (labels == i)
        return emb

    def _embed_masks(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        pe = self.prompt_encoder
        dense = has_mask_input * pe.mask_downscaling(mask_input)
        return dense + (1 - has_mask_input) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def _select_single(self, masks: Tensor, iou: Tensor, num_points) -> tuple:
        """The official ``return_single_mask`` rule without control flow: token 0 (single mask) when
        more than 2.5 points (the padding point counts) are given, else the best multimask token."""
        reweight = torch.zeros(1, masks.shape[1], dtype=iou.dtype, device=iou.device)
        reweight[0, 0] = 1000.0
        score = iou + (num_points - 2.5) * reweight
        best = torch.argmax(score, dim=1)
        idx = torch.arange(masks.shape[0], device=masks.device)
        return masks[idx, best].unsqueeze(1), iou[idx, best].unsqueeze(1)

    def _postprocess(self, masks: Tensor, orig_im_size: Tensor) -> Tensor:
        """(1, M, 4h, 4w) -> (1, M, H, W): upscale to S x S, crop the padding, resize to the original."""
        masks = F.interpolate(masks, size=(self.side, self.side), mode="bilinear", align_corners=False)
        # The resized image size, rounded as ResizeLongestSide does (in float64, like Python).
        size = orig_im_size.to(torch.float64)
        scale = self.resolution / torch.max(size)
        resized = torch.floor(size * scale + 0.5).to(torch.int64)
        masks = masks[..., : resized[0], : resized[1]]
        orig = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(orig[0], orig[1]), mode="bilinear", align_corners=False)

    def _decode(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size,
                interm_embeddings=None, high_res=None):
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        if self.is_hq:
            masks, iou = self.mask_decoder(image_embeddings, self.image_pe, sparse, dense,
                                           multimask_output=self.multimask_output, hq_token_only=self.hq_token_only,
                                           interm_embeddings=[interm_embeddings[0]], high_res_features=high_res)
        else:
            masks, iou = self.mask_decoder.predict_masks(image_embeddings, self.image_pe, sparse, dense, high_res)
            if self.return_single_mask:
                masks, iou = self._select_single(masks, iou, point_coords.shape[1])
        return self._postprocess(masks, orig_im_size), iou, masks

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        return self._decode(image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size)


class HQDecoderForExport(DecoderForExport):
    """HQ-SAM's decoder: ``interm_embeddings`` follows ``image_embeddings``, as in the official HQ export."""

    def forward(self, image_embeddings, interm_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        return self._decode(image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size,
                            interm_embeddings=interm_embeddings)


class HighResDecoderForExport(DecoderForExport):
    """A decoder that reads a detail branch's maps: inputs ``image_embeddings``, [``interm_embeddings``
    (HQ),] ``high_res_feats_0``, ``high_res_feats_1``, then the prompt inputs."""

    def forward(self, image_embeddings, *rest):
        interm = None
        if self.is_hq:
            interm, rest = rest[0], rest[1:]
        hr0, hr1, point_coords, point_labels, mask_input, has_mask_input, orig_im_size = rest
        return self._decode(image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size,
                            interm_embeddings=interm, high_res=[hr0, hr1])


class Sam2EncoderForExport(nn.Module):
    """SAM 2's image encoder (Hiera + FPN neck) with normalisation folded in.

    image (1, 3, R, R) RGB 0..255, already stretched to R x R (as :class:`basam.Sam2Predictor`
    resizes) -> image_embeddings (1, C, S/16, S/16) with ``no_mem_embed`` added, high_res_feats_0
    (1, C/8, S/4, S/4) and high_res_feats_1 (1, C/4, S/8, S/8), the stride-4 / stride-8 maps
    already projected by the decoder's ``conv_s0`` / ``conv_s1`` (S = ``model.padded_size(R)``;
    S = R when R is a multiple of 32, else the image is zero-padded to S after normalising).
    """

    def __init__(self, model: nn.Module, resolution: int) -> None:
        super().__init__()
        self.model = model
        self.resolution = int(resolution)
        self.side = int(model.padded_size(resolution))

    def forward(self, image: Tensor):
        # Sam.preprocess's normalisation and padding (the pad only where there is one: a zero-width
        # Pad would stay in the graph), then Sam2.encode itself (no_mem_embed, conv_s0 / conv_s1).
        m, pad = self.model, self.side - self.resolution
        x = (image.reshape(1, 3, self.resolution, self.resolution) - m.pixel_mean) / m.pixel_std
        if pad:
            x = F.pad(x, (0, pad, 0, pad))
        feats = m.encode(x)
        return feats.embeddings, feats.multiscale[0], feats.multiscale[1]


class Sam2DecoderForExport(DecoderForExport):
    """SAM 2's prompt encoder + mask decoder + postprocessing; I/O in the module docstring.

    The prompt embedding is SAM's (SAM 2 uses the same labels: -1 padding, 0 / 1 points, 2 / 3 box
    corners, the caller orders them: corners, clicks, one padding point).
    """

    def __init__(self, model: nn.Module, resolution: int, grid, return_single_mask: bool = False) -> None:
        super().__init__(model, resolution, grid, return_single_mask=return_single_mask)

    def _select_single_sam2(self, masks: Tensor, iou: Tensor) -> tuple:
        """What ``Sam2MaskDecoder.forward(multimask_output=False)`` returns in eval: the single-mask
        token, or where its logits are unstable the best multimask token (when the decoder is
        configured for the "multimask via stability" rule)."""
        if self.mask_decoder.dynamic_multimask_via_stability:
            return self.mask_decoder._single_or_best(masks, iou)  # gather + where: no control flow
        return masks[:, :1], iou[:, :1]

    def _postprocess_sam2(self, masks: Tensor, orig_im_size: Tensor) -> Tensor:
        """(1, M, S/4, S/4) -> (1, M, H, W) as ``Sam2.postprocess_masks``: straight to the original
        size when there is no padding (R = S), else upscale to S, crop to R, resize."""
        orig = orig_im_size.to(torch.int64)
        if self.side != self.resolution:
            masks = F.interpolate(masks, size=(self.side, self.side), mode="bilinear", align_corners=False)
            masks = masks[..., : self.resolution, : self.resolution]
        return F.interpolate(masks, size=(orig[0], orig[1]), mode="bilinear", align_corners=False)

    def forward(self, image_embeddings, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
                has_mask_input, orig_im_size):
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        masks, iou, obj = self.mask_decoder.predict_masks(image_embeddings, self.image_pe, sparse, dense,
                                                          [high_res_feats_0, high_res_feats_1])
        if self.return_single_mask:
            masks, iou = self._select_single_sam2(masks, iou)
        # Full-size masks from the raw logits, the low-res ones clamped as Sam2Predictor returns them
        # (the clamp is what an official SAM 2 mask_input expects to be fed back).
        return self._postprocess_sam2(masks, orig_im_size), iou, masks.clamp(-32.0, 32.0), obj


def _export_copy(model: nn.Module) -> nn.Module:
    """A CPU fp32 eval copy of ``model`` whose attention runs the plain reference path.

    ``reset_slopes=False`` keeps trained BM-AM slopes; CUDA graphs off (they are a runtime cache).
    """
    m = copy.deepcopy(model).float().cpu().eval()
    if hasattr(m, "cuda_graphs"):
        m.cuda_graphs = False
    m.set_attention(replace(m.attention_config, backend="reference"), reset_slopes=False)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


#: above this many bytes of weights a graph keeps them in a ``<file>.data`` file beside it
#: (protobuf's 2 GiB limit; ViT-H's encoder is 2.5 GB)
EXTERNAL_DATA_BYTES = 1 << 30


def _onnx_export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes, opset: int) -> None:
    """Trace ``module`` to ONNX at ``path``, then fold its constants with onnxruntime.

    The TorchScript exporter leaves the shape arithmetic and every table computed from weights
    and shapes alone (relative positions resized to the grid, bicubic position-embedding resampling,
    BM-AM distances) as graph nodes; onnxruntime's *basic* optimisation level (constant folding and
    redundant-node removal, standard ONNX operators only) evaluates them once, so they are stored
    as constants: a ViT encoder goes from ~1500 nodes to ~250.
    """
    import onnx
    import onnxruntime as ort

    big = sum(t.numel() * t.element_size() for t in module.state_dict().values()) > EXTERNAL_DATA_BYTES
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / path.name
        with warnings.catch_warnings():
            # The tracer warns about every Python int it freezes; every such int is a function of the
            # export resolution only, which the graph is specialised to by design.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(raw),
                dynamo=False,  # the TorchScript exporter: no onnxscript dependency, stable on torch 2.5+
                export_params=True,
                opset_version=opset,
                do_constant_folding=True,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
            )
        folded = Path(tmp) / ("folded_" + path.name)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        # errors only: its shape-merge warnings on the traced Resize of SAM 2's position embedding
        # (folded away right here) are noise to the user
        options.log_severity_level = 3
        if big:
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", folded.name + ".data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
        proto = onnx.load(str(folded))
        _shrink_broadcast_constants(proto, onnx.load(str(folded), load_external_data=False))
        data = path.with_name(path.name + ".data")
        for stale in (path, data):  # onnx appends to an existing weights file
            stale.unlink(missing_ok=True)
        onnx.save(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True, location=data.name,
                  size_threshold=1024)


#: elementwise operators whose operands broadcast (numpy rules)
_BROADCASTING = {"Add", "Sub", "Mul", "Div"}


def _shrink_broadcast_constants(proto, structure) -> None:
    """Store folded constants that are broadcast copies at their un-broadcast size, in place.

    Constant folding materialises ``expand``s of weight-only tensors: TinyViT's per-window bias
    (heads, N, N) expanded over every window of the batch becomes a (windows, heads, N, N) constant,
    ~130 MB of MobileSAM's encoder at 1024 px, where the weights are 20 MB. An axis of such a
    constant shrinks to 1 when the constant repeats along it and the other operand of every
    elementwise operator it feeds spans that axis (so the broadcast result keeps its shape).
    ``structure``: the same model loaded without its weights (for shape inference on big models).
    """
    from collections import defaultdict

    import numpy as np
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(structure)
    shapes = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for t in structure.graph.initializer:
        shapes[t.name] = list(t.dims)
    users = defaultdict(list)
    for node in proto.graph.node:
        for name in node.input:
            users[name].append(node)
    graph_outputs = {o.name for o in proto.graph.output}
    for init in proto.graph.initializer:
        if math.prod(init.dims) < (1 << 16) or init.name in graph_outputs:
            continue  # small constants are not worth it
        nodes = users.get(init.name, [])
        if not nodes or any(n.op_type not in _BROADCASTING or len(n.input) != 2 or n.input[0] == n.input[1] for n in nodes):
            continue
        others = [shapes.get(n.input[1] if n.input[0] == init.name else n.input[0]) for n in nodes]
        if any(o is None or None in o for o in others):
            continue
        arr = numpy_helper.to_array(init)
        small = arr
        for ax in range(arr.ndim):
            back = arr.ndim - ax  # the axis counted from the right, as broadcasting aligns them
            if arr.shape[ax] == 1 or not all(len(o) >= back and o[len(o) - back] == arr.shape[ax] for o in others):
                continue
            first = small.take([0], axis=ax)
            if np.array_equal(small, np.broadcast_to(first, small.shape)):
                small = first
        if small.shape != arr.shape:
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(small), init.name))
    _merge_duplicate_constants(proto)


def _merge_duplicate_constants(proto) -> None:
    """Keep one copy of equal large constants (the decoder's positional encoding is folded once per
    layer that adds it: 3 x 4 MB at 1024 px), in place."""
    import hashlib

    from onnx import numpy_helper

    graph_io = {v.name for v in (*proto.graph.input, *proto.graph.output)}
    first: Dict[tuple, str] = {}
    rename: Dict[str, str] = {}
    kept = []
    for init in proto.graph.initializer:
        if math.prod(init.dims) >= (1 << 16) and init.name not in graph_io:
            arr = numpy_helper.to_array(init)
            key = (arr.dtype.str, arr.shape, hashlib.sha256(arr.tobytes()).hexdigest())
            if key in first:
                rename[init.name] = first[key]
                continue
            first[key] = init.name
        kept.append(init)
    if not rename:
        return
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]


def _finalize(path: Path, meta: Dict[str, str], output_shapes: Dict[str, tuple]) -> None:
    """Record the export settings in the model's ``metadata_props`` (readable by any ONNX consumer)
    and write the outputs' shapes: ints where the export fixes them (the tracer leaves symbolic
    names for most of them), names for the dynamic ones."""
    import onnx

    # Weights stay where the exporter put them (inside, or beside the file for > 2 GB models).
    proto = onnx.load(str(path), load_external_data=False)
    foreign = sorted({n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        raise RuntimeError(f"{path.name}: the optimiser left operators of {foreign}; please report this")
    # onnxruntime lists every domain it knows; keep the standard one, the only one the graph uses
    keep = [op for op in proto.opset_import if op.domain in ("", "ai.onnx")]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)
    for out in proto.graph.output:
        shape = output_shapes.get(out.name)
        if shape is None:
            continue
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for d in shape:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = int(d)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))


def _uses_external_data(path: Path) -> bool:
    import onnx
    from onnx.external_data_helper import uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    return any(uses_external_data(t) for t in proto.graph.initializer)


def quantize_onnx(src: PathLike, dst: PathLike) -> Path:
    """Dynamic int8 quantization of one graph (MatMul / Gemm weights) with onnxruntime.

    Convolutions stay fp32: onnxruntime's CPU ``ConvInteger`` lacks int8-weight kernels, and in
    the SAM family the parameters sit in the linear layers. Activations are quantized per call
    (uint8), weights per tensor (int8).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    root = logging.getLogger()
    level = root.level
    # quantize_dynamic logs a "consider pre-processing" warning on every call; export_onnx's graphs
    # are already shape-inferred and constant-folded, which is what that pre-processing does.
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=False,
                         weight_type=QuantType.QInt8, use_external_data_format=_uses_external_data(src))
    finally:
        root.setLevel(level)
    for f in (dst, dst.with_name(dst.name + ".data")):
        if f.exists():
            f.chmod(0o644)  # onnxruntime writes the weights file private (0600)
    return dst


def export_onnx(
    model: nn.Module,
    out_dir: PathLike,
    resolution: Optional[int] = None,
    *,
    opset: int = DEFAULT_OPSET,
    quantize: bool = False,
    return_single_mask: bool = False,
    hq_token_only: bool = False,
    multimask_output: bool = False,
) -> Dict[str, Path]:
    """Write ``encoder.onnx``, ``decoder.onnx`` (and ``*.quant.onnx``) and ``basam_onnx.json``.

    Args:
        model: a :class:`basam.Sam` (SAM ViT, MobileSAM, HQ-SAM, or SAM 2 / 2.1: see the module
            docstring for its graphs), with the attention config it should be exported with
            (``model.set_attention(...)`` first); the model is not modified.
        out_dir: the folder to write into (created).
        resolution: longest image side (px) the pair works at (SAM 2: the side of the square the
            image is stretched to); default the model's ``img_size``.
        opset: ONNX opset (14-20; default 17).
        quantize: also write dynamically int8-quantized copies of both graphs.
        return_single_mask: SAM / MobileSAM: one mask per call, chosen by the official rule
            (SAM 2: by its "multimask via stability" rule).
        hq_token_only, multimask_output: HQ-SAM only, as in the official HQ export: the HQ mask
            alone (else HQ + SAM mask), and which SAM mask is fused (best multimask vs single).
    Returns:
        ``{"encoder": path, "decoder": path, "metadata": path[, "encoder_quant", "decoder_quant"]}``.
    """
    from ..predictor import check_resolution

    resolution = check_resolution(resolution if resolution is not None else model.img_size)
    if opset not in SUPPORTED_OPSETS:
        raise InputError(f"opset must be in {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}, got {opset}")
    if not model.is_hq and (hq_token_only or multimask_output):
        raise InputError(f"hq_token_only / multimask_output apply to HQ-SAM models (sam_hq_*), not {model.name}")
    if model.is_hq and return_single_mask:
        raise InputError("HQ-SAM's decoder always returns one mask; choose it with multimask_output / hq_token_only")
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
    except ImportError:  # pragma: no cover - depends on the installation
        raise InputError("ONNX export needs the onnx package: pip install 'basam[onnx]'") from None

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Everything is written into a staging folder beside the final files and moved in at the end
        # (metadata last), so a failed or killed export never leaves a mismatched pair behind.
        stage = Path(tempfile.mkdtemp(prefix=".basam-export-", dir=out))
    except OSError as e:
        raise InputError(f"cannot write to {str(out)!r}: {e.strerror or e}") from None
    try:
        staged = _export_staged(model, stage, resolution, opset=opset, quantize=quantize,
                                return_single_mask=return_single_mask, hq_token_only=hq_token_only,
                                multimask_output=multimask_output)
        for name in (ENCODER_QUANT_FILE, DECODER_QUANT_FILE):  # no stale quantized graphs of an earlier export
            for f in (out / name, out / (name + ".data")):
                if not (stage / f.name).exists():
                    f.unlink(missing_ok=True)
        moved = sorted((f for f in stage.iterdir() if f.name != METADATA_FILE), key=lambda f: f.name.endswith(".onnx"))
        for f in moved + [stage / METADATA_FILE]:  # weights files before graphs, metadata last
            os.replace(f, out / f.name)
    except OSError as e:
        raise InputError(f"cannot write the export to {str(out)!r}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {k: out / v.name for k, v in staged.items()}


#: the decoder graph's axes that vary at run time (every family): clicks, and the original image size
DECODER_DYNAMIC_AXES = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"},
                        "masks": {2: "orig_height", 3: "orig_width"}}


def _prompt_inputs(g: torch.Generator, resolution: int, grid) -> Dict[str, Tensor]:
    """The decoder's prompt inputs for tracing (drawn from ``g`` in this order): 5 clicks of every
    label kind (-1 padding to 3 box corner), a mask input on, an original size other than the
    resized one (so the crop and upscale are traced as data-dependent)."""
    n_points = 5
    return {
        "point_coords": torch.randint(0, resolution, (1, n_points, 2), generator=g).float(),
        "point_labels": torch.randint(-1, 4, (1, n_points), generator=g).float(),
        "mask_input": torch.randn(1, 1, 4 * grid[0], 4 * grid[1], generator=g),
        "has_mask_input": torch.tensor([1.0]),
        "orig_im_size": torch.tensor([1500.0, 2250.0]),
    }


def _export_staged(model: nn.Module, out: Path, resolution: int, *, opset: int, quantize: bool,
                   return_single_mask: bool, hq_token_only: bool, multimask_output: bool) -> Dict[str, Path]:
    """:func:`export_onnx`'s work, writing every file into the (empty) folder ``out``."""
    from ..models.sam2 import Sam2

    m = _export_copy(model)
    side = m.padded_size(resolution)
    if isinstance(m, Sam2):
        paths, grid, enc_shapes, dec_shapes, extra = _export_sam2_graphs(m, out, resolution, opset, return_single_mask)
        return _write_metadata(model, m, out, paths, resolution, side, grid, opset, enc_shapes, dec_shapes, quantize,
                               return_single_mask=return_single_mask, hq_token_only=False, multimask_output=False,
                               extra=extra)

    encoder = EncoderForExport(m, resolution).eval()
    # A resized image of the usual 4:3 shape (not square) so that the padding path is traced.
    g = torch.Generator().manual_seed(0)  # tracing inputs; the caller's RNG state stays untouched
    dummy = torch.rand(1, 3, resolution, max(16, resolution * 3 // 4), generator=g) * 255
    high_res = bool(getattr(m.mask_decoder, "uses_high_res", False))
    with torch.no_grad():
        enc_out = encoder(dummy)
    enc_out = enc_out if isinstance(enc_out, tuple) else (enc_out,)
    enc_outputs = ["image_embeddings"] + (["interm_embeddings"] if m.is_hq else []) \
        + (["high_res_feats_0", "high_res_feats_1"] if high_res else [])
    enc_shapes = {name: tuple(t.shape) for name, t in zip(enc_outputs, enc_out)}
    emb = enc_out[0]
    grid = tuple(emb.shape[-2:])
    paths = {"encoder": out / ENCODER_FILE, "decoder": out / DECODER_FILE, "metadata": out / METADATA_FILE}
    _onnx_export(encoder, (dummy,), paths["encoder"], ["image"], enc_outputs,
                 {"image": {2: "height", 3: "width"}}, opset)

    cls = HighResDecoderForExport if high_res else HQDecoderForExport if m.is_hq else DecoderForExport
    decoder = cls(m, resolution, grid, return_single_mask=return_single_mask, multimask_output=multimask_output,
                  hq_token_only=hq_token_only).eval()
    # the encoder's outputs in its order (decoder input names = encoder output names), then the prompts
    inputs = {name: torch.randn(shape, generator=g) for name, shape in enc_shapes.items()}
    inputs.update(_prompt_inputs(g, resolution, grid))
    dynamic = dict(DECODER_DYNAMIC_AXES)
    if m.is_hq:
        dynamic["interm_embeddings"] = {0: "num_interm"}
    _onnx_export(decoder, tuple(inputs.values()), paths["decoder"], list(inputs),
                 ["masks", "iou_predictions", "low_res_masks"], dynamic, opset)

    n_masks = 1 if (m.is_hq or return_single_mask) else m.mask_decoder.num_mask_tokens
    dec_shapes = {"masks": (1, n_masks, "orig_height", "orig_width"), "iou_predictions": (1, n_masks),
                  "low_res_masks": (1, n_masks, 4 * grid[0], 4 * grid[1])}
    return _write_metadata(model, m, out, paths, resolution, side, grid, opset, enc_shapes, dec_shapes, quantize,
                           return_single_mask=return_single_mask, hq_token_only=hq_token_only,
                           multimask_output=multimask_output, extra={"family": "sam", "high_res": high_res})


def _export_sam2_graphs(m: nn.Module, out: Path, resolution: int, opset: int, return_single_mask: bool):
    """Trace SAM 2's encoder and decoder (module docstring) into ``out``; returns the paths, the
    embedding grid, the outputs' shapes and the SAM 2 entries of the metadata."""
    encoder = Sam2EncoderForExport(m, resolution).eval()
    g = torch.Generator().manual_seed(0)  # tracing inputs; the caller's RNG state stays untouched
    dummy = torch.rand(1, 3, resolution, resolution, generator=g) * 255
    with torch.no_grad():
        emb, hr0, hr1 = encoder(dummy)
    grid = tuple(emb.shape[-2:])
    paths = {"encoder": out / ENCODER_FILE, "decoder": out / DECODER_FILE, "metadata": out / METADATA_FILE}
    enc_names = ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]
    _onnx_export(encoder, (dummy,), paths["encoder"], ["image"], enc_names, None, opset)

    decoder = Sam2DecoderForExport(m, resolution, grid, return_single_mask=return_single_mask).eval()
    inputs = {"image_embeddings": torch.randn(emb.shape, generator=g), "high_res_feats_0": torch.randn(hr0.shape, generator=g),
              "high_res_feats_1": torch.randn(hr1.shape, generator=g), **_prompt_inputs(g, resolution, grid)}
    _onnx_export(decoder, tuple(inputs.values()), paths["decoder"], list(inputs),
                 ["masks", "iou_predictions", "low_res_masks", "object_score_logits"], dict(DECODER_DYNAMIC_AXES), opset)
    enc_shapes = dict(zip(enc_names, (tuple(emb.shape), tuple(hr0.shape), tuple(hr1.shape))))
    n_masks = 1 if return_single_mask else m.mask_decoder.num_mask_tokens
    dec_shapes = {"masks": (1, n_masks, "orig_height", "orig_width"), "iou_predictions": (1, n_masks),
                  "low_res_masks": (1, n_masks, 4 * grid[0], 4 * grid[1]), "object_score_logits": (1, 1)}
    dec = m.mask_decoder
    extra = {"family": "sam2", "high_res_shapes": [list(hr0.shape), list(hr1.shape)],
             # the single-mask rule of Sam2MaskDecoder in eval; OnnxPredictor applies it to a 4-mask decoder
             "dynamic_multimask_via_stability": bool(dec.dynamic_multimask_via_stability),
             "stability_delta": float(dec.stability_delta), "stability_thresh": float(dec.stability_thresh),
             "low_res_clamp": 32.0}
    return paths, grid, enc_shapes, dec_shapes, extra


def _write_metadata(model: nn.Module, m: nn.Module, out: Path, paths: Dict[str, Path], resolution: int, side: int, grid,
                    opset: int, enc_shapes: dict, dec_shapes: dict, quantize: bool, *, return_single_mask: bool,
                    hq_token_only: bool, multimask_output: bool, extra: dict) -> Dict[str, Path]:
    """Finalize both graphs (metadata props, output shapes), quantize, write ``basam_onnx.json``."""
    cfg = m.attention_config
    meta = {
        "format": "basam-onnx/1",
        "model": getattr(model, "name", "sam"),
        **extra,
        "hq": bool(m.is_hq),
        "resolution": resolution,
        "padded_size": side,
        "grid": list(grid),
        "opset": opset,
        "attention": {**asdict(cfg), "backend": "reference"},
        "attention_preset": cfg.preset_name,
        "return_single_mask": bool(return_single_mask),
        "multimask_output": bool(multimask_output),
        "hq_token_only": bool(hq_token_only),
        "mask_threshold": float(getattr(model, "mask_threshold", 0.0)),
        # which decoder outputs are trained (basam_tiny: multimask only); OnnxPredictor follows it
        "trained_outputs": getattr(model, "trained_outputs", "all"),
        "image_format": getattr(model, "image_format", "RGB"),
        "encoder": ENCODER_FILE,
        "decoder": DECODER_FILE,
    }
    props = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items() if k not in ("encoder", "decoder")}
    _finalize(paths["encoder"], props, enc_shapes)
    _finalize(paths["decoder"], props, dec_shapes)
    if quantize:
        paths["encoder_quant"] = quantize_onnx(paths["encoder"], out / ENCODER_QUANT_FILE)
        paths["decoder_quant"] = quantize_onnx(paths["decoder"], out / DECODER_QUANT_FILE)
        meta["encoder_quant"], meta["decoder_quant"] = ENCODER_QUANT_FILE, DECODER_QUANT_FILE
    paths["metadata"].write_text(json.dumps(meta, indent=2) + "\n")
    return paths
