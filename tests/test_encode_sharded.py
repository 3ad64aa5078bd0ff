"""Sharded `encode`: torchrun processes (gloo, CPU) write one merged memory-mapped output, byte-identical to one
process, and an interrupted run resumes with another process count. Tiny random-init AutoencoderKL, saved locally."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import dataset_tools
from conftest import ROOT
from dataio import vae as vae_lib
from dataio.format import begin_dataset, finish_dataset
from dataio.sources import encode as encode_source
from dataio.sources.encode import collect_done, my_slice, todo_batches
from utils.atomic import write_json

N, SIDE, BATCH = 9, 16, 2                      # 5 batches: rank 0 takes 2, rank 1 takes 3


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    model = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                          latent_channels=4, norm_num_groups=8, sample_size=SIDE, scaling_factor=0.5)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A folder as `convert` writes it: N random PNGs, 3 classes."""
    dest = str(tmp_path_factory.mktemp("src") / "images")
    recipe = dict(command="test-source")
    tmp = begin_dataset(dest, recipe)
    rng = np.random.default_rng(0)
    labels = []
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(os.path.join(tmp, f"{i}.png"))
        labels.append([f"{i}.png", i % 3])
    finish_dataset(tmp, dest, dict(kind="images", count=N, num_classes=3, class_names=["a", "b", "c"],
                                   resolution=[SIDE, SIDE], channels=3, labels=labels), recipe)
    return dest


def args(src, dest, vae):
    return ["encode", "--source", src, "--dest", str(dest), "--vae", vae, "--batch-size", str(BATCH),
            "--num-workers", "0", "--device", "cpu"]


def run_in_process(argv):
    dataset_tools.main(argv)                   # the entry script, as a user runs it


def torchrun(argv, nproc=2):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, "dataset_tools.py"), *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def files(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in ("mean.npy", "std.npy", "labels.npy")}


@pytest.fixture(scope="module")
def one_process(source, vae_dir, tmp_path_factory):
    """The reference: one process, one CPU thread (a CPU convolution's bits depend on the thread count; on a
    GPU the kernels do not, so the same holds per kind of device)."""
    dest = tmp_path_factory.mktemp("one") / "lat"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_in_process(args(source, dest, vae_dir))
    finally:
        torch.set_num_threads(threads)
    return dest



def test_two_processes_write_the_same_bytes_as_one(one_process, source, vae_dir, tmp_path):
    dest = tmp_path / "lat2"
    proc = torchrun(args(source, dest, vae_dir))
    assert "with 2 processes" in proc.stdout
    assert files(dest) == files(one_process)                               # byte-identical arrays
    meta1, meta2 = (json.loads((d / "dataset.json").read_text()) for d in (one_process, dest))
    assert meta1 == meta2 and meta2["count"] == N and meta2["latent_shape"] == [4, SIDE // 2, SIDE // 2]
    assert sorted(os.listdir(dest)) == ["dataset.json", "labels.npy", "mean.npy", "std.npy"]
    assert not os.path.exists(str(dest) + ".partial")
    # ... and they are the VAE's posterior of each image
    images = np.stack([np.asarray(Image.open(os.path.join(source, f"{i}.png"))) for i in range(N)])
    mean, _ = vae_lib.encode_images(vae_lib.load_vae(vae_dir), images, batch_size=BATCH)
    np.testing.assert_allclose(np.load(dest / "mean.npy"), mean.numpy(), atol=1e-5)


def test_interrupted_run_resumes_with_another_process_count(one_process, source, vae_dir, tmp_path, monkeypatch,
                                                            one_thread):
    dest = tmp_path / "lat"
    real, calls = vae_lib.encode_images, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt                                    # killed after two batches
        return real(*a, **k)

    monkeypatch.setattr(encode_source, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(vae_lib, "encode_images", failing)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(args(source, dest, vae_dir))
    partial = str(dest) + ".partial"
    assert json.load(open(os.path.join(partial, "done-0.json")))["done"] == [[0, 2 * BATCH]]
    proc = torchrun(args(source, dest, vae_dir))                        # resume: 3 batches left, 2 processes
    assert f"{2 * BATCH} of {N} images done" in proc.stderr
    assert files(dest) == files(one_process)


def test_batches_do_not_depend_on_the_process_count():
    done = [[0, 4], [7, 9], [12, 13]]
    todo = todo_batches(20, done, 3)
    assert todo == [[4, 5, 6], [9, 10, 11], [13, 14, 15], [16, 17, 18], [19]]
    for world in (1, 2, 3, 7):
        slices = [my_slice(todo, r, world) for r in range(world)]
        assert [b for s in slices for b in s] == todo                  # contiguous shares, in order, no overlap
    assert todo_batches(5, [], 2) == [[0, 1], [2, 3], [4]]
    assert todo_batches(5, [[0, 5]], 2) == []


def test_progress_records_of_every_process_are_merged(tmp_path):
    tmp = str(tmp_path)
    write_json(os.path.join(tmp, "progress.json"), {"recipe": {}, "done": 3})     # an older single-process run
    write_json(os.path.join(tmp, "done-0.json"), {"done": [[3, 6], [10, 12]]})
    write_json(os.path.join(tmp, "done-1.json"), {"done": [[6, 8]]})
    with open(os.path.join(tmp, "done-2.json"), "w") as f:
        f.write('{"done": [[20')                                       # torn by a kill: its rows are redone
    assert collect_done(tmp) == [[0, 8], [10, 12]]
    assert not [f for f in os.listdir(tmp) if f.startswith("done-")]
    assert json.load(open(os.path.join(tmp, "done.json")))["done"] == [[0, 8], [10, 12]]
    write_json(os.path.join(tmp, "done-0.json"), {"done": [[8, 10]]})
    assert collect_done(tmp) == [[0, 12]]                              # merged with the earlier merge
