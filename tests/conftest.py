import os
import sys

import pytest
import torch
import torch.utils._python_dispatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

from dataio.sources.demo import make_demo_images  # noqa: E402
from dataio.writers import write_pixel_dataset  # noqa: E402
from models.checkpoint import atomic_save  # noqa: E402
from models import build_model  # noqa: E402
from sampling import run as sampling_run  # noqa: E402
from sampling.load import Decoder  # noqa: E402
from sampling.plan import resolve_plan  # noqa: E402

# Tiny settings: every family at a few thousand parameters, 8x8 inputs (4x4 token grid).
TINY = dict(input_size=8, in_channels=4, hidden_size=32, depth=4, num_heads=2, num_classes=10)
TINY_ELIT = dict(elit_group_size=2, elit_head_depth=1, elit_tail_depth=1)


def tiny_model(family: str = "SiT", patch: int = 2, seed: int = 0, randomize: bool = True, **overrides):
    """A tiny model of `family` with random (non-zero) weights everywhere, so every path matters."""
    torch.manual_seed(seed)
    kwargs = dict(TINY, **(TINY_ELIT if family == "ELIT-SiT" else {}))
    kwargs.update(overrides)
    model = build_model(f"{family}-S/{patch}", **kwargs)
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


# Sampling through the library, as generate.py does it (plan -> per-image seeded samples -> decoded uint8).
def plan_dict(model, cfg, warn=None) -> dict:
    """The model's sampling plan for the options `cfg`, as generation.json records it."""
    return resolve_plan(model, cfg, None, "linear", warn).to_dict()


def sample_latents(model, indices, cfg, device="cpu", labels=None):
    """Samples (model space) of images `indices` under cfg's plan, seeds cfg.seed + i."""
    return sampling_run.sample_latents(model, resolve_plan(model, cfg, device), indices, seed=cfg.seed,
                                       num_classes=cfg.num_classes_sampled, labels=labels, device=device)


def generate_images(model, indices, cfg, device, dataset_meta, labels=None):
    """uint8 images (n, H, W, 3) of images `indices`, decoded by the checkpoint's codec."""
    decode = Decoder(dataset_meta).load(model, device)
    (images,) = sampling_run.generate_images(model, resolve_plan(model, cfg, device), [list(indices)],
                                             seed=cfg.seed, decode=decode, num_classes=cfg.num_classes_sampled,
                                             labels=labels, device=device)
    return images


def require_cuda():
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


class OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the aten ops run inside it; `SYNCS` are the ones that copy device data to the host."""

    SYNCS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "is_nonzero", "equal"}

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))

    @property
    def syncs(self) -> set:
        return self.SYNCS & set(self.ops)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and a contended CPU makes OpenMP spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Tiny checkpoints as train.py writes them.

def write_tiny_pixels(dest: str, count: int, side: int) -> str:
    """A pixel dataset of `count` seeded demo images of side x side pixels at `dest`, with ten class names."""
    write_pixel_dataset(dest, lambda: make_demo_images(count, side, seed=0)[:2], [f"c{i}" for i in range(10)],
                        recipe=dict(test=1), created_by="test")
    return dest


def pixel_meta(channels: int = 3) -> dict:
    return dict(kind="pixels", resolution=[8, 8], channels=channels, num_classes=10, count=100,
                class_names=[f"c{i}" for i in range(10)])


def write_checkpoint(path: str, family: str = "ELIT-SiT", dataset: dict | None = "pixels", seed: int = 0,
                     **overrides) -> str:
    """A checkpoint with arch/model/ema/step/config/dataset; `dataset='pixels'` -> an 8x8 RGB pixel dataset."""
    if dataset == "pixels":
        dataset = pixel_meta()
        overrides.setdefault("in_channels", 3)
    model = tiny_model(family, seed=seed, **overrides)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = dict(arch=model.arch, model=model.state_dict(), ema=ema, step=12,
                config=dict(exp_name="tiny", path_type="linear"))
    if dataset is not None:
        ckpt["dataset"] = dataset
    atomic_save(ckpt, path)
    return path


def script_env():
    """Environment of a test subprocess: one CPU thread, no GPU, the repo importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    env.pop("ELIT_DEBUG", None)
    return env


def later_flags_win(argv) -> list:
    """A test's base flags followed by overrides, with each flag kept once (its last occurrence).

    The CLI refuses a flag repeated with different values (issue 14), so tests that override a base argument
    list drop the earlier occurrence here instead of relying on 'last wins'.
    """
    groups, order = {}, []
    for tok in map(str, argv):
        if tok.startswith("--"):
            key = tok[2:].replace("-", "_")
            key = key[3:] if key.startswith("no_") else key
            if key in groups:
                order.remove(key)
            groups[key] = [tok]
            order.append(key)
        elif order:
            groups[order[-1]].append(tok)
    return [tok for key in order for tok in groups[key]]
