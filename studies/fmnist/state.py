"""The state of one study run (`Study`): resolved settings, rows, models, samples and what results.json holds,
with its bookkeeping (progress lines, stage runner). The stages themselves are functions of a Study
(stages.py, costs.py, report.py); study.py runs them in order."""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from typing import Callable, Optional

import numpy as np
import torch

from evaluation.batches import write_json
from studies.fmnist.claims import THRESHOLDS
from studies.fmnist.options import (GROUP_SIZE, MODELS, SMOKE_ELIT, SMOKE_MODEL, FashionMnistStudyConfig, mode,
                                    resolve_presets)
from studies.fmnist.rows import define_rows
from studies.fmnist.tools import sampling_plan
from utils.cli import to_dict
from utils.errors import UserError

OUT_FILES = ("results.json", "report.md", "fd_vs_gflops.png", "grids.png", "loss_curves.png", "study.log")
LOG_LINE = re.compile(r"step (\d+): loss ([-+0-9.eEnaif]+), ([0-9.]+) img/s")


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


def median_or_none(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def read_training_log(path: str) -> list[tuple[int, float, float]]:
    """(step, loss, img/s) of every step line of a Trainer log.txt."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [(int(m[1]), float(m[2]), float(m[3])) for m in map(LOG_LINE.search, f) if m]


class Study:
    """One run of the study over one resolved configuration; `results` is what results.json holds."""

    def __init__(self, cfg: FashionMnistStudyConfig, start: Optional[float] = None):
        """`start`: when the time budget began (default: now)."""
        self.start = time.time() if start is None else start
        self.cfg = cfg
        self.p = resolve_presets(cfg)
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda asked for, but no GPU is visible")
        self.deadline = cfg.time_budget_minutes * 60.0
        self.work, self.out = os.path.abspath(cfg.work), os.path.abspath(cfg.out)
        self.data_dir = os.path.join(self.work, "data")
        self.classifier_path = os.path.join(self.work, "classifier.pt")
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(self.out, exist_ok=True)
        for name in OUT_FILES:                                  # a rerun never mixes in an older run's outputs
            if os.path.exists(os.path.join(self.out, name)):
                os.unlink(os.path.join(self.out, name))
        self.log_path = os.path.join(self.out, "study.log")
        self.status: dict[str, str] = {}
        self.arch: dict[str, dict] = {}
        self.flops: dict[str, dict] = {}                        # model -> {budget fraction or None: GFLOPs/forward}
        self.step_seconds: dict[str, Optional[float]] = {}
        self.models: dict = {}                                  # model -> SamplingCheckpoint (EMA weights)
        self.samples: dict[str, np.ndarray] = {}
        self.num_samples = self.p.num_samples
        self.steps_cap = self.p.steps
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        self.results = dict(
            study="Fashion-MNIST: SiT-S/2 vs multibudget ELIT-SiT-S/2", mode=mode(cfg), device=str(self.device),
            device_name=gpu or "cpu", torch=torch.__version__, cuda=torch.version.cuda if gpu else None,
            command=" ".join(sys.argv), started=time.strftime("%Y-%m-%d %H:%M:%S"), config=to_dict(cfg),
            settings=dict(vars(self.p), models=MODELS, group_size=GROUP_SIZE, thresholds=THRESHOLDS,
                          smoke_model=dict(SMOKE_MODEL, **SMOKE_ELIT) if cfg.smoke else None),
            status=self.status, errors={}, timings={}, data={}, classifier={}, training={}, rows=[],
            reference={}, claims={}, files=[])
        self.rows = define_rows(cfg, self.p.sampling_steps)
        self.results["rows"] = [r["record"] for r in self.rows]

    def elapsed(self) -> float:
        return time.time() - self.start

    def say(self, message: str) -> None:
        line = f"[{self.elapsed():7.1f} s] {message}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def save_results(self) -> None:
        self.results.update(total_seconds=round(self.elapsed(), 1),
                            gpu_minutes=round(self.elapsed() / 60, 2) if self.device.type == "cuda" else 0.0)
        write_json(os.path.join(self.out, "results.json"), self.results)

    def stage(self, name: str, fn: Callable[[], None], needs=()) -> bool:
        """Run one stage: progress lines, its time, and its error (if any) recorded; never raises (but Ctrl-C)."""
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
            self.save_results()
        return self.status[name] == "ok"

    def rows_of(self, model: str) -> list[dict]:
        return [r for r in self.rows if r["record"]["model"] == model]

    def plan(self, row: dict, model) -> dict:
        """The sampling plan of a row for `model` (warnings go to the log)."""
        return sampling_plan(model, row["gen"], self.device, warn=self.say)

    def run_dir(self, name: str) -> str:
        return os.path.join(self.work, "runs", name)

    def training_log(self, name: str) -> list[tuple[int, float, float]]:
        return read_training_log(os.path.join(self.run_dir(name), "log.txt"))
