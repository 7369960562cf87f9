"""Deployment: ONNX export of the encoder / decoder pair and an onnxruntime predictor.

``export_onnx(model, out_dir, resolution)`` writes ``encoder.onnx`` and ``decoder.onnx`` (the official
SAM ONNX decoder's inputs and outputs) and ``basam_onnx.json``; :class:`OnnxPredictor` runs them
with onnxruntime behind :class:`basam.Predictor`'s ``set_image`` / ``predict``. Needs the
``basam[onnx]`` extra (``onnx``, ``onnxruntime``). The contract: :mod:`basam.export.exporter`.
"""

from .exporter import export_onnx, quantize_onnx
from .runtime import OnnxPredictor

__all__ = ["OnnxPredictor", "export_onnx", "quantize_onnx"]
