"""Data: demo data, convert (folder == zip), encode with a tiny VAE, importers, loading, the step sampler, errors."""

import gzip
import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import dataset_tools
from conftest import ROOT
from dataio import vae as vae_lib
from dataio.codec import Codec, decode_latents
from dataio.dataset import load_dataset
from dataio.loader import StepBatchSampler, make_loader
from dataio.sources import encode as encode_source
from dataio.sources.demo import make_demo_images
from dataio.sources.imagenet import TRANSFORMS
from utils.errors import UserError


def cli(*commands):
    """Run `dataset_tools.py ARGS` for each argument list, concurrently; -> [(returncode, stdout, stderr)]."""
    env = {k: v for k, v in os.environ.items() if k != "ELIT_DEBUG"}
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "dataset_tools.py"), *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in commands]
    out = [p.communicate(timeout=120) for p in procs]
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, out)]


def assert_one_line_error(rc, stderr, *words):
    assert rc != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    for w in words:
        assert w in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------------------
# Demo data.

def test_demo_images_are_deterministic_and_balanced():
    a, la, names = make_demo_images(53, 16, seed=3)
    b, lb, _ = make_demo_images(53, 16, seed=3)
    c, _, _ = make_demo_images(53, 16, seed=4)
    assert a.shape == (53, 16, 16, 3) and a.dtype == np.uint8 and la.dtype == np.int64
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert a.tobytes() != c.tobytes()
    counts = np.bincount(la, minlength=len(names))
    assert len(names) == 6 and counts.min() >= 8 and counts.max() <= 9


def test_demo_classes_are_visually_distinct():
    """A nearest-class-mean classifier on colour quantiles (position-invariant) must beat chance by far."""
    images, labels, _ = make_demo_images(1200, 32, seed=1)
    x = images.reshape(len(images), -1, 3).astype(np.float32)
    feats = np.concatenate([np.quantile(x, q, axis=1) for q in (0.5, 0.8, 0.9, 0.97)], 1)
    tr, te = slice(0, 1000), slice(1000, None)
    centroids = np.stack([feats[tr][labels[tr] == k].mean(0) for k in range(labels.max() + 1)])
    pred = np.argmin(((feats[te][:, None] - centroids[None]) ** 2).sum(-1), 1)
    assert (pred == labels[te]).mean() > 0.7


