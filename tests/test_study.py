"""The Fashion-MNIST study (studies/fashion_mnist.py) in smoke mode, its parts (the fast loop, the claims, the
report), and its classifier as an evaluator feature network (studies/classifier.py + evaluate.py
--feature-network). Synthetic idx files: no download."""

import dataclasses
import gzip
import json
import os
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import evaluate as evaluate_script
from dataio.options import FashionMnistConfig
from dataio.sources.fashion_mnist import fashion_mnist
from studies import classifier as clf
from studies import fashion_mnist as study
from studies.fmnist.claims import at_flops, claim_sentence, judge_claims
from studies.fmnist.fastloop import ModelRun
from studies.fmnist.options import MODELS, PRESETS, SMOKE_ELIT, SMOKE_MODEL, FashionMnistStudyConfig, resolve_presets
from studies.fmnist.report import readme_verdicts, render_report
from studies.fmnist.rows import FULL_ROW
from studies.fmnist.schedule import POST_S, TRAIN_SAFETY, decide_compile, final_seconds, replan
from studies.fmnist.state import FILES_DIR, OUT_FILES, REPORT_NAME
from utils.errors import UserError

ROW_KEYS = ["sit", "single_b1", "multi_b1", "multi_b0.5", "multi_b0.25", "multi_b0.125", "multi_b0.0625",
            "multi_cfg", "multi_cheap_cfg", "multi_autoguidance", "single_cfg", "single_cheap_cfg"]
METRICS = ["fd", "accuracy", "heldout_loss", "gflops", "latency_ms_per_image"]


