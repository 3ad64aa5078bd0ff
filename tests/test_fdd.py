"""FDD: DINOv2 ViT-L/14 features with EDM2's protocol (evaluation/dinov2.py) and their place in the evaluator.

Random-init weights of the real architecture (width 1024, patch 14, 16 heads, the 37 x 37 position grid of
dinov2_vitl14_pretrain.pth) in both layouts. The network is built with 2 of its 24 blocks through the documented
test hook `evaluation.dinov2._TEST_DEPTH` (ViT-L on a small CPU is too slow for tests); the shipped 24-block
architecture is checked against the hub layout's names and shapes on the meta device.
"""

import json
import os
import socket
import warnings

import numpy as np
import pytest
import safetensors.torch
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

import evaluate
import evaluation
from evaluation import EvalInputError, dinov2, evaluator

DEPTH = 2                                   # blocks built in tests (the test hook); the real network has 24
WIDTH, HEADS, GRID, HUB_GRID = 1024, 16, 16, 37

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


# ----------------------------------------------------------------------------------------------------------
# Fixtures: no network access, weights files in both layouts.

@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No weights configured anywhere, empty caches, and any download or connection attempt fails the test."""
    monkeypatch.delenv(dinov2.DINOV2_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    def fail(*args, **kwargs):
        raise AssertionError("tried to download or connect")

    monkeypatch.setattr(torch.hub, "load", fail)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    monkeypatch.setattr(socket.socket, "connect", fail)
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    monkeypatch.setattr(dinov2, "_TEST_DEPTH", DEPTH)
    return tmp_path


def hub_state_dict(depth=DEPTH, width=WIDTH, seed=0):
    """facebookresearch/dinov2 `vit_large` names and shapes (img_size 518, so a 37 x 37 position grid, plus the
    mask token), random values that keep activations O(1) and make every parameter matter."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, std=1.0: torch.randn(*shape, generator=g) * std
    sd = {"cls_token": r(1, 1, width), "pos_embed": r(1, 1 + HUB_GRID ** 2, width, std=0.5),
          "mask_token": r(1, width), "patch_embed.proj.weight": r(width, 3, 14, 14, std=(3 * 14 * 14) ** -0.5),
          "patch_embed.proj.bias": r(width, std=0.1)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(width, std=0.1), p + "norm1.bias": r(width, std=0.1),
                   p + "attn.qkv.weight": r(3 * width, width, std=width ** -0.5), p + "attn.qkv.bias": r(3 * width, std=0.1),
                   p + "attn.proj.weight": r(width, width, std=width ** -0.5), p + "attn.proj.bias": r(width, std=0.1),
                   p + "ls1.gamma": 0.5 + r(width, std=0.1), p + "norm2.weight": 1 + r(width, std=0.1),
                   p + "norm2.bias": r(width, std=0.1), p + "mlp.fc1.weight": r(4 * width, width, std=width ** -0.5),
                   p + "mlp.fc1.bias": r(4 * width, std=0.1), p + "mlp.fc2.weight": r(width, 4 * width, std=(4 * width) ** -0.5),
                   p + "mlp.fc2.bias": r(width, std=0.1), p + "ls2.gamma": 0.5 + r(width, std=0.1)})
    sd.update({"norm.weight": 1 + r(width, std=0.1), "norm.bias": r(width, std=0.1)})
    return sd


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """{'hub': dinov2_vitl14_pretrain.pth, 'timm': model.safetensors (no mask_token), 'chunked': FSDP block
    chunks as dinov2's training checkpoints name them}, all holding the same random tensors."""
    folder = tmp_path_factory.mktemp("dinov2")
    sd = hub_state_dict()
    paths = {"hub": str(folder / dinov2.DINOV2_FILENAME), "timm": str(folder / "model.safetensors"),
             "chunked": str(folder / "chunked.pth")}
    torch.save(sd, paths["hub"])
    safetensors.torch.save_file({k: v for k, v in sd.items() if k != "mask_token"}, paths["timm"])
    torch.save({k.replace("blocks.", "blocks.0.") if k.startswith("blocks.") else k: v for k, v in sd.items()},
               paths["chunked"])
    return paths, sd


# ----------------------------------------------------------------------------------------------------------
# Independent references: PIL resize, the position-grid formula, a hand-written ViT forward.