def test_demo_command_writes_identical_pixel_datasets(tmp_path):
    for name in ("a", "b"):
        dataset_tools.main(["demo", "--dest", str(tmp_path / name), "--num-images", "40", "--resolution", "16",
                            "--seed", "7"])
    for file in ("images.npy", "labels.npy"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    ds = load_dataset(str(tmp_path / "a"))
    assert ds.meta["kind"] == "pixels" and len(ds) == 40 and ds.meta["num_classes"] == 6
    assert Codec.from_record(ds.meta).model_settings() == dict(input_size=16, in_channels=3, num_classes=6)
    item = ds[3]
    raw = np.load(tmp_path / "a" / "images.npy")[3]
    assert item["x"].shape == (3, 16, 16) and item["x"].dtype == torch.float32 and "std" not in item
    assert torch.allclose(item["x"], torch.from_numpy(raw).permute(2, 0, 1).float() / 127.5 - 1)
    assert item["y"].dtype == torch.int64
    # Rerunning is a no-op; another recipe into the same folder is refused.
    mtime = os.path.getmtime(tmp_path / "a" / "images.npy")
    dataset_tools.main(["demo", "--dest", str(tmp_path / "a"), "--num-images", "40", "--resolution", "16",
                        "--seed", "7"])
    assert os.path.getmtime(tmp_path / "a" / "images.npy") == mtime
    with pytest.raises(UserError, match="different dataset"):
        dataset_tools.main(["demo", "--dest", str(tmp_path / "a"), "--num-images", "40", "--seed", "8"])


# ---------------------------------------------------------------------------------------------------------
# convert.

CLASS_COLOURS = {"a_cat": (200, 20, 20), "b_dog": (20, 200, 20), "c_fox": (20, 20, 200)}
SIZES = {"a_cat": [(40, 30), (64, 64)], "b_dog": [(300, 200), (50, 90)], "c_fox": [(33, 47), (128, 96)]}


def make_class_tree(root, rng=None):
    """Three class folders (created in unsorted order) of images of different sizes, coloured by class;
    plus files that must be ignored (text, hidden) or skipped (a corrupt PNG), and a nested image."""
    rng = rng or np.random.default_rng(0)
    for cls in ("c_fox", "a_cat", "b_dog"):
        os.makedirs(root / cls)
        for i, (w, h) in enumerate(SIZES[cls]):
            img = np.clip(np.array(CLASS_COLOURS[cls]) + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / cls / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (root / "a_cat" / "notes.txt").write_text("not an image")
    os.makedirs(root / ".cache")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / ".cache" / "x.png")
    os.makedirs(root / "c_fox" / "sub")
    Image.fromarray(np.full((20, 20, 3), CLASS_COLOURS["c_fox"], np.uint8)).save(root / "c_fox" / "sub" / "deep.png")
    (root / "b_dog" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def zip_tree(root, path, prefix="train/"):
    with zipfile.ZipFile(path, "w") as z:
        for dirpath, _, files in os.walk(root):
            for f in files:
                full = os.path.join(dirpath, f)
                z.write(full, prefix + os.path.relpath(full, root))
    return path


def read_converted(folder):
    meta = json.loads((folder / "dataset.json").read_text())
    images = np.stack([np.asarray(Image.open(folder / rel)) for rel, _ in meta["labels"]])
    return meta, images, [label for _, label in meta["labels"]]


@pytest.fixture(scope="module")
def class_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    make_class_tree(root / "train")
    zip_tree(root / "train", root / "train.zip")
    return root


@pytest.mark.parametrize("transform", ["center-crop-dhariwal", "center-crop", "center-crop-wide"])
def test_convert_folder_and_zip_agree(class_tree, tmp_path, transform, capsys):
    outs = {}
    for name, source in (("dir", class_tree / "train"), ("zip", class_tree / "train.zip")):
        dataset_tools.main(["convert", "--source", str(source), "--dest", str(tmp_path / name), "--resolution",
                            "16x16", "--transform", transform, "--num-workers", "2" if name == "dir" else "0"])
        outs[name] = read_converted(tmp_path / name)
    assert "broken.png" in capsys.readouterr().err                 # the corrupt file is reported and skipped
    (meta, images, labels), (zmeta, zimages, zlabels) = outs["dir"], outs["zip"]
    assert np.array_equal(images, zimages) and labels == zlabels
    assert meta["class_names"] == zmeta["class_names"] == ["a_cat", "b_dog", "c_fox"]
    assert meta["count"] == 7 and meta["skipped"] == 1 and meta["kind"] == "images"
    assert images.shape == (7, 16, 16, 3) and meta["resolution"] == [16, 16]
    assert labels == [0, 0, 1, 1, 2, 2, 2]                            # sorted folders, sorted names within
    colour = images.reshape(7, -1, 3).mean(1)                       # (black letterbox rows shift no channel)
    assert list(colour.argmax(1)) == labels                         # each image keeps its class's colour


def test_convert_transforms_match_their_definitions(tmp_path):
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)      # H=200, W=300
    img = Image.fromarray(src)
    # ADM: 300x200 -> box 150x100 -> 75x50 -> 37x25 (25 < 2*16) -> bicubic 24x16 -> centre 16x16.
    ref = img.resize((150, 100), Image.BOX).resize((75, 50), Image.BOX).resize((37, 25), Image.BOX)
    ref = np.asarray(ref.resize((24, 16), Image.BICUBIC))[:, 4:20]
    assert np.array_equal(TRANSFORMS["center-crop-dhariwal"](img, 16, 16), ref)
    # Centre crop: the central 200x200 square, Lanczos to 16x16.
    ref = np.asarray(img.crop((50, 0, 250, 200)).resize((16, 16), Image.LANCZOS))
    assert np.array_equal(TRANSFORMS["center-crop"](img, 16, 16), ref)
    # Wide: full width at 16 -> 16x11, letterboxed into rows 2..12 of a black 16x16.
    out = TRANSFORMS["center-crop-wide"](img, 16, 16)
    assert out.shape == (16, 16, 3) and not out[:2].any() and not out[13:].any()
    assert np.array_equal(out[2:13], np.asarray(img.resize((16, 11), Image.LANCZOS)))


def test_convert_max_images_covers_every_class(class_tree, tmp_path):
    dataset_tools.main(["convert", "--source", str(class_tree / "train"), "--dest", str(tmp_path / "out"),
                        "--resolution", "8", "--max-images", "3", "--num-workers", "0"])
    meta, images, labels = read_converted(tmp_path / "out")
    assert labels == [0, 1, 2] and images.shape == (3, 8, 8, 3)


def test_convert_rejects_bad_sources(tmp_path):
    os.makedirs(tmp_path / "empty" / "cls")
    with pytest.raises(UserError, match="no images"):
        dataset_tools.main(["convert", "--source", str(tmp_path / "empty"), "--dest", str(tmp_path / "o")])
    os.makedirs(tmp_path / "loose")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "loose" / "a.png")
    with pytest.raises(UserError, match="one subfolder per class"):
        dataset_tools.main(["convert", "--source", str(tmp_path / "loose"), "--dest", str(tmp_path / "o")])
    with pytest.raises(UserError, match="square"):
        dataset_tools.main(["convert", "--source", str(tmp_path / "loose"), "--dest", str(tmp_path / "o"),
                            "--resolution", "16x8"])
    assert not os.path.exists(tmp_path / "o")


