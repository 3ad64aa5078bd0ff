"""Evaluator (ADM protocol): metric formulas against independent computations, the Inception feature layout,
reference statistics, weights handling and the CLI. CPU only; no download, no real weights: the Inception
architecture is built by torchvision with random weights and read back through the same local-file path."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F
import torchvision

import evaluation
from conftest import ROOT, script_env, write_checkpoint
from evaluation import EvalInputError, evaluator, features, metrics

# TorchScript is the documented feature-network format; its deprecation notice is not the subject here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


# ----------------------------------------------------------------------------------------------------------
# Helpers and fixtures.

def random_inception_state_dict(seed=0, num_classes=1008, aux_logits=False):
    """torchvision's Inception3 (the layout of pt_inception-2015-12-05) with random weights scaled to keep
    activations O(1), random BN statistics and a non-zero fc bias (so 'without bias' is observable)."""
    torch.manual_seed(seed)
    model = torchvision.models.Inception3(num_classes=num_classes, aux_logits=aux_logits, init_weights=False)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("conv.weight"):
                t.normal_(0, (2 / t[0].numel()) ** 0.5)
            elif name.endswith("bn.weight"):
                t.uniform_(0.5, 1.5)
            elif name.endswith("bn.bias"):
                t.normal_(0, 0.2)
            elif name.endswith("running_mean"):
                t.normal_(0, 0.2)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name == "fc.weight":
                t.normal_(0, 2 / t.shape[1] ** 0.5)
            elif name == "fc.bias":
                t.normal_(0, 3.0)
    return model.state_dict()


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / features.INCEPTION_FILENAMES[0]
    # The legacy (pre-zip) serialisation, as files written by old PyTorch versions may be.
    torch.save(random_inception_state_dict(), path, _use_new_zipfile_serialization=False)
    return str(path)


@pytest.fixture(scope="module")
def inception(inception_weights):
    with pytest.warns(UserWarning, match="not the standard file"):     # random weights: not the real file's hash
        return evaluation.load_network(inception_weights=inception_weights, device="cpu")


@pytest.fixture
def no_weights_anywhere(monkeypatch, tmp_path):
    """No env var, an empty torch.hub folder, and any download attempt fails the test."""
    monkeypatch.delenv(features.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def fail(*args, **kwargs):
        raise AssertionError("the evaluator tried to download")

    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    monkeypatch.setattr(tfi, "load_state_dict_from_url", fail)
    return tmp_path


def images(n, size=32, channels=3, seed=0, low=0, high=256):
    rng = np.random.default_rng(seed)
    return rng.integers(low, high, size=(n, size, size, channels), dtype=np.uint8)


def gaussian_features(n, dim, seed, shift=0.0):
    """Correlated, anisotropic features: z A + m."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim)) * np.linspace(0.2, 2.0, dim)[:, None]
    return rng.normal(size=(n, dim)) @ a + shift + rng.normal(size=dim)


def eig_frechet(mu1, s1, mu2, s2):
    """Independent Frechet distance: Tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), a PSD matrix."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def brute_precision_recall(ref, sam, k=3):
    """Loops and sorting: the k-th neighbour of each point among its own set (itself removed)."""
    def radii(x):
        return np.array([np.sort(np.linalg.norm(np.delete(x, i, 0) - x[i], axis=1))[k - 1] for i in range(len(x))])

    r_ref, r_sam = radii(ref), radii(sam)
    precision = np.mean([any(np.linalg.norm(s - ref[i]) <= r_ref[i] for i in range(len(ref))) for s in sam])
    recall = np.mean([any(np.linalg.norm(r - sam[j]) <= r_sam[j] for j in range(len(sam))) for r in ref])
    return precision, recall


class GreyNet(torch.nn.Module):
    """A tiny feature network for grey images, in the documented interface: float (B, 1, H, W) in [0, 255]
    -> (features (B, 7), logits (B, 5)); feature 0 is the mean pixel / 255, pinning the input convention."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 6, 3, stride=2)
        self.head = torch.nn.Linear(7, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x / 127.5 - 1)).mean(dim=(2, 3))                   # (B, 6)
        feats = torch.cat([x.mean(dim=(1, 2, 3)).unsqueeze(1) / 255, h], dim=1)     # (B, 7)
        return feats, self.head(feats)