def reference_preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float64 (B, 3, 224, 224): PIL's bicubic resize in float mode (EDM2's 'pil'
    reference resize, without its uint8 rounding), / 255, ImageNet mean/std."""
    out = np.stack([np.stack([np.asarray(Image.fromarray(img[..., c].astype(np.float32), "F").resize(
        (224, 224), Image.Resampling.BICUBIC)) for c in range(3)]) for img in images]).astype(np.float64)
    mean, std = np.array([0.485, 0.456, 0.406])[:, None, None], np.array([0.229, 0.224, 0.225])[:, None, None]
    return torch.from_numpy((out / 255 - mean) / std)


def cubic_weights(t, a=-0.75):
    """Keys' cubic convolution weights (PyTorch's bicubic, A = -0.75) of the taps at offsets -1, 0, 1, 2."""
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])


def reference_position_grid(pos_embed: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """dinov2's interpolate_pos_encoding written out: the source coordinate of output index i is
    (i + 0.5) * M / (grid + 0.1) - 0.5, 4-tap cubic weights, edge indices clamped; separable in rows/columns."""
    pe = pos_embed.double().numpy()[0]
    m = int(round((pe.shape[0] - 1) ** 0.5))
    w = np.zeros((grid, m))
    for i in range(grid):
        src = (i + 0.5) * m / (grid + 0.1) - 0.5
        base = int(np.floor(src))
        for tap, weight in zip(range(base - 1, base + 3), cubic_weights(src - base)):
            w[i, min(max(tap, 0), m - 1)] += weight
    patches = np.einsum("im,jn,mnd->ijd", w, w, pe[1:].reshape(m, m, -1)).reshape(grid * grid, -1)
    return torch.from_numpy(np.concatenate([pe[:1], patches]))[None]


def reference_features(sd: dict, x: torch.Tensor, depth: int = DEPTH) -> torch.Tensor:
    """DINOv2's ViT forward written out in float64: (B, 3, 224, 224) -> final-norm CLS token (B, 1024)."""
    p = {k: v.double() for k, v in sd.items()}
    ln = lambda t, name: F.layer_norm(t, (WIDTH,), p[name + ".weight"], p[name + ".bias"], eps=1e-6)
    t = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
    t = torch.cat([p["cls_token"].expand(len(t), -1, -1), t], dim=1) + reference_position_grid(sd["pos_embed"])
    b, n, _ = t.shape
    for i in range(depth):
        q = lambda name: p[f"blocks.{i}.{name}"]
        h = ln(t, f"blocks.{i}.norm1") @ q("attn.qkv.weight").T + q("attn.qkv.bias")
        qs, ks, vs = h.reshape(b, n, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)       # (B, heads, N, 64)
        a = torch.softmax(qs @ ks.transpose(-1, -2) / (WIDTH // HEADS) ** 0.5, dim=-1) @ vs
        a = a.transpose(1, 2).reshape(b, n, WIDTH) @ q("attn.proj.weight").T + q("attn.proj.bias")
        t = t + q("ls1.gamma") * a
        h = F.gelu(ln(t, f"blocks.{i}.norm2") @ q("mlp.fc1.weight").T + q("mlp.fc1.bias"))
        t = t + q("ls2.gamma") * (h @ q("mlp.fc2.weight").T + q("mlp.fc2.bias"))
    return ln(t, "norm")[:, 0]


def images(n, size, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def eig_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance of the Gaussian fits of features a, b by eigendecomposition (valid for singular
    covariances): Tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2)))."""
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(root @ s2 @ root)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


class MeanColour(torch.nn.Module):
    """A cheap main feature network (so the tests spend their time on DINOv2): per-channel means and spreads."""

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1) / 255                 # (B, 6)


@pytest.fixture(scope="module")
def colour_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "colour.pt"
    torch.jit.script(MeanColour()).save(str(path))
    return str(path)


# ----------------------------------------------------------------------------------------------------------
# Protocol pieces.

def test_preprocessing_matches_pil_bicubic_and_imagenet_normalisation():
    for size in (256, 64, 224):
        x = images(2, size, seed=size)
        ours = dinov2.dinov2_preprocess(torch.from_numpy(x).permute(0, 3, 1, 2)).double()
        assert ours.shape == (2, 3, 224, 224)
        # A hundredth of a grey level: PIL's and PyTorch's antialiased bicubic (both a = -0.5) agree to float32
        # rounding; a bilinear or non-antialiased resize is off by whole grey levels.
        assert torch.allclose(ours, reference_preprocess(x), atol=0.01 / 255 / 0.224), size


def test_position_grid_is_resampled_as_dinov2_does():
    pe = torch.randn(1, 1 + HUB_GRID ** 2, 8)
    ours = dinov2.resample_position_embedding(pe, GRID)
    assert ours.shape == (1, 1 + GRID ** 2, 8) and torch.equal(ours[:, 0], pe[:, 0])
    assert torch.allclose(ours.double(), reference_position_grid(pe), atol=1e-5)
    # Not what a plain size-based resize (timm's default) gives: the 0.1 offset changes the sampling grid.
    plain = F.interpolate(pe[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2), size=(GRID, GRID), mode="bicubic")
    assert not torch.allclose(ours[:, 1:], plain.permute(0, 2, 3, 1).reshape(1, -1, 8), atol=1e-3)
    small = torch.randn(1, 1 + GRID ** 2, 8)
    assert dinov2.resample_position_embedding(small, GRID) is small                 # already 16 x 16: as is


def test_shipped_network_is_the_real_vit_l14():
    """Without the test hook: 24 blocks, and exactly the hub file's names and shapes (mask_token dropped, the
    position grid at 16 x 16 for 224 px)."""
    assert dinov2._TEST_DEPTH is None and dinov2.DEPTH == 24 and dinov2.RESOLUTION == 224
    model = dinov2.build_vit_l14()
    expected = {k: tuple(v.shape) for k, v in hub_state_dict(depth=0, width=8).items() if k != "mask_token"}
    expected = {k: tuple(WIDTH if s == 8 else s for s in shape) for k, shape in expected.items()}
    expected["pos_embed"] = (1, 1 + GRID ** 2, WIDTH)
    block = {k[len("blocks.0."):]: tuple(v.shape) for k, v in hub_state_dict(depth=1).items() if k.startswith("blocks.0.")}
    expected.update({f"blocks.{i}.{k}": s for i in range(24) for k, s in block.items()})
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert model.blocks[0].attn.num_heads == HEADS and model.patch_embed.patch_size == (14, 14)
    assert model.global_pool == "token" and isinstance(model.head, torch.nn.Identity)


# ----------------------------------------------------------------------------------------------------------
# Weights: both layouts, the same features as an independent forward, clear errors, nothing downloads.

def test_both_layouts_give_identical_features_equal_to_a_reference_forward(offline, weights):
    paths, sd = weights
    x = images(3, 48, seed=1)
    feats = {name: evaluation.load_dinov2(path, device="cpu")(x)["pool"] for name, path in paths.items()}
    assert feats["hub"].shape == (3, WIDTH) and feats["hub"].dtype == torch.float32
    assert torch.equal(feats["hub"], feats["timm"]) and torch.equal(feats["hub"], feats["chunked"])
    ref = reference_features(sd, reference_preprocess(x))
    assert torch.allclose(feats["hub"].double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    grey = evaluation.load_dinov2(paths["hub"], device="cpu")(x[..., :1])["pool"]     # grey -> RGB
    assert torch.equal(grey, evaluation.load_dinov2(paths["hub"], device="cpu")(np.repeat(x[..., :1], 3, -1))["pool"])
    net = evaluation.load_dinov2(paths["timm"], device="cpu")
    assert net.tag.startswith("dinov2-vitl14-") and net.tag.endswith(f"-depth{DEPTH}") and net.info()["depth"] == DEPTH


def test_missing_weights_is_one_clear_line_and_nothing_downloads(offline, monkeypatch):
    with pytest.raises(EvalInputError, match=r"--dinov2-weights PATH.*\$ELIT_DINOV2_WEIGHTS.*dinov2_vitl14_pretrain\.pth "
                                             r"at .*torch_home.*nothing is downloaded") as e:
        evaluation.load_dinov2(device="cpu")
    assert "\n" not in str(e.value)
    assert evaluation.find_dinov2_weights(required=False) is None
    missing = str(offline / "nowhere.pth")
    with pytest.raises(EvalInputError, match=r"not found: .*nowhere.pth \(--dinov2-weights\)"):
        evaluation.load_dinov2(missing, device="cpu")
    monkeypatch.setenv(dinov2.DINOV2_ENV, missing)
    with pytest.raises(EvalInputError, match=r"nowhere.pth \(from \$ELIT_DINOV2_WEIGHTS\)"):
        evaluation.find_dinov2_weights(required=False)                 # configured but missing: an error


def test_weights_lookup_order(offline, monkeypatch):
    hf = offline / "hf_home" / "hub" / f"models--timm--{dinov2.TIMM_NAME}" / "snapshots" / "abc" / "model.safetensors"
    hf.parent.mkdir(parents=True)
    hf.touch()
    assert evaluation.find_dinov2_weights() == str(hf)
    hub = offline / "torch_home" / "hub" / "checkpoints" / dinov2.DINOV2_FILENAME
    hub.parent.mkdir(parents=True)
    hub.touch()
    assert evaluation.find_dinov2_weights() == str(hub)
    explicit = offline / "explicit.pth"
    explicit.touch()
    monkeypatch.setenv(dinov2.DINOV2_ENV, str(explicit))
    assert evaluation.find_dinov2_weights() == str(explicit)
    assert evaluation.find_dinov2_weights(str(hub)) == str(hub)


def test_wrong_weights_are_clear_errors(offline):
    corrupt = offline / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(EvalInputError, match="cannot read DINOv2 weights"):
        evaluation.load_dinov2(str(corrupt), device="cpu")
    sd = hub_state_dict(width=64)
    torch.save(sd, offline / "narrow.pth")                                  # another width: not ViT-L
    with pytest.raises(EvalInputError, match=r"is not DINOv2 ViT-L/14.*size mismatch"):
        evaluation.load_dinov2(str(offline / "narrow.pth"), device="cpu")
    torch.save(dict(sd, register_tokens=torch.zeros(1, 4, 64)), offline / "reg.pth")
    with pytest.raises(EvalInputError, match="register tokens"):
        evaluation.load_dinov2(str(offline / "reg.pth"), device="cpu")


# ----------------------------------------------------------------------------------------------------------
# FDD in the evaluator and in evaluate.py.

def test_fdd_equals_the_frechet_distance_of_reference_features(offline, weights, colour_net, tmp_path):
    paths, sd = weights
    sam, ref = images(5, 40, seed=2), images(7, 40, seed=3)        # not 224: both resized (the evaluator
    # refuses samples whose size differs from the reference's, issue 14)
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    net = evaluation.load_network(feature_network=colour_net, device="cpu")
    dino = evaluation.load_dinov2(paths["hub"], device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                     # tiny sets: singular covariances
        result = evaluation.evaluate(sam, str(tmp_path / "ref.npz"), net, fdd_network=dino, batch_size=3)
    f_sam = reference_features(sd, reference_preprocess(sam)).numpy()
    f_ref = reference_features(sd, reference_preprocess(ref)).numpy()
    assert result["fdd"] == pytest.approx(eig_frechet(f_sam, f_ref), rel=1e-4) and result["fdd"] > 0
    assert result["reference_statistics"]["fdd"] == "computed" and result["fdd_network"]["kind"] == "dinov2-vitl14"
    assert result["fid"] is not None and result["precision"] is not None
    # The sqrtm form of the distance on the same features (scipy, as ADM and EDM2 compute it).
    mu1, mu2, s1, s2 = f_sam.mean(0), f_ref.mean(0), np.cov(f_sam, rowvar=False), np.cov(f_ref, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    assert result["fdd"] == pytest.approx(float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root)), rel=1e-4)


@pytest.fixture
def cheap_distance(monkeypatch):
    """The distance replaced by a recording stand-in (the real one is tested above; a 1024-d sqrtm of a singular
    product takes several seconds on a small CPU)."""
    calls = []

    def recording(mu1, sigma1, mu2, sigma2):
        calls.append((np.asarray(mu1), np.asarray(mu2), np.asarray(sigma2)))
        return float(np.sum((np.asarray(mu1) - np.asarray(mu2)) ** 2))

    monkeypatch.setattr(evaluator, "frechet_distance", recording)
    return calls


def run_cli(argv, capsys, monkeypatch):
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() sets its own; restored after
    record = evaluate.main(argv)
    out, err = capsys.readouterr()
    return record, out, err


def test_cli_reports_fdd_when_weights_are_found_and_caches_its_reference(
        offline, weights, colour_net, tmp_path, capsys, monkeypatch, cheap_distance):
    paths, _ = weights
    np.savez(tmp_path / "s.npz", arr_0=images(4, 32, seed=4))
    np.savez(tmp_path / "r.npz", arr_0=images(5, 32, seed=5))
    base = ["--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "r.npz"), "--feature-network", colour_net,
            "--device", "cpu", "--cache-ref"]
    monkeypatch.setenv(dinov2.DINOV2_ENV, paths["timm"])                  # configured -> FDD by default
    record, out, err = run_cli(base, capsys, monkeypatch)
    assert record["fdd"] is not None and "FDD (DINOv2)" in out and "FDD skipped" not in err
    fdd_line = next(line for line in out.splitlines() if line.startswith("FDD (DINOv2)"))
    assert fdd_line.split()[-1] == f"{record['fdd']:.4f}"
    cache = evaluation.reference_cache_path(str(tmp_path / "r.npz"), evaluation.load_dinov2(device="cpu"))
    with np.load(cache) as z:
        assert {"mu", "sigma"} <= set(z.files) and "features" not in z.files and z["mu"].shape == (WIDTH,)
    saved = json.load(open(tmp_path / "s_vs_r_colour.json"))
    assert saved["fdd"] == record["fdd"] and saved["fdd_network"]["depth"] == DEPTH
    again, _, _ = run_cli(base, capsys, monkeypatch)                     # from the cache
    assert again["fdd"] == pytest.approx(record["fdd"], rel=1e-6)


def test_cli_without_weights_skips_fdd_with_one_line(offline, colour_net, tmp_path, capsys, monkeypatch, cheap_distance):
    np.savez(tmp_path / "s.npz", arr_0=images(4, 16, seed=6))
    np.savez(tmp_path / "r.npz", arr_0=images(5, 16, seed=7))
    base = ["--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "r.npz"), "--feature-network", colour_net,
            "--device", "cpu"]
    record, out, err = run_cli(base, capsys, monkeypatch)
    assert record["fdd"] is None and record["fid"] is not None
    assert any(line.startswith("FDD (DINOv2)") and line.endswith("n/a") for line in out.splitlines())
    skipped = [line for line in err.splitlines() if line.startswith("FDD skipped")]
    assert len(skipped) == 1 and "--dinov2-weights" in skipped[0] and "ELIT_DINOV2_WEIGHTS" in skipped[0]
    _, _, err = run_cli(base + ["--no-fdd"], capsys, monkeypatch)
    assert "FDD" not in err
    with pytest.raises(evaluate.UserError, match="DINOv2 weights not found"):
        run_cli(base + ["--fdd"], capsys, monkeypatch)
    found, _, err = run_cli(["--check", "--feature-network", colour_net, "--device", "cpu"], capsys, monkeypatch)
    assert found["fdd_network"] is None and "FDD skipped" in err


def test_fdd_with_given_statistics(offline, weights, colour_net, cheap_distance):
    paths, _ = weights
    net = evaluation.load_network(feature_network=colour_net, device="cpu")
    dino = evaluation.load_dinov2(paths["hub"], device="cpu")
    sam = images(4, 32, seed=8)
    fid_stats = {"mu": np.zeros(6), "sigma": np.eye(6)}
    with pytest.raises(EvalInputError, match="needs fdd_ref"):
        evaluation.evaluate(sam, fid_stats, net, fdd_network=dino)
    fdd_stats = {"mu": np.zeros(WIDTH), "sigma": np.eye(WIDTH)}
    result = evaluation.evaluate(sam, fid_stats, net, fdd_network=dino, fdd_ref=fdd_stats)
    mu = dino(sam)["pool"].double().numpy().mean(0)
    assert result["fdd"] == pytest.approx(float(mu @ mu), rel=1e-5) and result["reference_statistics"]["fdd"] == "given"