# ---------------------------------------------------------------------------------------------------------
# encode with a tiny AutoencoderKL saved locally.

SCALE, SHIFT = 0.5, 0.1


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    model = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                          latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=SCALE,
                          shift_factor=SHIFT)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def images32(class_tree, tmp_path_factory):
    dest = tmp_path_factory.mktemp("conv") / "images32"
    dataset_tools.main(["convert", "--source", str(class_tree / "train"), "--dest", str(dest), "--resolution",
                        "32x32", "--num-workers", "0"])
    return dest


def encode_args(src, dest, vae_dir, *extra):
    return ["encode", "--source", str(src), "--dest", str(dest), "--vae", vae_dir, "--batch-size", "3",
            "--num-workers", "0", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def latents(images32, tiny_vae_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("lat") / "latents"
    dataset_tools.main(encode_args(images32, dest, tiny_vae_dir))
    return dest


def test_encode_metadata_and_arrays(latents, images32, tiny_vae_dir):
    meta = json.loads((latents / "dataset.json").read_text())
    assert meta["kind"] == "latents" and meta["count"] == 7 and meta["num_classes"] == 3
    assert meta["class_names"] == ["a_cat", "b_dog", "c_fox"]
    assert meta["latent_scale"] == SCALE and meta["latent_shift"] == SHIFT
    assert meta["latent_shape"] == [4, 16, 16] and meta["image_resolution"] == [32, 32]
    assert meta["vae"] == os.path.abspath(tiny_vae_dir) and meta["precision"] == "fp32"
    assert not os.path.exists(str(latents) + ".partial")
    # The stored posterior is the VAE's, image by image, in convert's order.
    _, images, labels = read_converted(images32)
    model = vae_lib.load_vae(tiny_vae_dir)
    mean, std = vae_lib.encode_images(model, images, batch_size=3)      # as encode batched it
    assert torch.allclose(torch.from_numpy(np.load(latents / "mean.npy")), mean, atol=1e-5)
    assert torch.allclose(torch.from_numpy(np.load(latents / "std.npy")), std, atol=1e-5)
    assert np.array_equal(np.load(latents / "labels.npy"), labels)
    assert (std > 0).all() and not torch.allclose(std, torch.ones_like(std))


def test_loaded_latents_and_model_input(latents):
    ds = load_dataset(str(latents))
    assert Codec.from_record(ds.meta).model_settings() == dict(input_size=16, in_channels=4, num_classes=3)
    batch = next(iter(make_loader(ds, StepBatchSampler(len(ds), 5, seed=1))))
    assert batch["x"].shape == batch["std"].shape == (5, 4, 16, 16) and batch["x"].dtype == torch.float32
    assert batch["y"].shape == (5,) and batch["y"].dtype == torch.int64
    noise = torch.randn_like(batch["x"])
    assert torch.allclose(Codec.from_record(ds.meta).encode(batch), (batch["x"] - SHIFT) * SCALE)
    sample = Codec.from_record(ds.meta).encode(batch, noise)
    assert torch.allclose(sample, (batch["x"] + batch["std"] * noise - SHIFT) * SCALE)
    assert not torch.allclose(sample, Codec.from_record(ds.meta).encode(batch))


def test_decode_latents_rounds_to_uint8(latents, tiny_vae_dir):
    model = vae_lib.load_vae(tiny_vae_dir)
    assert vae_lib.latent_norm(model) == (SCALE, SHIFT)
    x = (torch.from_numpy(np.load(latents / "mean.npy"))[:5] - SHIFT) * SCALE
    out = decode_latents(model, x, SCALE, SHIFT, batch_size=2)
    assert out.shape == (5, 32, 32, 3) and out.dtype == torch.uint8
    with torch.no_grad():
        ref = model.decode(x / SCALE + SHIFT).sample
    expected = (ref * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(out, expected)
    truncated = (ref * 127.5 + 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert not torch.equal(out, truncated)


def test_encode_is_idempotent_and_never_overwrites(latents, images32, tiny_vae_dir, capsys):
    mtime = os.path.getmtime(latents / "mean.npy")
    dataset_tools.main(encode_args(images32, latents, tiny_vae_dir))
    assert "nothing to do" in capsys.readouterr().out and os.path.getmtime(latents / "mean.npy") == mtime
    with pytest.raises(UserError, match="different dataset"):
        dataset_tools.main(encode_args(images32, latents, tiny_vae_dir, "--precision", "bf16"))


def test_interrupted_encode_is_never_complete_and_resumes(latents, images32, tiny_vae_dir, tmp_path, monkeypatch):
    dest = tmp_path / "lat"
    real = vae_lib.encode_images
    calls = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt                       # killed mid-run, after two batches
        return real(*a, **k)

    monkeypatch.setattr(encode_source, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(vae_lib, "encode_images", failing)
    with pytest.raises(KeyboardInterrupt):
        dataset_tools.main(encode_args(images32, dest, tiny_vae_dir))
    assert not os.path.exists(dest / "dataset.json")
    assert not os.path.exists(str(dest) + ".partial/dataset.json")
    with pytest.raises(UserError, match="partial"):
        load_dataset(str(dest))
    calls.clear()
    dataset_tools.main(encode_args(images32, dest, tiny_vae_dir))
    assert len(calls) == 1                                # resumed at image 6 of 7: one batch left
    for file in ("mean.npy", "std.npy", "labels.npy"):
        assert np.array_equal(np.load(dest / file), np.load(latents / file))


def test_missing_vae_is_one_clear_line(images32, tmp_path):
    with pytest.raises(UserError, match="VAE folder not found"):
        dataset_tools.main(encode_args(images32, tmp_path / "lat", str(tmp_path / "nope")))
    assert not os.listdir(tmp_path)                       # nothing started, nothing left behind
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UserError, match="no config.json"):
        vae_lib.load_vae(str(tmp_path / "empty"))


def test_uncached_hub_vae_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))     # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="nor in the local Hugging Face cache.*pass a local folder"):
        vae_lib.load_vae("example-org/example-vae")


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST importer on synthetic idx files.

def write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fmnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "fm"
    os.makedirs(src)
    arrays = {"train": (rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)),
              "t10k": (rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 10, 3))}
    write_idx(src / "train-images-idx3-ubyte.gz", arrays["train"][0])     # gzip and raw files both work
    write_idx(src / "train-labels-idx1-ubyte.gz", arrays["train"][1])
    write_idx(src / "t10k-images-idx3-ubyte", arrays["t10k"][0])
    write_idx(src / "t10k-labels-idx1-ubyte", arrays["t10k"][1])
    return src, arrays