@pytest.fixture(scope="module")
def grey_net_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "grey_net.pt"
    torch.jit.script(GreyNet()).save(str(path))
    return str(path)


def grey_batches(tmp_path):
    """A grey sample batch with labels (arr_1) and a grey reference batch: overlapping but different."""
    rng = np.random.default_rng(1)
    ref = np.clip(rng.normal(120, 50, size=(40, 16, 16, 1)), 0, 255).astype(np.uint8)
    sam = np.clip(rng.normal(140, 40, size=(30, 16, 16, 1)), 0, 255).astype(np.uint8)
    labels = rng.integers(0, 5, size=30)
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    np.savez(tmp_path / "samples.npz", arr_0=sam, arr_1=labels)
    return sam, ref, labels


# ----------------------------------------------------------------------------------------------------------
# Metric formulas.

def test_frechet_distance_matches_eigendecomposition():
    x, y = gaussian_features(600, 24, seed=0), gaussian_features(500, 24, seed=1, shift=0.5)
    (mx, sx), (my, sy) = metrics.feature_statistics(x), metrics.feature_statistics(y)
    assert np.allclose(mx, x.mean(0)) and np.allclose(sx, np.cov(x.T))
    assert metrics.frechet_distance(mx, sx, my, sy) == pytest.approx(eig_frechet(mx, sx, my, sy), rel=1e-9)
    assert metrics.frechet_distance(mx, sx, mx, sx) == pytest.approx(0, abs=1e-8)
    # Diagonal covariances: ||dmu||^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.linspace(0.5, 3, 24), np.linspace(2, 0.1, 24)
    expected = np.sum((mx - my) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mx, np.diag(a), my, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_singular_covariances():
    # Fewer vectors than dimensions (rank-deficient covariances), as with few images: finite, and the
    # independent value.
    x, y = gaussian_features(12, 40, seed=2), gaussian_features(9, 40, seed=3)
    (mx, sx), (my, sy) = metrics.feature_statistics(x), metrics.feature_statistics(y)
    assert metrics.frechet_distance(mx, sx, my, sy) == pytest.approx(eig_frechet(mx, sx, my, sy), rel=1e-5)
    # A product whose square root is not finite (sqrtm of a nilpotent matrix) takes ADM's eps * I path:
    # sqrtm((S1 + eps I)(S2 + eps I)) is then upper triangular with diagonal sqrt(eps (1 + eps)).
    eps, nilpotent, mu = 1e-6, np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([1.0, 2.0])
    expected = 1.0 + 0.0 + 2.0 - 2 * 2 * np.sqrt(eps * (1 + eps))
    assert metrics.frechet_distance(mu, nilpotent, mu - [1.0, 0.0], np.eye(2), eps=eps) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(EvalInputError, match="mismatched"):
        metrics.frechet_distance(mx, sx, my[:-1], sy)


def test_inception_score_matches_entropy_form():
    # IS per split = exp(H(p(y)) - E_x H(p(y|x))): the same KL identity written with entropies.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12000, 30)) * rng.uniform(0.5, 4, size=(12000, 1)) + np.linspace(0, 2, 30)
    splits = [logits[0:5000], logits[5000:10000], logits[10000:]]                 # the last split is shorter
    per_split = []
    for part in splits:
        p = scipy.special.softmax(part, axis=1)
        per_split.append(np.exp(scipy.stats.entropy(p.mean(0)) - scipy.stats.entropy(p, axis=1).mean()))
    assert metrics.inception_score(logits) == pytest.approx(np.mean(per_split), rel=1e-10)
    # Known values: identical predictions -> 1; confident and balanced over K classes -> K;
    # consecutive splits of 5000, not a shuffle: one class in the first split, ten in the second -> (1 + 10) / 2.
    assert metrics.inception_score(np.tile(rng.normal(size=30), (100, 1))) == pytest.approx(1.0)
    confident = 200.0 * np.eye(10)[np.arange(10000) % 10]
    assert metrics.inception_score(confident) == pytest.approx(10.0, rel=1e-9)
    blocks = np.concatenate([200.0 * np.eye(10)[np.zeros(5000, int)], confident[:5000]])
    assert metrics.inception_score(blocks) == pytest.approx(5.5, rel=1e-9)


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(45, 5))
    sam = np.concatenate([rng.normal(size=(25, 5)) * 0.7, rng.normal(size=(12, 5)) + 3.0])
    expected = brute_precision_recall(ref, sam)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1                                # a non-trivial case
    for batch_size in (7, 10000):                                                    # blocks across boundaries
        assert metrics.precision_recall(ref, sam, batch_size=batch_size) == pytest.approx(expected, abs=1e-12)
    # Radii: 3rd nearest neighbour among the others (itself excluded), squared.
    radii = metrics.manifold_radii(ref, batch_size=8).numpy()
    brute = [np.sort(np.sum((np.delete(ref, i, 0) - ref[i]) ** 2, axis=1))[2] for i in range(len(ref))]
    assert np.allclose(radii, brute, rtol=1e-10)
    # Known answers.
    assert metrics.precision_recall(ref, ref.copy()) == (1.0, 1.0)
    assert metrics.precision_recall(ref, sam[:25] + 100.0) == (0.0, 0.0)
    with pytest.raises(EvalInputError, match="more than 3"):
        metrics.precision_recall(ref[:3], sam)


