"""Issue 17 (performance, round 2): every row of the issue's table in one time-boxed run on one GPU.

    export PYTHONUNBUFFERED=1; python benchmarks/perf_round2.py --out $OUT                 # < 9 min on an H200
    python benchmarks/perf_round2.py --out $OUT --sections sit_xl,elit_full --before .bench_before
    python benchmarks/perf_round2.py --out /tmp/x --smoke                                  # CPU: the harness only

Each section runs the project's own harness (`benchmarks/train_throughput.py`, `benchmarks/inference.py`,
`benchmarks/encode_throughput.py`) in a fresh process with a time limit, in priority order; a section that no
longer fits the remaining budget is skipped, one that runs past its limit is stopped (its process group) and
recorded as such. After every section the JSON lines so far are in OUT/perf_round2.jsonl, the table in
OUT/perf_round2.md and every child's output in OUT/perf_round2.log, so a kill still leaves the results.

Compile warm-up: `*_first` sections start from an empty compile cache (a fresh folder), `*_restart` sections
are a new process on the same folder: the warm-up a resumed train.py run pays (training/compile.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"depth": 3, "hidden_size": 32, "num_heads": 2}                 # --smoke: every model tiny, on the CPU
TINY_ELIT = dict(TINY, elit_head_depth=1, elit_tail_depth=1, elit_group_size=4)   # 16 budget levels at 128 px


class Section:
    def __init__(self, name, row, argv, min_s, cap_s, tree="after", after=None, gpu_only=False, instead_of=None):
        self.name, self.row, self.argv, self.min_s, self.cap_s, self.tree = name, row, argv, min_s, cap_s, tree
        self.after = after              # only run when this section produced results (a restart needs its first)
        self.instead_of = instead_of    # only run when this section exited with an error (a fallback placed early)
        self.gpu_only = gpu_only        # skipped by --smoke


def sections(cache: str, smoke: bool) -> list[Section]:
    def train(model, *flags, extra=(), resolution=256, batch=64, steps=30):
        argv = ["benchmarks/train_throughput.py", "--model", model]
        if smoke:
            kw = TINY_ELIT if model.startswith("ELIT") else TINY
            argv += ["--resolution", "128" if resolution != 32 else "32", "--batch", "2", "--steps", "2",
                     "--model-kwargs", json.dumps(kw)]
            compiled = "--compile-dynamic" in extra            # the tiny dynamic run exercises the cache path
            argv += [] if compiled else ["--no-compile"]
        else:
            argv += ["--resolution", str(resolution), "--batch", str(batch), "--steps", str(steps)]
        argv += list(flags)
        return argv + (["--", *extra] if extra else [])

    def infer(what, model, *flags):
        argv = ["benchmarks/inference.py", what, "--model", model, *flags]
        if smoke:
            kw = TINY_ELIT if model.startswith("ELIT") else TINY
            argv += ["--resolution", "128", "--batch", "2", "--steps", "2", "--repeats", "1", "--repeats-sampling",
                     "1", "--model-kwargs", json.dumps(kw)]
        return argv

    c = lambda name: ["--compile-cache", os.path.join(cache, name)]   # noqa: E731
    mb = dict(extra=("--compile-dynamic", *c("mb_dynamic")), steps=64)
    small = dict(pixels=("--pixels", "1", "--min-warmup-steps", "10"))
    S = Section
    return [
        S("sit_xl", "SiT-XL/2 training, batch 64", train("SiT-XL/2", extra=c("sit")), 40, 100),
        S("elit_full", "ELIT-SiT-XL/2 training, full budget", train("ELIT-SiT-XL/2"), 40, 100),
        S("mb_dynamic_first", "ELIT multibudget, dynamic shapes, empty cache",
          train("ELIT-SiT-XL/2", "--multibudget", **mb), 80, 210),
        S("mb_dynamic_restart", "ELIT multibudget, dynamic shapes, restart (same cache)",
          train("ELIT-SiT-XL/2", "--multibudget", **mb), 40, 120, after="mb_dynamic_first"),
        S("mb_static_first", "ELIT multibudget, static shapes, empty cache (in place of a dynamic run that errored)",
          train("ELIT-SiT-XL/2", "--multibudget", steps=64, extra=c("mb_static")), 150, 300,
          instead_of="mb_dynamic_first"),
        S("infer_sit", "SiT-XL/2 sampling, 50 Euler steps, CFG 4", infer("sampling", "SiT-XL/2"), 45, 110),
        S("infer_elit", "ELIT-SiT-XL/2 latency per budget; sampling standard and cheap CFG (1/16)",
          infer("all", "ELIT-SiT-XL/2", "--unconditional-budget", "none", "0.0625"), 70, 150),
        S("small_default", "SiT-S/2, 32x32x1 pixels, batch 256, regional compile",
          train("SiT-S/2", *small["pixels"], resolution=32, batch=256, steps=50), 30, 90),
        S("small_whole_cudagraphs", "SiT-S/2 small, whole-model compile, reduce-overhead (CUDA graphs)",
          train("SiT-S/2", *small["pixels"], resolution=32, batch=256, steps=50,
                extra=("--compile-scope", "model", "--compile-mode", "reduce-overhead")), 35, 100),
        S("encode", "dataset_tools.py encode, SD-VAE architecture, 256 px, PNG decode included",
          ["benchmarks/encode_throughput.py"] + (["--tiny", "--images", "16", "--resolution", "32", "--batch-size",
                                                  "4", "--num-workers", "0"] if smoke else
                                                 ["--images", "4096", "--batch-size", "128"]), 40, 110),
        S("dfm", "DFM-SiT-XL/2 training", train("DFM-SiT-XL/2"), 40, 100),
        S("sit_512", "SiT-XL/2 training at 512 px, batch 16", train("SiT-XL/2", resolution=512, batch=16), 40, 100),
        S("profile_small", "torch.profiler of one SiT-S/2 small step (where the time goes)",
          ["benchmarks/profile_train_step.py", "--model", "SiT-S/2", "--input-size", "32", "--channels", "1",
           "--classes", "10", "--batch", "256"], 30, 90, gpu_only=True),
        S("small_cudagraphs", "SiT-S/2 small, compile mode reduce-overhead (CUDA graphs)",
          train("SiT-S/2", *small["pixels"], resolution=32, batch=256, steps=50,
                extra=("--compile-mode", "reduce-overhead")), 35, 100),
        S("small_whole", "SiT-S/2 small, whole-model compile, default mode",
          train("SiT-S/2", *small["pixels"], resolution=32, batch=256, steps=50,
                extra=("--compile-scope", "model")), 35, 100),
        S("sit_xl_restart", "SiT-XL/2 training, restart (same compile cache as sit_xl)",
          train("SiT-XL/2", extra=c("sit")), 30, 90, after="sit_xl"),
        S("sit_xl_bf16_residual", "SiT-XL/2 training, --bf16-residual (opt-in numerics change)",
          train("SiT-XL/2", extra=("--bf16-residual",)), 40, 100),
        S("small_bf16_residual", "SiT-S/2 small, regional compile, --bf16-residual (opt-in numerics change)",
          train("SiT-S/2", *small["pixels"], resolution=32, batch=256, steps=50, extra=("--bf16-residual",)), 30, 90),
        S("sit_xl_cudnn", "SiT-XL/2 training, --attention-backend cudnn (opt-in kernel choice)",
          train("SiT-XL/2", extra=("--attention-backend", "cudnn")), 40, 100),
        S("infer_sit_cudnn", "SiT-XL/2 sampling, 50 Euler steps, CFG 4, --attention-backend cudnn",
          infer("sampling", "SiT-XL/2", "--attention-backend", "cudnn"), 45, 110),
        S("sit_xl_cudnn_bf16_residual", "SiT-XL/2 training, --attention-backend cudnn --bf16-residual",
          train("SiT-XL/2", extra=("--attention-backend", "cudnn", "--bf16-residual")), 40, 100),
        S("sit_xl_cudagraphs", "SiT-XL/2 training, regional compile, mode reduce-overhead (CUDA graphs)",
          train("SiT-XL/2", extra=("--compile-mode", "reduce-overhead")), 40, 120),
        S("small_autotune", "SiT-S/2 small, compile mode max-autotune-no-cudagraphs",
          train("SiT-S/2", *small["pixels"], resolution=32, batch=256, steps=50,
                extra=("--compile-mode", "max-autotune-no-cudagraphs")), 60, 150),
        S("profile_sit_xl", "torch.profiler of one SiT-XL/2 step", ["benchmarks/profile_train_step.py"], 40, 100,
          gpu_only=True),
        S("before_sit_xl", "before: SiT-XL/2 training, batch 64", train("SiT-XL/2"), 40, 100, tree="before"),
        S("before_elit_full", "before: ELIT-SiT-XL/2 full budget", train("ELIT-SiT-XL/2"), 40, 100, tree="before"),
        S("mb_static_first", "ELIT multibudget, static shapes, empty cache",
          train("ELIT-SiT-XL/2", "--multibudget", steps=64, extra=c("mb_static")), 240, 300),
        S("mb_static_restart", "ELIT multibudget, static shapes, restart (same cache)",
          train("ELIT-SiT-XL/2", "--multibudget", steps=64, extra=c("mb_static")), 60, 150, after="mb_static_first"),
    ]


# ----------------------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, args):
        self.args, self.t0 = args, time.time()
        os.makedirs(args.out, exist_ok=True)
        self.jsonl = os.path.join(args.out, "perf_round2.jsonl")
        self.md = os.path.join(args.out, "perf_round2.md")
        self.log = open(os.path.join(args.out, "perf_round2.log"), "a")
        self.records, self.status = [], {}
        self.env = self.environment()

    def say(self, text: str) -> None:
        line = f"[{time.time() - self.t0:6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def environment(self) -> dict:
        env = dict(started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), python=sys.version.split()[0])
        try:
            env["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True,
                                        timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["gpu"] = "none (nvidia-smi not found)"
        try:
            env["torch"] = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__, "
                                           "torch.version.cuda)"], capture_output=True, text=True,
                                          timeout=120).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["torch"] = "?"
        return env

    def run(self, sec: Section, timeout: float) -> None:
        cwd = HERE if sec.tree == "after" else os.path.abspath(self.args.before)
        cmd = [sys.executable, *sec.argv]
        self.say(f"{sec.name}: start (limit {timeout:.0f} s): {' '.join(sec.argv)}" + ("" if cwd == HERE else f" in {cwd}"))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)                # its own process group: stoppable as one
        found, tail = [], []

        def drain():
            for line in proc.stdout:
                self.log.write(f"{sec.name}| {line}")
                tail.append(line.rstrip())
                del tail[:-12]
                if line.startswith("{"):
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    rec.update(section=sec.name, tree=sec.tree, wall_s=round(time.time() - start, 1))
                    found.append(rec)
                    self.records.append(rec)
                    with open(self.jsonl, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(f"    {sec.name}: {line.strip()}", flush=True)
            self.log.flush()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
            state = "ok" if proc.returncode == 0 and found else f"error (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)                        # the group this runner started
            proc.wait()
            state = f"stopped at its limit ({timeout:.0f} s)"
        reader.join(timeout=10)
        wall = time.time() - start
        self.status[sec.name] = dict(state=state, wall_s=round(wall, 1), results=len(found),
                                     tail=[] if state == "ok" else tail[-6:])
        self.say(f"{sec.name}: {state}, {wall:.1f} s, {len(found)} result line(s)")
        self.write_table()

    def skip(self, sec: Section, why: str) -> None:
        self.status[sec.name] = dict(state=f"skipped ({why})", wall_s=0, results=0, tail=[])
        self.say(f"{sec.name}: skipped ({why})")

    # ------------------------------------------------------------------------------------------------------
    def get(self, section, **match):
        for r in self.records:
            if r["section"] == section and all(r.get(k) == v for k, v in match.items()):
                return r
        return None

    def write_table(self) -> None:
        g = self.get
        val = lambda r, k, fmt="{:.1f}": "-" if r is None or r.get(k) is None else fmt.format(r[k])  # noqa: E731

        def ratio(a, b, ka="img_per_s", kb="img_per_s"):
            return "-" if a is None or b is None or not b.get(kb) else f"{a[ka] / b[kb]:.3f}x"
        rows = [
            ("SiT-XL/2 training img/s", val(g("before_sit_xl"), "img_per_s"), val(g("sit_xl"), "img_per_s"), ">= 600"),
            ("ELIT-SiT-XL/2 full budget img/s", val(g("before_elit_full"), "img_per_s"), val(g("elit_full"), "img_per_s"),
             ">= 575"),
            ("ELIT multibudget img/s (dynamic shapes / static)", "-",
             f"{val(g('mb_dynamic_restart') or g('mb_dynamic_first'), 'img_per_s')} / "
             f"{val(g('mb_static_restart') or g('mb_static_first'), 'img_per_s')}", "-"),
            ("ELIT multibudget / its own full budget (dynamic / static)", "-",
             f"{ratio(g('mb_dynamic_restart') or g('mb_dynamic_first'), g('elit_full'))} / "
             f"{ratio(g('mb_static_restart') or g('mb_static_first'), g('elit_full'))}", ">= 1.40x"),
            ("multibudget compile warm-up s, first launch (dynamic / static)", "-",
             f"{val(g('mb_dynamic_first'), 'warmup_s')} / {val(g('mb_static_first'), 'warmup_s')}", "<= 120"),
            ("multibudget compile warm-up s, restart (dynamic / static)", "-",
             f"{val(g('mb_dynamic_restart'), 'warmup_s')} / {val(g('mb_static_restart'), 'warmup_s')}", "<= 60"),
            ("SiT-XL/2 compile warm-up s, first / restart", "-",
             f"{val(g('sit_xl'), 'warmup_s')} / {val(g('sit_xl_restart'), 'warmup_s')}", "-"),
            ("ELIT latency / FLOP-proportional at 1/16", "-",
             val(g("infer_elit", kind="latency", budget=0.0625), "vs_flop_proportional", "{:.3f}x"), "<= 1.10x"),
            ("sampling SiT-XL/2, 50 Euler, CFG 4, img/s", "-", val(g("infer_sit", kind="sampling"), "img_per_s", "{:.2f}"),
             ">= 24"),
            ("cheap CFG (1/16) / standard CFG, ELIT-SiT-XL/2", "-",
             ratio(g("infer_elit", kind="sampling", unconditional_budget=0.0625),
                   g("infer_elit", kind="sampling", unconditional_budget=None)), ">= 1.50x"),
            ("DFM-SiT-XL/2 training img/s", "-", val(g("dfm"), "img_per_s"), ">= 540"),
            ("SiT-XL/2 512 px batch 16 img/s", "-", val(g("sit_512"), "img_per_s"), ">= 135"),
            ("SiT-S/2 32x32x1 batch 256 img/s, regional compile: default / reduce-overhead / "
             "max-autotune-no-cudagraphs", "-",
             " / ".join(val(g(s), "img_per_s") for s in ("small_default", "small_cudagraphs", "small_autotune")),
             ">= 10000"),
            ("SiT-S/2 small, whole-model compile: default / reduce-overhead", "-",
             " / ".join(val(g(s), "img_per_s") for s in ("small_whole", "small_whole_cudagraphs")), ">= 10000"),
            ("encode img/s, channels-last bf16 / fp32 (TF32); bf16 NCHW", "-",
             f"{val(g('encode', precision='bf16', channels_last=True), 'img_per_s')} / "
             f"{val(g('encode', precision='fp32', channels_last=True), 'img_per_s')}; "
             f"{val(g('encode', precision='bf16', channels_last=False), 'img_per_s')}", ">= 1000"),
            ("peak memory SiT-XL/2 batch 64, GiB", val(g("before_sit_xl"), "peak_mem_gib", "{:.2f}"),
             val(g("sit_xl"), "peak_mem_gib", "{:.2f}"), "<= 29.4"),
            ("profile GPU ms per step (kernels): SiT-S/2 small / SiT-XL/2", "-",
             f"{val(g('profile_small'), 'gpu_ms')} ({val(g('profile_small'), 'kernels_per_step', '{}')}) / "
             f"{val(g('profile_sit_xl'), 'gpu_ms')} ({val(g('profile_sit_xl'), 'kernels_per_step', '{}')})", "-"),
            ("SiT-XL/2 --bf16-residual img/s (opt-in) / peak GiB", "-",
             f"{val(g('sit_xl_bf16_residual'), 'img_per_s')} / {val(g('sit_xl_bf16_residual'), 'peak_mem_gib', '{:.2f}')}",
             "-"),
            ("SiT-S/2 small --bf16-residual img/s (opt-in)", "-", val(g("small_bf16_residual"), "img_per_s"), "-"),
            ("SiT-XL/2 training img/s, opt-in: cudnn attention / + bf16 residual / reduce-overhead", "-",
             " / ".join(val(g(s), "img_per_s") for s in ("sit_xl_cudnn", "sit_xl_cudnn_bf16_residual",
                                                         "sit_xl_cudagraphs")), ">= 600"),
            ("sampling SiT-XL/2 img/s, cudnn attention (opt-in)", "-",
             val(g("infer_sit_cudnn", kind="sampling"), "img_per_s", "{:.2f}"), ">= 24"),
        ]
        lines = ["# perf_round2 (issue 17)", "",
                 f"GPU: {self.env['gpu']}; torch {self.env['torch']}; python {self.env['python']}; "
                 f"started {self.env['started']}; elapsed {time.time() - self.t0:.0f} s", "",
                 "| workload | before | after | target |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        lines += ["", "| section | state | wall s | result lines | warm-up s |", "|---|---|---|---|---|"]
        for name, st in self.status.items():
            r = g(name)
            lines.append(f"| {name} | {st['state']} | {st['wall_s']} | {st['results']} | {val(r, 'warmup_s')} |")
        for name, st in self.status.items():
            if st["tail"]:
                lines += ["", f"{name}, last lines:", "", *["    " + t[:300] for t in st["tail"]]]
        with open(self.md + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(self.md + ".tmp", self.md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for the 3 result files")
    p.add_argument("--sections", default="", help="comma-separated section names (default: all, in priority order)")
    p.add_argument("--budget-s", type=float, default=500.0, help="wall-clock budget of the whole run")
    p.add_argument("--before", default="", help="an older tree (git archive) for the before_* sections")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the harness, no numbers")
    p.add_argument("--list", action="store_true", help="print the sections and exit")
    args = p.parse_args(argv)
    cache = tempfile.mkdtemp(prefix="perf_round2_cache_")              # never under OUT (it is large)
    table = sections(cache, args.smoke)
    if args.list:
        for s in table:
            when = f"  [only if {s.instead_of} fails]" if s.instead_of else ""
            print(f"{s.name:24s} {s.min_s:4d}-{s.cap_s:4d} s  {s.row}{when}")
        return 0
    chosen = [s for s in table if not args.sections or s.name in args.sections.split(",")]
    if args.sections:                                                  # named sections run as asked
        chosen = [s for s in chosen if not s.instead_of]
    unknown = set(filter(None, args.sections.split(","))) - {s.name for s in table}
    if unknown:
        print(f"unknown section(s): {', '.join(sorted(unknown))}; see --list", file=sys.stderr)
        return 2
    runner = Runner(args)
    runner.say(f"perf_round2: {len(chosen)} sections, budget {args.budget_s:.0f} s; {json.dumps(runner.env)}")
    try:
        for sec in chosen:
            left = args.budget_s - (time.time() - runner.t0)
            if sec.name in runner.status:
                continue                                               # a fallback copy that already ran
            if sec.instead_of and not runner.status.get(sec.instead_of, {}).get("state", "").startswith("error"):
                continue                                               # only after an error (not a slow run)
            if sec.gpu_only and args.smoke:
                runner.skip(sec, "GPU only")
            elif sec.tree == "before" and not (args.before and os.path.isdir(args.before)):
                runner.skip(sec, "no --before tree")
            elif sec.after and runner.status.get(sec.after, {}).get("state") != "ok":
                runner.skip(sec, f"needs {sec.after}")
            elif left < sec.min_s:
                runner.skip(sec, f"{left:.0f} s left, needs about {sec.min_s} s")
            else:
                runner.run(sec, min(sec.cap_s, left))
    finally:
        runner.write_table()
        shutil.rmtree(cache, ignore_errors=True)
        runner.say(f"done in {time.time() - runner.t0:.0f} s: {runner.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