def test_fashion_mnist_import(fmnist_dir, tmp_path):
    src, arrays = fmnist_dir
    dataset_tools.main(["fashion-mnist", "--source", str(src), "--dest", str(tmp_path / "out")])
    ds = load_dataset(str(tmp_path / "out" / "train"))
    images = np.load(tmp_path / "out" / "train" / "images.npy")
    assert images.shape == (7, 32, 32, 1) and ds.meta["channels"] == 1 and ds.meta["class_names"][0] == "T-shirt/top"
    assert np.array_equal(images[:, 2:30, 2:30, 0], arrays["train"][0]) and images[:, :2].max() == 0
    assert np.array_equal(np.load(tmp_path / "out" / "train" / "labels.npy"), arrays["train"][1])
    assert Codec.from_record(ds.meta).model_settings() == dict(input_size=32, in_channels=1, num_classes=10)
    dataset_tools.main(["fashion-mnist", "--source", str(src), "--dest", str(tmp_path / "out"), "--split", "test",
                        "--channels", "3", "--resolution", "16"])
    test = np.load(tmp_path / "out" / "test" / "images.npy")
    assert test.shape == (3, 16, 16, 3) and np.array_equal(test[..., 0], test[..., 2])


def test_fashion_mnist_rejects_bad_files(fmnist_dir, tmp_path):
    src, _ = fmnist_dir
    (src / "t10k-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04garbage")
    with pytest.raises(UserError, match="not an idx file"):
        dataset_tools.main(["fashion-mnist", "--source", str(src), "--dest", str(tmp_path / "o"), "--split", "test"])
    os.unlink(src / "train-labels-idx1-ubyte.gz")
    with pytest.raises(UserError, match="train-labels"):
        dataset_tools.main(["fashion-mnist", "--source", str(src), "--dest", str(tmp_path / "o")])
    assert not os.path.exists(tmp_path / "o" / "test" / "dataset.json")


