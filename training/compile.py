"""torch.compile for training: regional compilation, a persistent compile cache, and shared graphs for budgets.

    compile_for_training(model, cfg)       # what Trainer does when cfg.compile

Warm-up is what a resumed run pays before it trains at speed. The knobs compute the same function (kernel
choices aside: max-autotune may pick other GEMM kernels; `tests/test_perf_optins.py`, `tests/test_compile.py`):

- `compile_cache` ("auto" | "off" | DIR): Inductor's FX-graph cache, the AOTAutograd cache (forward and backward
  graphs) and the Triton kernels are kept in one folder. "auto" puts it in OUTPUT_DIR/EXP_NAME/compile_cache,
  beside the checkpoints, so a job resumed on another node of a cluster (an empty /tmp) finds the compiled
  kernels of the first launch and only re-traces the Python (seconds per graph) instead of re-generating and
  re-compiling every kernel. Torch's default cache lives in /tmp and survives only on the same machine.
- `compile_dynamic`: automatic dynamic shapes instead of one static graph per shape. An ELIT multibudget run
  trains 16 token counts in its core blocks (and 16 kept-latent counts in Read/Write); with static shapes each
  compiles its own forward and backward graph (about 14 s each on an H100, 221 s in all, BENCHMARKS.md). With
  automatic dynamic shapes the second token count recompiles once with a symbolic length that every later
  count reuses. Kernels over a symbolic length can be slightly slower: `benchmarks/perf_round2.py` measures
  both ways.
- `compile_mode`: torch.compile's `mode` (None = default; "max-autotune-no-cudagraphs" autotunes GEMM
  templates; "reduce-overhead" adds CUDA graphs, for fixed shapes: small models whose step is launch-bound).
- `compile_scope`: "regions" (every block, the head, ELIT's Read/Write; the glue stays eager) or "model"
  (the whole forward as one graph: fewer launches and guards for small models with one input shape; a
  family with budgets or stages recompiles the whole model per budget or stage).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from training.options import experiment_dir

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"          # Inductor's cache root; Triton's cache defaults to ROOT/triton


def cache_dir(setting: Optional[str], exp_dir: str) -> Optional[str]:
    """The compile-cache folder for `setting` ("auto" | "off" | a folder) of a run in `exp_dir`; None = off."""
    if setting is None or setting == "off":
        return None
    if setting == "auto":
        return os.path.join(exp_dir, "compile_cache")
    return os.path.abspath(os.path.expanduser(setting))


def use_compile_cache(path: Optional[str]) -> Optional[str]:
    """Keep Inductor's FX-graph cache, the AOTAutograd cache and Triton's kernels in `path` (made if missing).

    Call before the first compilation of the process. None leaves torch's defaults. Returns the folder.
    """
    if path is None:
        return None
    os.makedirs(path, exist_ok=True)
    os.environ[CACHE_ENV] = path
    os.environ.pop("TRITON_CACHE_DIR", None)        # follow the Inductor root (ROOT/triton/DEVICE)
    import torch._functorch.config as functorch_config   # torch's own config modules (always present)
    import torch._inductor.config as inductor_config
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return path


def compile_for_training(model: torch.nn.Module, cfg, exp_dir: Optional[str] = None) -> torch.nn.Module:
    """Regional torch.compile of `model` in place as `cfg` (compile_cache, compile_dynamic, compile_mode) asks."""
    use_compile_cache(cache_dir(cfg.compile_cache, exp_dir or experiment_dir(cfg)))
    # One graph per (region, shape): ELIT's 16 budgets x forward/backward exceed the default limit of 8.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    kwargs = dict(dynamic=None if cfg.compile_dynamic else False)
    if cfg.compile_mode:
        kwargs["mode"] = cfg.compile_mode
    if cfg.compile_scope == "model":
        model.compile(**kwargs)                         # nn.Module.compile: in place, the module's own call
        return model
    return model.compile_regions(**kwargs)
