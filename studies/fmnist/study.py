"""The study in order: every stage of one run, each recorded (time, error) in results.json, which is saved
after every stage and every curve point; a failing stage skips only the stages that need it."""

from __future__ import annotations

import os
import time
from typing import Optional

import torch

from studies.fmnist import data, figures, schedule
from studies.fmnist.claims import judge_claims
from studies.fmnist.options import FashionMnistStudyConfig
from studies.fmnist.report import render_report
from studies.fmnist.state import Study
from utils.atomic import write_text


def publish(s: Study) -> None:
    """Claims, figures and the report: each its own stage (a failing figure leaves the others)."""
    s.stage("claims", lambda: s.results.update(claims=judge_claims(s.results)))
    files = s.files
    s.stage("curves.png", lambda: figures.plot_curves(s.results, os.path.join(files, "curves.png")))
    s.stage("quality_vs_gflops.png", lambda: figures.plot_quality(s.results, os.path.join(files, "quality_vs_gflops.png")))
    s.stage("grids.png", lambda: figures.plot_grids(s.results, s.samples, data.grid_reference(s),
                                                     os.path.join(files, "grids.png")), needs=["data"])
    s.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    s.save_results()                                        # the report's wall clock includes everything above
    s.stage("report", lambda: write_text(s.report_path, render_report(s.results)))
    s.results["files"] = [os.path.relpath(s.report_path, s.out)] + sorted(
        os.path.join(os.path.basename(files), f) for f in os.listdir(files))
    s.say(f"finished in {s.elapsed() / 60:.2f} min ({s.results['device_name']}); report {s.report_path}")
    s.save_results()


def run_study(cfg: FashionMnistStudyConfig, start: Optional[float] = None) -> dict:
    """Run every stage of the study for `cfg` (time budget counted from `start`, default now); the results."""
    s = Study(cfg, start=start)
    threads = torch.get_num_threads()
    if s.device.type == "cpu" and cfg.smoke:             # tiny models: threads only contend (shared CPUs)
        torch.set_num_threads(1)
    try:
        return _run(s)
    finally:
        torch.set_num_threads(threads)


def _run(s: Study) -> dict:
    if s.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    s.say(f"Fashion-MNIST study ({s.results['mode']}) on {s.results['device_name']}, torch {torch.__version__}; "
          f"out {s.out}; planned {s.planned / 60:g} min, hard limit {s.hard / 60:g} min")
    s.stage("data", lambda: data.load_data(s))
    s.stage("classifier", lambda: data.train_feature_classifier(s), needs=["data"])
    s.stage("reference", lambda: data.reference(s), needs=["classifier"])
    s.stage("build", lambda: schedule.build(s), needs=["data"])
    s.stage("latency", lambda: schedule.time_rows(s), needs=["build"])
    s.stage("warm-up", lambda: schedule.warm_up(s), needs=["build"])
    s.stage("plan", lambda: schedule.plan_steps(s), needs=["warm-up"])
    s.stage("train + curves", lambda: schedule.train_curves(s), needs=["plan", "reference"])
    s.stage("final rows", lambda: schedule.final_rows(s), needs=["train + curves"])
    publish(s)
    return s.results