# ---------------------------------------------------------------------------------------------------------
# The step batch sampler.

def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("world", [2, 3])
def test_sampler_one_process_is_the_union_of_ranks(world):
    L, steps = 4, 9                                        # 9 * 4 * world items cross epochs of 10
    single = take(StepBatchSampler(10, L * world, 1, 0, seed=5), steps)
    ranks = [take(StepBatchSampler(10, L, world, r, seed=5), steps) for r in range(world)]
    for p in range(steps):
        assert single[p] == sum((ranks[r][p] for r in range(world)), [])


def test_sampler_resume_continues_the_stream():
    full = take(StepBatchSampler(13, 3, 2, 1, seed=2), 20)
    resumed = take(StepBatchSampler(13, 3, 2, 1, seed=2, start_micro_batch=11), 9)
    assert resumed == full[11:]
    assert take(StepBatchSampler(13, 3, 2, 1, seed=3), 20) != full


def test_sampler_epochs_are_permutations():
    n = 12
    stream = sum(take(StepBatchSampler(n, 4, seed=0), 9), [])  # three epochs
    epochs = [stream[i * n:(i + 1) * n] for i in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert epochs[0] != epochs[1]
    g = torch.Generator().manual_seed(0 + 1)
    assert epochs[1] == torch.randperm(n, generator=g).tolist()  # epoch e is seeded with seed + e
    assert len(list(StepBatchSampler(n, 4, num_micro_batches=5))) == 5


def test_loader_workers_and_position(tmp_path):
    dataset_tools.main(["demo", "--dest", str(tmp_path / "d"), "--num-images", "30", "--resolution", "8"])
    ds = load_dataset(str(tmp_path / "d"))
    batches = {}
    for workers in (0, 2):
        loader = make_loader(ds, StepBatchSampler(len(ds), 4, seed=1, start_micro_batch=3, num_micro_batches=6),
                             num_workers=workers)
        assert loader.data_position == 3
        got = []
        for batch in loader:
            got.append(batch)
            assert loader.data_position == 3 + len(got)    # the next micro-batch to read
        batches[workers] = got
    assert len(batches[0]) == 6 and batches[0][0]["x"].shape == (4, 3, 8, 8)
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero exit.

def test_load_dataset_errors(tmp_path, latents):
    with pytest.raises(UserError, match="not found"):
        load_dataset(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "nojson")
    with pytest.raises(UserError, match="no dataset.json"):
        load_dataset(str(tmp_path / "nojson"))
    os.makedirs(tmp_path / "bad")
    (tmp_path / "bad" / "dataset.json").write_text("{ not json")
    with pytest.raises(UserError, match="corrupt"):
        load_dataset(str(tmp_path / "bad"))
    # Truncated array, empty dataset, image folders instead of latents.
    dataset_tools.main(["demo", "--dest", str(tmp_path / "d"), "--num-images", "20", "--resolution", "8"])
    with open(tmp_path / "d" / "images.npy", "r+b") as f:
        f.truncate(500)
    with pytest.raises(UserError, match="corrupt"):
        load_dataset(str(tmp_path / "d"))
    meta = json.loads((latents / "dataset.json").read_text())
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "dataset.json").write_text(json.dumps(dict(meta, count=0)))
    with pytest.raises(UserError, match="no items"):
        load_dataset(str(tmp_path / "empty"))
    images_meta = dict(kind="images", count=1, num_classes=1, class_names=["a"], resolution=[8, 8], labels=[])
    (tmp_path / "bad" / "dataset.json").write_text(json.dumps(images_meta))
    with pytest.raises(UserError, match="encode them first"):
        load_dataset(str(tmp_path / "bad"))


