"""generate.py --labels random|balanced, and the evaluator's warning for batches sorted by class."""

import warnings

import numpy as np
import pytest
import torch

import evaluation
from conftest import tiny_model, write_checkpoint
from evaluation.batches import sorted_by_class
from sampling.options import GenerateConfig
from sampling.plan import resolve_plan
from sampling.run import draw_inputs, sample_latents
from test_evaluation import GreyNet
from test_generate import gen, load_npz
from utils.cli import parse_config

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")]


def recorded_labels(monkeypatch, *argv):
    """The labels generate.py's run feeds the sampler, by image index, and the .npz it wrote."""
    import sampling.run as run
    seen = {}
    real = run.run_sampler

    def spy(model, plan, noise, labels, sde_noise=None):
        seen.setdefault("labels", []).append(labels.cpu())
        seen.setdefault("noise", []).append(noise[0].cpu())
        return real(model, plan, noise, labels, sde_noise)
    monkeypatch.setattr(run, "run_sampler", spy)
    out = gen(*argv)
    monkeypatch.undo()
    return torch.cat(seen["labels"]), torch.cat(seen["noise"]), out


def test_default_is_random_and_balanced_is_index_mod_classes(tmp_path, monkeypatch):
    ckpt = write_checkpoint(str(tmp_path / "ck.pt"), "SiT")
    base = ["--ckpt", ckpt, "--num-samples", "12", "--per-proc-batch-size", "5", "--num-steps", "1",
            "--no-write-png"]
    assert parse_config(GenerateConfig, []).labels == "random"
    rand, noise_r, out_r = recorded_labels(monkeypatch, *base, "--sample-dir", str(tmp_path / "a"))
    bal, noise_b, out_b = recorded_labels(monkeypatch, *base, "--labels", "balanced", "--sample-dir",
                                          str(tmp_path / "b"))
    # random (the default) is today's stream: image i's label is drawn by its own generator after its noise.
    model = tiny_model("SiT", in_channels=3)                        # the checkpoint's model (8x8 RGB pixels)
    _, drawn, _ = draw_inputs(model, range(15), 0, model.num_classes)
    assert torch.equal(rand, drawn)                                   # 12 images + 3 padding of the last batch
    assert torch.equal(bal, torch.arange(15) % model.num_classes)
    assert torch.equal(noise_b, noise_r)                              # the same noise for image i in both modes
    assert "balanced" in out_b and "balanced" not in out_r
    counts = np.bincount(bal[:10].numpy(), minlength=10)
    assert (counts == 1).all()


def test_balanced_labels_are_fixed_by_index_so_shards_and_resume_agree(tmp_path):
    ckpt = write_checkpoint(str(tmp_path / "ck.pt"), "SiT")
    args = ["--ckpt", ckpt, "--num-samples", "9", "--num-steps", "2", "--no-write-png", "--labels", "balanced",
            "--num-classes-sampled", "4"]
    one = load_npz(gen(*args, "--per-proc-batch-size", "9", "--sample-dir", str(tmp_path / "one")))["arr_0"]
    assert gen(*args, "--per-proc-batch-size", "2", "--sample-dir", str(tmp_path / "two"), max_batches=2) is None
    two = load_npz(gen(*args, "--per-proc-batch-size", "2", "--sample-dir", str(tmp_path / "two")))["arr_0"]
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1      # batch composition only (float rounding)
    model = tiny_model("SiT", in_channels=3)
    cfg = parse_config(GenerateConfig, ["--num-steps", "2"])
    plan = resolve_plan(model, cfg, None, "linear")
    a = sample_latents(model, plan, [5, 6], seed=0, num_classes=4, balanced=True)
    b = sample_latents(model, plan, [5, 6], seed=0, labels=torch.tensor([1, 2]))
    assert torch.equal(a, b)


def test_sorted_by_class_rule():
    assert sorted_by_class([0, 0, 1, 1, 2, 2])
    assert sorted_by_class([3, 3, 3, 1, 1])                          # any class order, one run each
    assert not sorted_by_class(np.arange(12) % 4)                    # balanced, interleaved
    assert not sorted_by_class(np.random.default_rng(0).integers(0, 10, 1000))
    assert not sorted_by_class([5, 5, 5, 5])                         # one class
    assert not sorted_by_class([0, 1, 2])                            # nothing repeated: no evidence
    assert not sorted_by_class([0, 0, 1, 1, 0])


def test_evaluator_warns_once_on_a_class_sorted_batch(tmp_path):
    torch.jit.script(GreyNet()).save(str(tmp_path / "net.pt"))
    net = evaluation.load_network(feature_network=str(tmp_path / "net.pt"), device="cpu")
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(128, 40, size=(20, 8, 8, 1)), 0, 255).astype(np.uint8)
    ref = {"mu": np.zeros(7), "sigma": np.eye(7)}
    for labels, expected in ((np.repeat(np.arange(5), 4), 1), (np.arange(20) % 5, 0)):
        np.savez(tmp_path / "s.npz", arr_0=images, arr_1=labels)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            evaluation.evaluate(str(tmp_path / "s.npz"), ref, net, batch_size=8)
        sorted_warnings = [w for w in caught if "sorted by class" in str(w.message)]
        assert len(sorted_warnings) == expected
        assert all("\n" not in str(w.message) for w in sorted_warnings)
    np.savez(tmp_path / "nolabels.npz", arr_0=images)                # no labels: nothing to check, no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluation.evaluate(str(tmp_path / "nolabels.npz"), ref, net, batch_size=8)
    assert not [w for w in caught if "sorted by class" in str(w.message)]
