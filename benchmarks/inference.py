"""Inference benchmarks: ELIT forward latency per budget, and 50-step CFG sampling throughput.

    python benchmarks/inference.py latency  --model ELIT-SiT-XL/2 --budgets 1 0.5 0.25 0.0625
    python benchmarks/inference.py sampling --model SiT-XL/2                     # CFG 4, 50 Euler steps
    python benchmarks/inference.py sampling --model ELIT-SiT-XL/2 --unconditional-budget 0.0625   # cheap CFG
    python benchmarks/inference.py all --model ELIT-SiT-XL/2 --unconditional-budget none 0.0625   # one process

Random-init weights (speed does not depend on them), batch 64, bf16 weights under bf16 autocast, regional
torch.compile and CUDA-graph replay (`models.graphs.fast_inference`, as generate.py) unless switched off; the
VAE is excluded. Every shape (budget) is run before timing. Latency: median of `--repeats` forwards, each timed
between two device synchronisations (`sampling.cost.measure`, as the multibudget script); the ideal is
FLOPs(b) / FLOPs(1) x latency(1), FLOPs from torch.utils.flop_counter. Prints JSON lines.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from models import build_model  # noqa: E402
from models.flops import forward_flops  # noqa: E402
from models.graphs import fast_inference  # noqa: E402
from samplers import sample  # noqa: E402
from sampling.cost import measure  # noqa: E402
from dataio.codec import SD_VAE_FACTOR  # noqa: E402
from utils.device import ATTENTION_BACKENDS, use_attention_backend  # noqa: E402


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"      # CPU: only the smoke test of the harness


def prepare(args):
    torch.backends.cuda.matmul.allow_tf32 = True
    use_attention_backend(args.attention_backend)              # before compile (as generate.py)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    torch.manual_seed(0)
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    model = build_model(args.model, input_size=args.resolution // SD_VAE_FACTOR, **kwargs).to(DEVICE)
    if DEVICE == "cpu":
        return model, model.eval().requires_grad_(False)
    return model, fast_inference(model, compile=args.compile, graphs=args.graphs)


def latency(args, prepared=None):
    model, fwd = prepared or prepare(args)
    x, t, y = model.example_inputs(args.batch, device=DEVICE)
    budgets = [b if b <= 1 else int(b) for b in args.budgets]
    with torch.no_grad(), torch.autocast(DEVICE, torch.bfloat16):
        for b in budgets:
            for _ in range(3):
                fwd(x, t, y, budget=b)
        ms = {b: 1e3 * measure(lambda: fwd(x, t, y, budget=b), DEVICE, args.repeats)[0] for b in budgets}
    f1 = forward_flops(model, 1, budget=1.0)
    for b in budgets:
        ratio = forward_flops(model, 1, budget=b) / f1
        print(json.dumps(dict(kind="latency", model=args.model, batch=args.batch, budget=b, ms=round(ms[b], 3),
                              flops_ratio=round(ratio, 4), latency_ratio=round(ms[b] / ms[budgets[0]], 4),
                              vs_flop_proportional=round(ms[b] / (ratio * ms[budgets[0]]), 3),
                              graphs=args.graphs, compile=args.compile, attention=args.attention_backend,
                              device=device_name())),
              flush=True)


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"


def budget_arg(text: str):
    """--unconditional-budget values: a fraction, or none (standard CFG: the unconditional pass at full budget)."""
    return None if text.lower() == "none" else float(text)


def sampling(args, prepared=None):
    model, fwd = prepared or prepare(args)
    g = torch.Generator(device=DEVICE).manual_seed(0)
    noise = torch.randn(args.batch, model.in_channels, model.input_size, model.input_size, device=DEVICE, generator=g)
    y = torch.randint(0, model.num_classes, (args.batch,), device=DEVICE, generator=g)
    for ub in args.unconditional_budget:                               # one line per variant, same weights
        kw = dict(num_steps=args.steps, cfg_scale=args.cfg_scale, unconditional_budget=ub,
                  autocast_dtype=torch.bfloat16)
        sample(fwd, noise, y, **kw)                                    # warm-up: compile, capture
        sec = measure(lambda: sample(fwd, noise, y, **kw), DEVICE, args.repeats_sampling)[0]
        print(json.dumps(dict(kind="sampling", model=args.model, batch=args.batch, steps=args.steps,
                              cfg_scale=args.cfg_scale, unconditional_budget=ub, seconds=round(sec, 3),
                              img_per_s=round(args.batch / sec, 2), graphs=args.graphs, compile=args.compile,
                              attention=args.attention_backend, device=device_name())), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["latency", "sampling", "all"], help="all: latency, then sampling, one model")
    p.add_argument("--model", default="ELIT-SiT-XL/2")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.0625])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--unconditional-budget", type=budget_arg, nargs="+", default=[None],
                   help="budget(s) of the unconditional pass (cheap CFG); none = standard CFG")
    p.add_argument("--repeats-sampling", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--no-graphs", dest="graphs", action="store_false")
    p.add_argument("--model-kwargs", default="", help="JSON overrides of the registry size (smoke tests)")
    p.add_argument("--attention-backend", choices=list(ATTENTION_BACKENDS), default="auto")
    a = p.parse_args()
    prep = prepare(a)
    if a.what == "latency" or (a.what == "all" and prep[0].budget_levels):
        latency(a, prep)
    if a.what in ("sampling", "all"):
        sampling(a, prep)
