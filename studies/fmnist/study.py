"""The study in order: every stage of one run, each recorded (time, error) in results.json; a failing stage
skips only the stages that need it."""

from __future__ import annotations

import os
import time
from typing import Optional

import torch

from studies.fmnist import costs, report, stages
from studies.fmnist.claims import judge_claims
from studies.fmnist.options import MODELS, FashionMnistStudyConfig
from studies.fmnist.state import Study


def run_study(cfg: FashionMnistStudyConfig, start: Optional[float] = None) -> dict:
    """Run every stage of the study for `cfg` (time budget counted from `start`, default now); the results."""
    s = Study(cfg, start=start)
    s.say(f"Fashion-MNIST study ({s.results['mode']}) on {s.results['device_name']}, torch "
          f"{torch.__version__}; work {s.work}, out {s.out}; budget {cfg.time_budget_minutes:g} min")
    s.stage("data", lambda: stages.import_data(s))
    s.stage("classifier", lambda: stages.fit_classifier(s), needs=["data"])
    probe = min(s.p.probe_steps, s.p.steps)
    for name in MODELS:
        s.stage(f"train {name} probe", lambda n=name: stages.fit(s, n, probe, probe=True), needs=["data"])
    s.stage("plan steps", lambda: costs.set_step_cap(s))
    for name in MODELS:
        s.stage(f"train {name}", lambda n=name: stages.fit(s, n, s.steps_cap), needs=["data"])
    for name in MODELS:
        s.stage(f"load {name}", lambda n=name: stages.load_model(s, n), needs=[f"train {name}"])
    s.stage("plan samples", lambda: costs.decide_num_samples(s))
    for name in MODELS:
        s.stage(f"sample {name}", lambda n=name: stages.sample(s, n), needs=[f"load {name}"])
    for name in MODELS:
        s.stage(f"latency {name}", lambda n=name: stages.latency(s, n), needs=[f"load {name}"])
    s.stage("metrics", lambda: stages.metrics(s), needs=["data", "classifier"])
    s.stage("claims", lambda: s.results.update(claims=judge_claims(s.results)))
    s.stage("plots", lambda: report.plots(s))
    s.stage("report", lambda: report.write_report(s))
    s.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    s.say(f"finished in {s.elapsed() / 60:.2f} min ({s.results['device_name']})")
    report.append_logs(s)
    s.results["files"] = sorted(os.listdir(s.out))
    s.save_results()
    return s.results
