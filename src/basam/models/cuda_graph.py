"""CUDA-graph replay of a module's inference forward, one graph per input shape.

Why: at 1024 px a ViT-B encoder forward is a few hundred small kernels; launched one by one from
Python, the CPU (launch overhead, the attention pre-pass, Triton's launcher) takes longer than the
GPU needs to run them. A captured graph replays them all with one call. The cost: each captured
shape keeps its activations in a private memory pool, so only a few shapes are kept.

Used by :meth:`basam.models.sam.Sam.encode` when ``Sam.cuda_graphs`` is on; inference only (no
autograd), CUDA only; anything else runs the module normally.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Tuple

import torch
from torch import Tensor, nn

__all__ = ["GraphCache"]


def _clone(out: Any) -> Any:
    """Copy a graph's static outputs so that the next replay cannot overwrite what the caller holds."""
    if isinstance(out, Tensor):
        return out.clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_clone(o) for o in out)
    return out


class GraphCache:
    """Captured graphs of ``fn(x)`` keyed on (shape, dtype, device) of ``x``; at most ``max_graphs``.

    ``fn`` must be a pure function of ``x`` and of tensors that stay at the same address (a module's
    parameters and buffers): call :meth:`clear` whenever those are replaced (``module.to(...)``) or the
    computation changes (a new attention config).
    """

    def __init__(self, max_graphs: int = 3, warmup: int = 2) -> None:
        self.max_graphs = max_graphs
        self.warmup = warmup
        self._graphs: "OrderedDict[Tuple, Tuple[torch.cuda.CUDAGraph, Tensor, Any]]" = OrderedDict()

    def clear(self) -> None:
        self._graphs.clear()

    def __len__(self) -> int:
        return len(self._graphs)

    @staticmethod
    def usable(x: Tensor) -> bool:
        return x.is_cuda and not torch.is_grad_enabled()

    def __call__(self, fn: Callable[[Tensor], Any], x: Tensor) -> Any:
        if not self.usable(x):
            return fn(x)
        key = (tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(fn, x)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return _clone(static_out)

    def _capture(self, fn: Callable[[Tensor], Any], x: Tensor):
        static_in = x.clone()
        # Warm-up on a side stream (required before capture): kernels compile and autotune here.
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                fn(static_in)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn(static_in)
        return graph, static_in, static_out


def graph_cache_of(module: nn.Module) -> GraphCache:
    cache = module.__dict__.get("_graph_cache")
    if cache is None:
        cache = GraphCache()
        module.__dict__["_graph_cache"] = cache
    return cache