# ----------------------------------------------------------------------------------------------------------
# Inception features.

def test_inception_features_layout(inception):
    x = images(2, size=32, seed=0)
    block = inception.model.Mixed_6d
    captured = {}
    handle = block.register_forward_pre_hook(lambda module, inputs: captured.update(x=inputs[0].clone()))
    try:
        out = inception(x)
    finally:
        handle.remove()
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008) and out["spatial"].shape == (2, 2023)
    # IS logits are pool_3 times the fc weight, without the bias.
    fc = inception.model.fc
    assert torch.allclose(out["logits"], out["pool"] @ fc.weight.T, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out["logits"], fc(out["pool"]), rtol=1e-2, atol=1e-2)
    # sFID: recompute Mixed_6d's 1x1 branch (conv, BN, ReLU) by hand from the block's input, take the first
    # 7 channels and flatten in NHWC order.
    branch = block.branch1x1
    pre = F.batch_norm(F.conv2d(captured["x"], branch.conv.weight), branch.bn.running_mean, branch.bn.running_var,
                       branch.bn.weight, branch.bn.bias, eps=branch.bn.eps)                # (2, 192, 17, 17)
    assert pre.shape == (2, 192, 17, 17) and (pre < 0).any()
    expected = torch.relu(pre).permute(0, 2, 3, 1)[..., :7].reshape(2, -1)
    assert torch.allclose(out["spatial"], expected, rtol=1e-4, atol=1e-5)
    assert (out["spatial"] >= 0).all() and (out["spatial"] == 0).any()                    # after the ReLU
    nchw = torch.relu(pre)[:, :7].reshape(2, -1)
    assert not torch.allclose(out["spatial"], nchw)                                        # the order matters
    # Grey images are replicated to RGB.
    grey = x[:1, ..., :1]
    assert torch.allclose(inception(grey)["pool"], inception(np.repeat(grey, 3, axis=3))["pool"])


