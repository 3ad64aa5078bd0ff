"""The state of one study run (`Study`): resolved settings, clocks, what results.json holds, and its bookkeeping
(progress lines, the stage runner, incremental saves). The stages are functions of a Study (data.py,
training.py, measure.py, report.py); study.py runs them in order."""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Callable, Optional

import torch

from evaluation.batches import write_json
from studies.fmnist.claims import THRESHOLDS
from studies.fmnist.options import GROUP_SIZE, MODELS, FashionMnistStudyConfig, mode, resolve_presets
from utils.cli import to_dict
from utils.errors import UserError

REPORT_NAME = "fashion_mnist_study.md"              # OUT/REPORT_NAME, its files in OUT/FILES_DIR/
FILES_DIR = "fashion_mnist_study"
OUT_FILES = ("results.json", "curves.png", "quality_vs_gflops.png", "grids.png", "study.log")
REPORT_RESERVE_S = 25.0        # kept free before the hard limit for plots, report and the last save


class Skipped(Exception):
    """A stage whose prerequisites failed."""


def process_start_time() -> float:
    """Wall-clock time this process started (Linux: /proc), so the time budget counts the imports too."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])        # field 22: starttime, clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        start = boot + ticks / os.sysconf("SC_CLK_TCK")
        return start if 0 <= time.time() - start < 3600 else time.time()
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class Study:
    """One run of the study over one resolved configuration; `results` is what results.json holds."""

    def __init__(self, cfg: FashionMnistStudyConfig, start: Optional[float] = None):
        """`start`: when the time budget began (default: now)."""
        self.start = time.time() if start is None else start
        self.cfg = cfg
        self.p = resolve_presets(cfg)
        default = "cuda" if torch.cuda.is_available() and not cfg.smoke else "cpu"
        self.device = torch.device(cfg.device or default)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no GPU is visible")
        self.planned = cfg.time_budget_minutes * 60.0
        self.hard = (cfg.max_minutes if cfg.max_minutes is not None else cfg.time_budget_minutes + 0.5) * 60.0
        self.work, self.out = os.path.abspath(cfg.work), os.path.abspath(cfg.out)
        self.files = os.path.join(self.out, FILES_DIR)
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(self.files, exist_ok=True)
        for name in OUT_FILES:                                  # a rerun never mixes in an older run's outputs
            if os.path.exists(os.path.join(self.files, name)):
                os.unlink(os.path.join(self.files, name))
        self.report_path = os.path.join(self.out, REPORT_NAME)
        self.log_path = os.path.join(self.files, "study.log")
        self.status: dict[str, str] = {}
        self.data: dict = {}                                    # arrays: train/test images and labels
        self.runs: dict = {}                                    # model key -> fastloop.ModelRun
        self.evals: dict = {}                                   # model key -> the sampling model (EMA copy)
        self.samples: dict = {}                                 # row key -> uint8 images of the final point
        self.rows: list[dict] = []
        self.flops: dict = {}                                   # model key -> {budget or None: GFLOPs/forward}
        self.points: list[int] = []                             # curve steps
        self.plan: dict = {}
        self.calibration: dict = {}                             # measured evaluation costs (schedule.replan)
        self.final_step = 0
        self.net = self.ref = None                              # feature network, test-set statistics
        b = self.p.sample_batch_size                            # sample counts: whole batches (one graph each)
        self.curve_n, self.final_n = (n if n < b else n // b * b for n in (self.p.curve_samples, self.p.num_samples))
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        self.results = dict(
            study="Fashion-MNIST: SiT-S/2 vs ELIT-SiT-S/2 single budget vs ELIT-SiT-S/2 multibudget",
            mode=mode(cfg), device=str(self.device), device_name=gpu or "cpu", torch=torch.__version__,
            cuda=torch.version.cuda if gpu else None, command=" ".join(sys.argv),
            started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.start)), config=to_dict(cfg),
            settings=dict(vars(self.p), models=MODELS, group_size=GROUP_SIZE, thresholds=THRESHOLDS,
                          planned_seconds=self.planned, hard_limit_seconds=self.hard, curve_n=self.curve_n,
                          final_n=self.final_n),
            status=self.status, errors={}, timings={}, data={}, classifier={}, reference={}, training={},
            curves={}, rows=[], latency={}, claims={}, files=[])

    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        """Seconds until the hard limit, less the report's reserve."""
        return self.hard - REPORT_RESERVE_S - self.elapsed()

    def say(self, message: str) -> None:
        line = f"[{self.elapsed():7.1f} s] {message}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def save_results(self) -> None:
        minutes = self.elapsed() / 60
        self.results.update(total_seconds=round(self.elapsed(), 1),
                            gpu_minutes=round(minutes, 2) if self.device.type == "cuda" else 0.0,
                            rows=[r["record"] for r in self.rows])
        write_json(os.path.join(self.files, "results.json"), self.results)

    def stage(self, name: str, fn: Callable[[], None], needs=()) -> bool:
        """Run one stage: progress lines, its time, and its error (if any) recorded; results.json saved after
        it; never raises (but Ctrl-C)."""
        missing = [n for n in needs if self.status.get(n) != "ok"]
        start = time.time()
        try:
            if missing:
                raise Skipped(f"needs {', '.join(missing)}")
            self.say(f"{name}: start")
            fn()
            self.status[name] = "ok"
            self.say(f"{name}: done in {time.time() - start:.1f} s")
        except Skipped as e:
            self.status[name] = "skipped"
            self.results["errors"][name] = f"skipped: {e}"
            self.say(f"{name}: skipped ({e})")
        except Exception as e:                                  # noqa: BLE001  (recorded; later stages go on)
            self.status[name] = "error"
            self.results["errors"][name] = f"{type(e).__name__}: {e}"
            self.say(f"{name}: FAILED after {time.time() - start:.1f} s: {type(e).__name__}: {e}")
            with open(self.log_path, "a") as f:
                f.write(traceback.format_exc())
        finally:
            self.results["timings"][name] = round(time.time() - start, 2)
            try:
                self.save_results()
            except Exception as e:                              # noqa: BLE001  (e.g. a value JSON refuses)
                self.say(f"saving results.json failed: {type(e).__name__}: {e}")
        return self.status[name] == "ok"
