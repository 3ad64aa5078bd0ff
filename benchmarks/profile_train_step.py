"""Where a training step spends its GPU time: torch.profiler over two steps, kernels grouped by kind.

    python benchmarks/profile_train_step.py            # SiT-XL/2, batch 64, bf16, regional compile
    python benchmarks/profile_train_step.py --model SiT-S/2 --input-size 32 --channels 1 --batch 256  # the study's

Prints the table, then one JSON line (kind "profile": GPU ms per step by category).
"""
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from models import build_model

torch.backends.cuda.matmul.allow_tf32 = True
torch._dynamo.config.cache_size_limit = 128
dev = "cuda"
OUT = os.environ.get("OUT", ".")


def train_profile(name="SiT-XL/2", batch=64, input_size=32, channels=4, classes=1000):
    torch.manual_seed(0)
    model = build_model(name, input_size=input_size, in_channels=channels, num_classes=classes).to(dev).compile_regions()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ema = [p.detach().clone() for p in params]
    x = torch.randn(batch, channels, input_size, input_size, device=dev)
    y = torch.randint(0, classes, (batch,), device=dev)

    def step():
        t = torch.rand(batch, device=dev); eps = torch.randn_like(x)
        xt = (1 - t[:, None, None, None]) * x + t[:, None, None, None] * eps
        with torch.autocast("cuda", torch.bfloat16):
            v = model(xt, t, y)
        F.mse_loss(v.float(), eps - x).backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1e-4)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    rows = sorted(((e.key, e.device_time_total / 2 / 1000, e.count // 2) for e in events if e.device_time_total > 0),
                  key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    cats = {}
    for k, ms, n in rows:
        kl = k.lower()
        cat = ("gemm" if any(s in kl for s in ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas")) else
               "attention" if any(s in kl for s in ("flash", "fmha", "attention", "cudnn")) else
               "optimizer" if any(s in kl for s in ("adam", "foreach", "lerp", "multi_tensor")) else
               "triton" if "triton" in kl else "other")
        cats[cat] = cats.get(cat, 0) + ms
    print(f"{name} train step: {total:.1f} ms GPU; by category:", {k: round(v, 1) for k, v in cats.items()})
    for k, ms, n in rows[:30]:
        print(f"  {ms:7.2f} ms  x{n:4d}  {k[:110]}")
    kernels = sum(n for _, _, n in rows)
    print(json.dumps(dict(kind="profile", model=name, batch=batch, input_size=input_size, channels=channels,
                          gpu_ms=round(total, 2), kernels_per_step=kernels,
                          by_category={k: round(v, 2) for k, v in cats.items()},
                          device=torch.cuda.get_device_name(), torch=torch.__version__)), flush=True)
    del model, opt, ema, params; torch.cuda.empty_cache()


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SiT-XL/2")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--input-size", type=int, default=32, help="model input side (latents: image side / 8)")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--classes", type=int, default=1000)
    a = p.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    train_profile(a.model, a.batch, a.input_size, a.channels, a.classes)