def test_stored_reference_statistics_are_used(inception, tmp_path, monkeypatch):
    """mu/sigma (mu_s/sigma_s) stored in the reference npz replace those of its arr_0 for FID (sFID); precision
    and recall still use arr_0's features. The distance itself is replaced by a recording stand-in (the real
    one is tested above; a 2048-d sqrtm takes seconds on a small CPU)."""
    calls = []

    def recording_distance(mu1, sigma1, mu2, sigma2):
        calls.append((mu1, mu2, sigma2))
        return float(np.sum((mu1 - mu2) ** 2))

    monkeypatch.setattr(evaluator, "frechet_distance", recording_distance)
    ref_images, samples = images(4, seed=1), images(4, seed=2)
    ref_feats = evaluation.compute_features(ref_images, inception)
    mu, sigma = metrics.feature_statistics(ref_feats["pool"])
    mu_s, sigma_s = metrics.feature_statistics(ref_feats["spatial"])
    np.savez(tmp_path / "plain.npz", arr_0=ref_images)
    stored = dict(mu=mu + 0.5, sigma=sigma * 2, mu_s=mu_s - 0.25, sigma_s=sigma_s * 3)
    np.savez(tmp_path / "stored.npz", arr_0=ref_images, **stored)

    plain = evaluation.evaluate(samples, str(tmp_path / "plain.npz"), inception)
    (mu_samples, fid_mu, fid_sigma), (_, sfid_mu, sfid_sigma) = calls[-2:]
    assert np.allclose(fid_mu, mu, rtol=1e-6) and np.allclose(fid_sigma, sigma, rtol=1e-6, atol=1e-9)
    assert np.allclose(sfid_mu, mu_s, rtol=1e-6) and np.allclose(sfid_sigma, sigma_s, rtol=1e-6, atol=1e-9)
    assert plain["reference_statistics"] == {"fid": "computed", "sfid": "computed"}

    with_stats = evaluation.evaluate(samples, str(tmp_path / "stored.npz"), inception)
    (_, fid_mu, fid_sigma), (_, sfid_mu, sfid_sigma) = calls[-2:]
    assert np.array_equal(fid_mu, stored["mu"]) and np.array_equal(fid_sigma, stored["sigma"])
    assert np.array_equal(sfid_mu, stored["mu_s"]) and np.array_equal(sfid_sigma, stored["sigma_s"])
    assert with_stats["reference_statistics"] == {"fid": "stored", "sfid": "stored"}
    # The FID moves by exactly what the stored mean shift implies: ||d - 0.5||^2 - ||d||^2, d = mu_samples - mu.
    d = mu_samples - mu
    assert with_stats["fid"] - plain["fid"] == pytest.approx(np.sum((d - 0.5) ** 2 - d ** 2), rel=1e-4)
    assert with_stats["sfid"] != pytest.approx(plain["sfid"])
    # Precision/recall come from arr_0's features in both cases; IS from the samples only.
    assert plain["precision"] is not None and (with_stats["precision"], with_stats["recall"]) == (plain["precision"], plain["recall"])
    assert with_stats["inception_score"] == pytest.approx(plain["inception_score"])
    # A lone mean without its covariance is rejected.
    np.savez(tmp_path / "half.npz", arr_0=ref_images, mu=mu)
    with pytest.raises(EvalInputError, match="'mu' without 'sigma'"):
        evaluation.evaluate(samples, str(tmp_path / "half.npz"), inception)


# ----------------------------------------------------------------------------------------------------------
# Weights: local file only, clear errors.

def test_missing_weights_is_a_clear_error_and_nothing_downloads(no_weights_anywhere, monkeypatch):
    with pytest.raises(EvalInputError, match=r"--inception-weights.*ELIT_INCEPTION_WEIGHTS.*pt_inception-2015-12-05-6726825d\.pth"):
        evaluation.load_network(device="cpu")
    missing = str(no_weights_anywhere / "nowhere.pth")
    with pytest.raises(EvalInputError, match="not found: .*nowhere.pth"):
        evaluation.load_network(inception_weights=missing, device="cpu")
    monkeypatch.setenv(features.INCEPTION_ENV, missing)
    with pytest.raises(EvalInputError, match=r"nowhere.pth \(from \$ELIT_INCEPTION_WEIGHTS\)"):
        evaluation.load_network(device="cpu")


def test_weights_lookup_order(no_weights_anywhere, monkeypatch):
    hub = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(hub)
    cached = os.path.join(hub, features.INCEPTION_FILENAMES[1])                     # torch-fidelity's file name
    open(cached, "wb").close()
    assert evaluation.find_inception_weights() == cached
    explicit = str(no_weights_anywhere / "explicit.pth")
    open(explicit, "wb").close()
    monkeypatch.setenv(features.INCEPTION_ENV, explicit)
    assert evaluation.find_inception_weights() == explicit
    assert evaluation.find_inception_weights(cached) == cached


