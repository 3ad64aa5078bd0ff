"""Fast inference on a GPU: bf16 weights, regional torch.compile, CUDA-graph replay (`fast_inference`).

`GraphedModel` replays one captured CUDA graph per (input shapes, budget, options).

At small budgets an ELIT forward is short enough that launching its few hundred kernels from Python costs as
much as running them; replaying a captured graph removes that overhead (the sampler's step loop then does
two copies and one replay per model call). Use only for inference with fixed shapes:

    fast = GraphedModel(model)               # model in eval mode, on a CUDA device
    with torch.autocast("cuda", torch.bfloat16):
        v = fast(x, t, y, budget=0.25)       # first call per shape/budget captures, later calls replay

Attributes (num_classes, family, budget_levels, ...) are the wrapped model's. Outputs are fresh tensors
(copies of the graph's static output), so callers may keep them across calls.
"""

from __future__ import annotations

import torch


def _flat(xs):
    return list(xs) if isinstance(xs, (list, tuple)) else [xs]


class GraphedModel:
    """Callable like the model; captures a CUDA graph per distinct call signature and replays it."""

    def __init__(self, model: torch.nn.Module, warmup: int = 2):
        self.model, self.warmup, self.graphs = model, warmup, {}
        self.pool = None

    def __getattr__(self, name):                      # model attributes: num_classes, family, budget_levels...
        return getattr(self.__dict__["model"], name)

    def __call__(self, x, t, y, **kwargs):
        tensors = _flat(x) + [t, y]
        key = (tuple((tuple(a.shape), a.dtype) for a in tensors), tuple(sorted(kwargs.items())),
               torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(x, t, y, kwargs)
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, tensors):
            dst.copy_(src)
        graph.replay()
        return [o.clone() for o in static_out] if isinstance(x, (list, tuple)) else static_out[0].clone()

    def _capture(self, x, t, y, kwargs):
        static_in = [a.clone() for a in _flat(x) + [t, y]]
        *sx, st, sy = static_in
        sx = sx if isinstance(x, (list, tuple)) else sx[0]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(self.warmup):                # compile / autotune / allocate outside the capture
                self.model(sx, st, sy, **kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), torch.no_grad():
            out = self.model(sx, st, sy, **kwargs)
        self.pool = graph.pool()                        # graphs share one memory pool
        return graph, static_in, _flat(out)


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """Parameters to `dtype` in place; buffers (the positional tables) stay float32, so under autocast the
    residual stream keeps the precision it has in training while no weight is re-cast on every call."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model


def fast_inference(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16, compile: bool = True,
                   graphs: bool = True):
    """The sampling path on CUDA: bf16 weights, compiled blocks, graph replay. Call it under autocast(dtype).

    Returns a callable with the model's attributes (a `GraphedModel` when `graphs`).
    """
    model = cast_parameters(model.eval().requires_grad_(False), dtype)
    if compile:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        model.compile_regions()
    return GraphedModel(model) if graphs else model
