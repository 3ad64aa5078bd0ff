"""Where a training step spends its GPU time: torch.profiler over two steps, kernels grouped by kind.

    python benchmarks/profile_train_step.py            # SiT-XL/2, batch 64, bf16, regional compile
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


def train_profile(name="SiT-XL/2", batch=64):
    torch.manual_seed(0)
    model = build_model(name).to(dev).compile_regions()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ema = [p.detach().clone() for p in params]
    x = torch.randn(batch, 4, 32, 32, device=dev); y = torch.randint(0, 1000, (batch,), device=dev)

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
    del model, opt, ema, params; torch.cuda.empty_cache()


if __name__ == "__main__":
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    train_profile("SiT-XL/2")