def write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def synthetic_fashion_mnist(folder, n_train=240, n_test=120):
    """Idx files of 28x28 images whose class shows as a bright bar at a class-dependent height."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.permutation(np.arange(n) % 10)
        x = rng.integers(0, 60, (n, 28, 28))
        for c in range(10):
            x[y == c, 2 + 2 * c:6 + 2 * c, 4:24] += 150
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), np.clip(x, 0, 255))
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), y)
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return synthetic_fashion_mnist(str(tmp_path_factory.mktemp("fm")))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, source):
    root = tmp_path_factory.mktemp("study")
    work, out = root / "work", root / "out"
    results = study.main(["--smoke", "--source", source, "--work", str(work), "--out", str(out), "--device", "cpu"])
    return results, work, out


def test_smoke_run_writes_the_published_layout(smoke):
    results, _, out = smoke
    assert results["errors"] == {}, results["errors"]
    assert all(v == "ok" for v in results["status"].values()), results["status"]
    files = sorted(os.path.join(d, f)[len(str(out)) + 1:] for d, _, fs in os.walk(out) for f in fs)
    assert files == sorted([REPORT_NAME] + [f"{FILES_DIR}/{f}" for f in OUT_FILES])
    assert all(os.path.getsize(out / f) < 16 * 2**20 for f in files)
    on_disk = json.load(open(out / FILES_DIR / "results.json"))
    assert [r["key"] for r in on_disk["rows"]] == ROW_KEYS
    for row in on_disk["rows"]:
        assert row["error"] is None, row
        for key in METRICS:
            assert isinstance(row[key], float) and np.isfinite(row[key]), (row["key"], key, row[key])
        assert row["num_samples"] == on_disk["settings"]["num_samples_used"] == 40
    report = (out / REPORT_NAME).read_text()
    assert report == render_report(on_disk)                   # every number rendered from results.json
    for row in on_disk["rows"]:
        assert row["label"] in report
    for name in ("curves.png", "quality_vs_gflops.png", "grids.png"):
        assert f"]({FILES_DIR}/{name})" in report
    assert f"**{on_disk['gpu_minutes']} GPU minutes**" in report and on_disk["device_name"] in report
    for line in readme_verdicts(on_disk):
        assert line.split(": **")[1].split("**")[0] in ("holds", "does not hold", "inconclusive", "not evaluated")


def test_three_models_train_identically_and_curves_have_five_points(smoke):
    results, _, _ = smoke
    t, steps = results["training"], results["training"]["plan"]["steps"]
    assert steps == 10 and [t[k]["steps"] for k in MODELS] == [steps] * 3
    assert set(t["sit"]["budget_counts"]) == {"None"}
    assert set(t["elit_single"]["budget_counts"]) == {"1.0"}
    assert len(t["elit_multi"]["budget_counts"]) > 2 and sum(t["elit_multi"]["budget_counts"].values()) == steps
    B = t["sit"]["batch"]
    rows = {r["key"]: r for r in results["rows"]}
    assert t["sit"]["training_gflops"] == pytest.approx(3 * B * steps * rows["sit"]["gflops"])
    assert t["elit_single"]["training_gflops"] == pytest.approx(3 * B * steps * rows["single_b1"]["gflops"])
    assert t["elit_multi"]["training_gflops"] < t["elit_single"]["training_gflops"]     # cheaper steps
    for key in MODELS:
        curve = results["curves"][key]
        assert len(curve) >= 5 and [p["step"] for p in curve] == sorted({p["step"] for p in curve})
        assert curve[-1]["step"] == steps and curve[-1]["final"] and curve[-1]["num_samples"] == 40
        assert all(p["num_samples"] == 20 for p in curve[:-1])
        assert [p["training_gflops"] for p in curve] == sorted(p["training_gflops"] for p in curve)
        assert all(np.isfinite(p[m]) for p in curve for m in ("fd", "accuracy", "heldout_loss", "fd_small"))
        assert curve[-1]["small_size"] == 20 and curve[-1]["fd_small"] != curve[-1]["fd"]   # first 20 of 40
    floor = results["reference"]["floor"]
    assert set(floor) == {"20", "40"} and all(f["spread"] >= 0 for f in floor.values())


def test_smoke_costs_agree_with_flop_table(smoke):
    results, _, _ = smoke
    rows = {r["key"]: r for r in results["rows"]}
    curve = [rows[k]["gflops"] for k in ROW_KEYS[2:7]]
    assert curve == sorted(curve, reverse=True) and curve[0] > curve[-1]          # FLOPs fall with the budget
    full, low = rows["multi_b1"]["gflops"], rows["multi_b0.0625"]["gflops"]
    assert rows["multi_cfg"]["gflops"] == pytest.approx(2 * full)                 # both passes at full budget
    assert rows["multi_cheap_cfg"]["gflops"] == pytest.approx(full + low)
    assert rows["multi_autoguidance"]["gflops"] == pytest.approx(full + low)
    assert rows["single_cheap_cfg"]["gflops"] == pytest.approx(rows["multi_cheap_cfg"]["gflops"])   # same arch
    steps = results["settings"]["sampling_steps"]
    assert rows["sit"]["gflops_per_sample"] == pytest.approx(steps * rows["sit"]["gflops"])


def _run(key, images, labels, **over):
    cfg = FashionMnistStudyConfig(smoke=True, source=".")
    p = resolve_presets(cfg)
    kwargs = dict(SMOKE_MODEL, **(SMOKE_ELIT if MODELS[key]["mask"] is not None else {}))
    return ModelRun(key, MODELS[key], images, labels, SimpleNamespace(**dict(vars(p), **over)), cfg,
                    torch.device("cpu"), model_kwargs=kwargs)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()          # tiny models: threads only contend on shared CPUs
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fast_loop_draws_identical_batches_and_warm_up_leaves_no_trace(one_thread):
    torch.manual_seed(1)
    images, labels = torch.randint(0, 256, (30, 1, 32, 32), dtype=torch.uint8), torch.arange(30) % 10
    a, b = _run("sit", images, labels), _run("elit_multi", images, labels)
    for _ in range(5):                                       # crosses an epoch boundary (30 images, batch 8)
        (xa, ya), (xb, yb) = a.batch(a.generator), b.batch(b.generator)
        torch.testing.assert_close(xa, xb)
        assert torch.equal(ya, yb)
        da, db = (r.loss_fn.draw(8, (1, 32, 32), generator=r.generator) for r in (a, b))
        for k in da:
            torch.testing.assert_close(da[k], db[k])
    c = _run("elit_multi", images, labels)
    before = {k: v.clone() for k, v in c.model.state_dict().items()}
    info = c.warm_up(lambda m: None)
    assert info["step_seconds"] > 0 and info["compiled"] == "eager" and c.step == 0
    for k, v in c.model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    d = _run("elit_multi", images, labels)                   # after warm-up, training is as from scratch
    c.train(3)
    d.train(3)
    assert [s for s, _ in c.loss_log] == [2, 3] and c.loss_log == d.loss_log
    assert {b_ for b_ in c.budget_counts} == {c.budget_of(s) for s in range(3)}


def test_compile_is_chosen_when_it_pays_in_the_remaining_plan():
    runs = {k: SimpleNamespace(allowed=[1.0] * (16 if k == "elit_multi" else 1)) for k in MODELS}
    fake = SimpleNamespace(runs=runs, planned=480.0, elapsed=lambda: 0.0, final_n=100, curve_n=100, say=lambda m: None,
                           calibration={},
                           cfg=SimpleNamespace(eval_points=5), p=SimpleNamespace(steps=None, sample_batch_size=100,
                                                                                 sampling_steps=10),
                           rows=[dict(record=dict(key=v)) for v in FULL_ROW.values()])
    sit = dict(compiled="regional torch.compile (dynamic=False)", eager_step_seconds=0.06, step_seconds=0.03,
               compile_seconds=40.0)
    assert decide_compile(fake, "sit", 0.06, {})                                 # the first model: always
    assert decide_compile(fake, "elit_single", 0.066, {"sit": sit})              # ~130 s saved, ~20 s cost
    done = {"sit": sit, "elit_single": dict(sit, step_seconds=0.033)}
    assert decide_compile(fake, "elit_multi", 0.05, done)                        # ~108 s saved, ~60 s cost
    fake.planned = 200.0
    assert not decide_compile(fake, "elit_multi", 0.05, done)                    # ~38 s saved, ~60 s cost
    slow = dict(sit, step_seconds=0.07)
    assert not decide_compile(fake, "elit_single", 0.066, {"sit": slow})         # compile did not pay at all


def fake_plan(elapsed=60.0, planned=300.0, steps=None, limit="time budget"):
    runs = {k: SimpleNamespace() for k in MODELS}
    rows = [dict(record=dict(key=k), step_seconds=0.01) for k in ROW_KEYS]
    return SimpleNamespace(runs=runs, planned=planned, elapsed=lambda: elapsed, final_n=100, curve_n=50,
                           say=lambda m: None, points=[100, 200, 300, 400, 500], calibration={},
                           plan=dict(steps=500, points=[100, 200, 300, 400, 500], limit=limit),
                           p=SimpleNamespace(steps=steps, sample_batch_size=50, sampling_steps=10), rows=rows)


def test_replan_after_the_first_point_fills_the_budget_from_measured_costs():
    fast, slow = fake_plan(), fake_plan()
    replan(fast, train_seconds=10.0, curve_seconds=3.0)               # 0.1 s per step of all three
    replan(slow, train_seconds=20.0, curve_seconds=3.0)
    for f in (fast, slow):
        assert f.points[0] == 100 and len(f.points) == 5 and f.points[-1] == f.plan["steps"]
        gaps = np.diff(f.points[1:])
        assert gaps.max() - gaps.min() <= 1                           # the later points evenly spaced
        assert f.calibration["curve_eval_s"] == 3.0 and f.calibration["eval_overhead_s"] > 0
    # 0.1 s/step with 3 s per curve point: the planned budget less elapsed, 3 more curve evaluations (the last
    # point is measured with the final rows), the final rows and POST_S, at TRAIN_SAFETY
    available = 300.0 - 60.0 - final_seconds(fast, 100) - 3 * 3.0 - POST_S
    assert fast.plan["steps"] - 100 == int(available / (0.1 * TRAIN_SAFETY))
    assert fast.plan["steps"] > slow.plan["steps"] > 100
    assert fast.plan["replanned"]["from_steps"] == 500
    capped, fixed = fake_plan(steps=600), fake_plan(steps=500, limit="--steps 500")
    replan(capped, 10.0, 3.0)
    replan(fixed, 1.0, 3.0)
    assert capped.plan["steps"] == 600                                # --steps stays the upper bound
    assert fixed.points == [100, 200, 300, 400, 500] and "replanned" not in fixed.plan
    late = fake_plan(elapsed=299.0)
    replan(late, 10.0, 3.0)
    assert late.points == [100, 101, 102, 103, 104]                  # out of time: the points stay distinct


def test_missing_source_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="Fashion-MNIST folder not found"):
        study.main(["--smoke", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*is deprecated")
def test_classifier_cli_torchscript_feature_network(source, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "test"):
        fashion_mnist(FashionMnistConfig(source=source, dest=str(data), split=split, resolution=32, channels=1))
    out = tmp_path / "net.pt"
    info = clf.main(["--data", str(data), "--out", str(out), "--epochs", "1", "--width", "4",
                     "--feature-dim", "8", "--batch-size", "64", "--device", "cpu"])
    assert 0 <= info["test_accuracy"] <= 1 and info["feature_dim"] == 8 and out.is_file()
    # The scripted file computes what the eager network does, for grey and RGB-replicated input.
    net = torch.jit.load(str(out)).eval()
    eager = clf.FashionClassifier(width=4, feature_dim=8)
    eager.load_state_dict(net.state_dict())
    eager.eval()
    x = torch.randint(0, 256, (3, 1, 32, 32)).float()
    with torch.no_grad():
        feats, logits = net(x)
        assert feats.shape == (3, 8) and logits.shape == (3, 10)
        torch.testing.assert_close(net(x.expand(-1, 3, -1, -1))[0], feats)
        torch.testing.assert_close(eager(x)[0], feats)
    # evaluate.py accepts it on tiny ADM-format batches (grey reference, RGB samples with labels).
    rng = np.random.default_rng(1)
    ref, samples = tmp_path / "ref.npz", tmp_path / "samples.npz"
    np.savez(ref, arr_0=rng.integers(0, 256, (24, 32, 32, 1), dtype=np.uint8))
    grey = rng.integers(0, 256, (16, 32, 32, 1), dtype=np.uint8)
    np.savez(samples, arr_0=np.repeat(grey, 3, axis=-1), arr_1=np.arange(16) % 10)
    metrics = evaluate_script.main(["--samples", str(samples), "--ref", str(ref), "--feature-network", str(out),
                                    "--device", "cpu", "--out", str(tmp_path / "m.json")])
    assert np.isfinite(metrics["fid"]) and metrics["classifier_accuracy"] is not None
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1


def test_presets_match_the_documented_values():
    """The numbers --help shows for the None-means-preset options are the ones PRESETS uses."""
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(FashionMnistStudyConfig)}
    for mode, preset in PRESETS.items():
        assert set(preset) <= set(helps)
        for key, value in preset.items():
            assert getattr(FashionMnistStudyConfig(), key) is None, key
            if value is not None:
                assert f"{mode}: {value:g}" in helps[key], (key, mode, helps[key])


# ----------------------------------------------------------------------------------------------------------
# Claims, on hand-made results.

def _curve(fds, flops_per_point, acc=0.8):
    return [dict(step=10 * (i + 1), training_gflops=flops_per_point * (i + 1), fd=f, accuracy=acc,
                 heldout_loss=0.1, num_samples=100) for i, f in enumerate(fds)]


def _results(sit, single, multi, rows_fd, acc, gflops, spread=0.1):
    budgets = [None, 1.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 1.0, 1.0, 1.0, 1.0, 1.0]
    models = ["sit", "elit_single"] + ["elit_multi"] * 8 + ["elit_single"] * 2
    guidance = [None] * 7 + ["cfg", "cheap_cfg", "autoguidance", "cfg", "cheap_cfg"]
    rows = [dict(key=k, model=m, budget=b, guidance=g, fd=f, accuracy=a, gflops=x, latency_ms_per_image=1.0,
                 heldout_loss=0.1)
            for k, m, b, g, f, a, x in zip(ROW_KEYS, models, budgets, guidance, rows_fd, acc, gflops)]
    return dict(rows=rows, curves=dict(sit=sit, elit_single=single, elit_multi=multi),
                reference=dict(floor={"100": dict(fd_a=1.0, fd_b=1.0 + spread, spread=spread)}))


GFLOPS = [12.0, 13.0, 13.0, 8.5, 6.5, 5.5, 5.0, 26.0, 18.0, 18.0, 26.0, 18.0]
GOOD_FD = [10, 8, 8, 9, 11, 15, 25, 6, 6.3, 7, 6, 9]


def test_at_flops_interpolates_inside_the_curve_only():
    curve = _curve([30, 20, 10], 100.0)
    assert at_flops(curve, 150.0) == pytest.approx(25.0) and at_flops(curve, 300.0) == 10
    assert at_flops(curve, 50.0) is None and at_flops(curve, 301.0) is None


def test_claim_a_is_read_from_the_curves_at_equal_flops():
    sit = _curve([40, 20, 12, 10, 9], 100.0)
    better = _curve([30, 15, 9, 7, 6], 107.0)                # more FLOPs per step, lower FD at equal FLOPs
    multi = _curve([35, 18, 11, 9, 8], 73.0)
    r = _results(sit, better, multi, GOOD_FD, [.8] * 12, GFLOPS)
    a = judge_claims(r)["a"]
    assert a["verdict"] == "holds" and a["flops"] == pytest.approx(500.0)        # SiT's last FLOPs
    assert a["fd_model"] == pytest.approx(6 + (7 - 6) * (535 - 500) / 107)       # ELIT interpolated there
    assert judge_claims(r)["a_multi"]["flops"] == pytest.approx(365.0)           # multibudget's last FLOPs
    worse = _results(sit, _curve([45, 25, 15, 12, 11], 107.0), multi, GOOD_FD, [.8] * 12, GFLOPS)
    assert judge_claims(worse)["a"]["verdict"] == "does not hold"
    close = _results(sit, _curve([40, 20, 12, 10, 9], 100.0), multi, GOOD_FD, [.8] * 12, GFLOPS)
    assert judge_claims(close)["a"]["verdict"] == "inconclusive"
    noisy = _results(sit, better, multi, GOOD_FD, [.8] * 12, GFLOPS, spread=3.0)  # floor spread 3 -> margin 6
    assert judge_claims(noisy)["a"]["verdict"] == "inconclusive"
    assert "PFLOPs" in claim_sentence("a", judge_claims(r)["a"])


def test_claims_b_and_c_follow_the_stated_thresholds():
    curves = [_curve([20, 10], 1.0)] * 3
    claims = judge_claims(_results(*curves, GOOD_FD, [.8, .85, .85, .84, .8, .7, .6, .9, .9, .88, .9, .7], GFLOPS))
    assert claims["b"]["verdict"] == "holds" and claims["b"]["cheapest_budget_matching_sit_fd"] == 0.5
    assert claims["c"]["verdict"] == "holds" and claims["c"]["gflops_saving"] == pytest.approx(1 - 18 / 26)
    assert claims["c_single"]["verdict"] == "does not hold"                      # FD 9 > 1.1 x 6
    cliff = list(GOOD_FD)
    cliff[5] = 30                                                               # 11 -> 30: more than 2x
    assert judge_claims(_results(*curves, cliff, [.8] * 12, GFLOPS))["b"]["graceful"] is False
    bumpy = list(GOOD_FD)
    bumpy[4] = 7                                                                # 9 -> 7 at lower FLOPs
    assert judge_claims(_results(*curves, bumpy, [.8] * 12, GFLOPS))["b"]["monotone"] is False
    missing = _results([], [], [], [None] * 12, [None] * 12, GFLOPS)
    assert {v["verdict"] for v in judge_claims(missing).values()} == {"not evaluated"}
    chance = judge_claims(_results(*curves, [800] * 12, [.1] * 12, GFLOPS))    # unrecognisable: nothing judged
    assert {v["verdict"] for v in chance.values()} == {"not evaluated"}
    assert chance["c"]["verdict_from_numbers"] == "holds" and "not recognisable" in chance["c"]["reason"]
    assert "Not judged" in claim_sentence("c", chance["c"])


def test_published_study_is_rendered_from_its_committed_results():
    """docs/fashion_mnist_study.md and the README's verdict lines come from the committed results.json."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = json.load(open(os.path.join(root, "docs", FILES_DIR, "results.json")))
    assert open(os.path.join(root, "docs", REPORT_NAME)).read() == render_report(results)
    readme = open(os.path.join(root, "README.md")).read()
    for line in readme_verdicts(results):
        assert f"- {line}\n" in readme, line
    assert f"{results['training']['plan']['steps']} steps" in readme