def test_unusable_weights_files_are_clear_errors(no_weights_anywhere):
    corrupt = no_weights_anywhere / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(EvalInputError, match="cannot read Inception weights"):
        evaluation.load_network(inception_weights=str(corrupt), device="cpu")
    pickled = no_weights_anywhere / "pickled.pth"
    torch.save({"model": GreyNet()}, pickled)                                      # would need code to load
    with pytest.raises(EvalInputError, match="cannot read Inception weights"):
        evaluation.load_network(inception_weights=str(pickled), device="cpu")
    imagenet = no_weights_anywhere / "torchvision_inception.pth"                   # 1000 classes + aux head
    torch.save(random_inception_state_dict(num_classes=1000, aux_logits=True), imagenet)
    with pytest.raises(EvalInputError, match="is not the pt_inception-2015-12-05 state dict.*AuxLogits"):
        evaluation.load_network(inception_weights=str(imagenet), device="cpu")


def _run_cli(*args, env_update=None):
    env = {k: v for k, v in os.environ.items() if k != features.INCEPTION_ENV}
    env.update(env_update or {})
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_bad_input_exits_with_one_line(tmp_path, grey_net_path):
    np.savez(tmp_path / "s.npz", arr_0=images(4, size=8))
    np.savez(tmp_path / "r.npz", arr_0=images(6, size=8, channels=1))
    np.savez(tmp_path / "float.npz", arr_0=images(4, size=8, channels=1).astype(np.float32))
    home = {"TORCH_HOME": str(tmp_path / "torch_home")}
    res = _run_cli("--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "r.npz"), env_update=home)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("error: Inception weights not found") and "ELIT_INCEPTION_WEIGHTS" in res.stderr
    res = _run_cli("--samples", str(tmp_path / "float.npz"), "--ref", str(tmp_path / "r.npz"),
                   "--feature-network", grey_net_path, env_update=home)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "must hold uint8 images" in res.stderr and "float32" in res.stderr


# ----------------------------------------------------------------------------------------------------------
# Feature network, batches, caching.

def test_feature_network_grey_end_to_end(tmp_path, grey_net_path):
    sam, ref, labels = grey_batches(tmp_path)
    out = tmp_path / "metrics.json"
    res = _run_cli("--samples", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"),
                   "--feature-network", grey_net_path, "--batch-size", "7", "--out", str(out), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "FID" in res.stdout and "Precision" in res.stdout
    result = json.loads(out.read_text())
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]                 # atomic write left nothing

    # Independent computation: the module applied directly to float NCHW images in [0, 255].
    net = torch.jit.load(grey_net_path)
    with torch.no_grad():
        f_sam, logits = (t.double().numpy() for t in net(torch.from_numpy(sam).permute(0, 3, 1, 2).float()))
        f_ref = net(torch.from_numpy(ref).permute(0, 3, 1, 2).float())[0].double().numpy()
    assert np.allclose(f_sam[:, 0], sam.mean(axis=(1, 2, 3)) / 255)
    fid = eig_frechet(f_sam.mean(0), np.cov(f_sam.T), f_ref.mean(0), np.cov(f_ref.T))
    assert result["fid"] == pytest.approx(fid, rel=1e-4) and result["fid"] > 0
    assert result["sfid"] is None
    p = scipy.special.softmax(logits, axis=1)
    assert result["inception_score"] == pytest.approx(
        np.exp(scipy.stats.entropy(p.mean(0)) - scipy.stats.entropy(p, axis=1).mean()), rel=1e-5)
    assert (result["precision"], result["recall"]) == pytest.approx(brute_precision_recall(f_ref, f_sam), abs=1e-9)
    assert result["classifier_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert result["num_samples"] == 30 and result["num_reference"] == 40
    assert result["network"]["kind"] == "torchscript" and result["reference_statistics"]["fid"] == "computed"


def test_python_api_arrays_stats_and_cache(tmp_path, grey_net_path):
    sam, _, labels = grey_batches(tmp_path)
    ref_path = str(tmp_path / "ref.npz")
    # Stored (Inception) statistics in the reference are ignored for another network.
    with np.load(ref_path) as z:
        np.savez(ref_path, arr_0=z["arr_0"], mu=np.zeros(2048), sigma=np.eye(2048))
    net = evaluation.load_network(feature_network=grey_net_path, device="cpu")
    from_files = evaluation.evaluate(str(tmp_path / "samples.npz"), ref_path, net, batch_size=8)
    assert from_files["reference_statistics"]["fid"] == "computed"
    ref_stats = evaluation.reference_statistics(ref_path, net, cache=True)
    cache = evaluation.reference_cache_path(ref_path, net)
    assert os.path.isfile(cache) and cache.startswith(ref_path[:-4] + ".net-")
    from_arrays = evaluation.evaluate(sam, ref_stats, net, labels=labels)
    for key in ("fid", "inception_score", "precision", "recall", "classifier_accuracy"):
        assert from_arrays[key] == pytest.approx(from_files[key], rel=1e-6), key
    # The cache is reused (a changed cache would be read back), and dropped once the reference changes.
    with np.load(cache) as z:
        tampered = {k: z[k] for k in z.files}
    tampered["mu"] = tampered["mu"] + 1.0
    np.savez(cache, **tampered)
    again = evaluation.evaluate(sam, ref_path, net, cache_ref=True, labels=labels)
    assert again["fid"] > from_files["fid"] + 1.0
    os.utime(ref_path, ns=(0, 0))
    fresh = evaluation.evaluate(sam, ref_path, net, cache_ref=True, labels=labels)
    assert fresh["fid"] == pytest.approx(from_files["fid"], rel=1e-6)
    # A stats-only reference (no features) gives FID but no precision/recall.
    only_stats = evaluation.evaluate(sam, {"mu": ref_stats["mu"], "sigma": ref_stats["sigma"]}, net)
    assert only_stats["fid"] == pytest.approx(from_files["fid"], rel=1e-6) and only_stats["precision"] is None


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_batches_stream_and_validate(tmp_path, save):
    x = images(23, size=6, seed=3)
    save(tmp_path / "a.npz", arr_0=x)
    batches = list(evaluation.NpzImages(str(tmp_path / "a.npz")).batches(5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3] and np.array_equal(np.concatenate(batches), x)
    save(tmp_path / "grey.npz", arr_0=x[..., 0])                                     # (N, H, W) = grey
    grey = evaluation.NpzImages(str(tmp_path / "grey.npz"))
    assert grey.shape == (23, 6, 6, 1) and np.array_equal(np.concatenate(list(grey.batches(10)))[..., 0], x[..., 0])
    bad = {"float": dict(arr_0=x.astype(np.float32)), "channels": dict(arr_0=x[..., :2]),
           "key": dict(images=x), "rank": dict(arr_0=x[0, 0])}
    messages = {"float": "must hold uint8", "channels": r"shape \(N, H, W, 3\)", "key": "no 'arr_0' array", "rank": "shape"}
    for name, arrays in bad.items():
        save(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(EvalInputError, match=messages[name]):
            evaluation.NpzImages(str(tmp_path / f"{name}.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(EvalInputError, match="cannot read"):
        evaluation.NpzImages(str(tmp_path / "junk.npz"))


def test_eval_script_end_to_end_on_cpu(tmp_path, inception_weights):
    """experiments_updated/evaluation/eval.sh: torchrun generate.py (a tiny checkpoint), then evaluate.py."""
    ckpt = write_checkpoint(str(tmp_path / "elit.pt"), "ELIT-SiT")
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=images(16, size=8))
    out = subprocess.run(
        ["bash", "experiments_updated/evaluation/eval.sh", f"CKPT={ckpt}", f"REF={ref}", "NUM_SAMPLES=8", "NPROC=1",
         f"INCEPTION={inception_weights}", "GEN_CONFIG=experiments_updated/generation/demo.yaml", "BUDGET=0.5",
         f"GEN_ARGS=--sample-dir {tmp_path / 'samples'} --num-steps 2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=script_env())
    assert out.returncode == 0, out.stderr[-3000:]
    written = glob.glob(str(tmp_path / "samples" / "*_vs_ref*.json"))
    assert len(written) == 1, os.listdir(tmp_path / "samples")
    metrics = json.load(open(written[0]))
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert np.isfinite(metrics[key]), key
    npz = glob.glob(str(tmp_path / "samples" / "*.npz"))
    assert len(npz) == 1 and np.load(npz[0])["arr_0"].shape == (8, 8, 8, 3)
    assert "-b0.5-" in os.path.basename(npz[0])                       # the BUDGET setting reached generate.py