def test_check_model_fits_names_both_sizes(latents):
    meta = load_dataset(str(latents)).meta
    Codec.from_record(meta).check_fits(16, 4, "SiT-S/2")
    with pytest.raises(UserError) as e:
        Codec.from_record(meta).check_fits(32, 4, "ELIT-SiT-XL/2")
    assert str(e.value) == ("latents are 16x16x4 (of 32x32 images) but ELIT-SiT-XL/2 at this config "
                            "expects 32x32x4")
    with pytest.raises(UserError, match="3 classes but SiT-S/2 has 2"):
        Codec.from_record(meta).check_fits(16, 4, "SiT-S/2", num_classes=2)


def test_cli_errors_are_one_line(tmp_path):
    os.makedirs(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "dataset.json").write_text("[1, 2")
    results = cli(["convert", "--source", str(tmp_path / "no-such-folder"), "--dest", str(tmp_path / "o")],
                  ["encode", "--source", str(tmp_path / "corrupt"), "--dest", str(tmp_path / "o")],
                  ["encode", "--source", str(tmp_path / "missing"), "--dest", str(tmp_path / "o")],
                  ["demo", "--dest", str(tmp_path / "o"), "--num-imagez", "3"],
                  ["frobnicate"])
    expected = [("source not found", "no-such-folder"), ("corrupt", "dataset.json"), ("not found", "missing"),
                ("unrecognized arguments", "--num-imagez"), ("unknown command", "frobnicate")]
    for (rc, _, err), words in zip(results, expected):
        assert_one_line_error(rc, err, *words)
    assert not os.path.exists(tmp_path / "o")


def test_latent_items_carry_their_source_images_for_repa(latents, images32):
    ds = load_dataset(str(latents), with_images=True)
    _, images, _ = read_converted(images32)
    items = ds.__getitems__([4, 0, 6])
    for item, i in zip(items, [4, 0, 6]):
        assert item["image"].dtype == torch.uint8
        assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), images[i])
    assert "image" not in load_dataset(str(latents))[0]


class _FakeDINO(torch.nn.Module):
    """DINOv2's interface (forward_features -> x_norm_patchtokens, /14 patches, embed_dim), tiny."""

    embed_dim = 8

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, self.embed_dim, kernel_size=14, stride=14)

    def forward_features(self, x):
        return {"x_norm_patchtokens": self.proj(x).flatten(2).transpose(1, 2)}


def test_training_on_encoded_latents_with_repa(latents, tmp_path, monkeypatch):
    """train.py's loop on `encode` output: posterior sampling, REPA on the source images, a decoded grid."""
    import training
    import training.repa
    from training.options import TrainConfig
    from utils.cli import parse_config
    monkeypatch.setattr(training.repa, "load_repa_encoder", lambda *a, **k: _FakeDINO().requires_grad_(False))
    cfg = parse_config(TrainConfig, [
        "--model", "SiT-S/2", "--data-dir", str(latents), "--output-dir", str(tmp_path), "--exp-name", "run",
        "--global-batch-size", "4", "--max-train-steps", "2", "--log-every", "1", "--sample-every", "0",
        "--sample-num-steps", "2", "--report-to", "none", "--num-workers", "0", "--no-progress",
        "--proj-coeff", "0.5", "--repa-depth", "1"])
    trainer = training.Trainer(cfg, model_kwargs=dict(hidden_size=32, depth=2, num_heads=2))
    calls = []
    original = trainer.loss_fn.__call__

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(out.proj)
        return out
    monkeypatch.setattr(trainer, "loss_fn", type("Spy", (), {"__call__": staticmethod(spy),
                                                             "draw": trainer.loss_fn.draw})())
    trainer.fit()
    assert len(calls) == 2 and all(p is not None and p.shape == (4,) for p in calls)
    assert trainer.model.projector[-1].out_features == _FakeDINO.embed_dim
    grid = tmp_path / "run" / "samples" / "0000002.png"
    assert grid.is_file() and np.asarray(Image.open(grid)).shape[-1] == 3       # decoded by the tiny VAE
