"""Feature networks: the TF-2015 Inception-v3 of the ADM protocol (through torch-fidelity), or a user's TorchScript.

Every network maps a batch of uint8 images (B, H, W, C) to a dict of float32 tensors on its device:
    pool     (B, F)     features for FID and precision/recall (Inception: pool_3, F = 2048)
    logits   (B, K)     for the Inception Score (Inception: the 1008-way logits without the fc bias) or None
    spatial  (B, 2023)  for sFID (Inception only; else None)

Inception weights come from a local file only (`find_inception_weights`); nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from collections.abc import Mapping
from typing import Optional

import numpy as np
import torch

from .errors import EvalInputError

INCEPTION_ENV = "ELIT_INCEPTION_WEIGHTS"
# pytorch-fid's name and torch-fidelity's name for the same file: both carry the torch.hub hash suffix 6726825d
# (the first hex digits of the file's SHA-256) and torchvision's Inception3 key layout with a 1008-way fc.
INCEPTION_FILENAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
STANDARD_SHA256_PREFIX = "6726825d"
# sFID (Nash et al. 2021, as ADM computes it): the first 7 channels of the TF graph's `mixed_6/conv`, i.e. the
# 1x1 branch of the third 17x17 block. TF names mixed, mixed_1, mixed_2 = Mixed_5b/5c/5d, mixed_3 = Mixed_6a,
# mixed_4..mixed_7 = Mixed_6b..6e, so mixed_6 = Mixed_6d; its `conv` node is the ReLU output (B, 17, 17, 192).
SPATIAL_BLOCK = "Mixed_6d"
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS                   # 2023, flattened in NHWC order as TF lays it out


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_weights_locations() -> list[str]:
    """Where the file is looked for when neither a path nor $ELIT_INCEPTION_WEIGHTS is given: torch.hub's
    checkpoint folder, where pytorch-fid and torch-fidelity put it when they download it."""
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    return [os.path.join(folder, name) for name in INCEPTION_FILENAMES]


def find_inception_weights(path: Optional[str] = None) -> str:
    """The Inception weights file: `path`, else $ELIT_INCEPTION_WEIGHTS, else torch.hub's checkpoint folder."""
    if path:
        if not os.path.isfile(path):
            raise EvalInputError(f"Inception weights file not found: {path} (--inception-weights); {_where_from()}")
        return path
    env = os.environ.get(INCEPTION_ENV)
    if env:
        if not os.path.isfile(env):
            raise EvalInputError(f"Inception weights file not found: {env} (from ${INCEPTION_ENV}); {_where_from()}")
        return env
    for candidate in default_weights_locations():
        if os.path.isfile(candidate):
            return candidate
    raise EvalInputError(
        f"Inception weights not found: pass --inception-weights PATH (Python: inception_weights=PATH), "
        f"set ${INCEPTION_ENV}=PATH, or put {INCEPTION_FILENAMES[0]} at {default_weights_locations()[0]}; {_where_from()}")


def _where_from() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    return ("the file is the standard TF-2015 FID Inception state dict: pytorch-fid's "
            f"{INCEPTION_FILENAMES[0]} or the identical {INCEPTION_FILENAMES[1]} of torch-fidelity ({URL_INCEPTION_V3}, "
            "fetched on a connected machine); nothing is downloaded here")


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def _sha256_of_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def read_inception_state_dict(path: str) -> tuple[dict, str]:
    """(state dict on CPU, sha256 hex) of a weights file, loaded with weights_only=True: no code runs."""
    with open(path, "rb") as f:
        data = f.read()
    sha = hashlib.sha256(data).hexdigest()
    try:
        state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:                                  # corrupt file, pickled code, not a torch file at all
        raise EvalInputError(f"cannot read Inception weights {path}: {_one_line(e).split(' Please ')[0]}") from None
    if not isinstance(state_dict, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise EvalInputError(f"{path} is not a state dict (a mapping of names to tensors); {_where_from()}")
    return dict(state_dict), sha


@contextlib.contextmanager
def _no_download():
    """torch-fidelity downloads its weights when given no file. We always give one; this makes sure of it."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def refuse(url, *args, **kwargs):
        raise EvalInputError(f"refusing to download {url}: Inception weights come from a local file only")

    original, tfi.load_state_dict_from_url = tfi.load_state_dict_from_url, refuse
    try:
        yield
    finally:
        tfi.load_state_dict_from_url = original


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """No TF32 in convolutions and matmuls on CUDA, so features are the fp32 graph's on every GPU (PyTorch's
    default runs cuDNN convolutions in TF32). The new precision API is used: its getter is valid whichever API
    set the flags. CPU: nothing to do."""
    if torch.device(device).type != "cuda":
        yield
        return
    knobs = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    previous = [k.fp32_precision for k in knobs]
    for knob in knobs:
        knob.fp32_precision = "ieee"
    try:
        yield
    finally:
        for knob, value in zip(knobs, previous):
            knob.fp32_precision = value


def _to_device_nchw(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, C) numpy -> uint8 (B, C, H, W) on `device`."""
    x = torch.from_numpy(np.require(images, np.uint8, ["C", "W"]))
    return x.to(device, non_blocking=True).permute(0, 3, 1, 2)


class FeatureNetwork:
    """Interface of a feature network (see the module docstring for what `__call__` returns)."""

    has_spatial: bool = False
    # whether ADM's stored reference statistics (mu/sigma of Inception pool_3) describe this network's features
    uses_adm_statistics: bool = False
    # whether the logits index the dataset's classes (so classifier accuracy against labels means something)
    class_logits: bool = False
    # whether its pool features also give precision/recall (so a reference's features are kept, not only mu/sigma)
    precision_recall: bool = True
    sha256: str = ""

    def __init__(self, device):
        try:
            self.device = torch.device(device) if device is not None else default_device()
        except (RuntimeError, TypeError):
            raise EvalInputError(f"unknown device {device!r} (use cuda, cuda:N or cpu)") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EvalInputError(f"device {device!r} asked for, but no CUDA GPU is available")

    def __call__(self, images: np.ndarray) -> dict[str, Optional[torch.Tensor]]:
        raise NotImplementedError

    @property
    def tag(self) -> str:
        """Short name for cache files: network kind + weights hash."""
        raise NotImplementedError

    def info(self) -> dict:
        raise NotImplementedError


class InceptionV3Features(FeatureNetwork):
    """TF-2015 Inception-v3 through torch-fidelity's TF-exact port (TF1 bilinear resize to 299, (x-128)/128,
    TF's average pools), with a forward hook on Mixed_6d's 1x1 branch for the sFID features, in one pass."""

    has_spatial = True
    uses_adm_statistics = True

    def __init__(self, weights: Optional[str] = None, device=None):
        super().__init__(device)
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights_path = find_inception_weights(weights)
        state_dict, self.sha256 = read_inception_state_dict(self.weights_path)
        # Hand torch-fidelity a CPU re-serialisation of the validated tensors: its own torch.load (which allows
        # arbitrary pickles) then reads bytes we wrote, never the user's file.
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        buffer.seek(0)
        try:
            with _no_download():
                model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                    feature_extractor_weights_path=buffer)
        except RuntimeError as e:                           # strict load_state_dict: wrong keys or shapes
            reason = _one_line(e).replace("Error(s) in loading state_dict for FeatureExtractorInceptionV3: ", "")
            raise EvalInputError(f"{self.weights_path} is not the pt_inception-2015-12-05 state dict: {reason}") from None
        self.model = model.to(self.device).eval()
        self.standard_weights = self.sha256.startswith(STANDARD_SHA256_PREFIX)
        if not self.standard_weights:
            warnings.warn(f"{self.weights_path}: SHA-256 {self.sha256[:8]}... is not the standard file's "
                          f"({STANDARD_SHA256_PREFIX}...): metrics are not comparable with published numbers",
                          stacklevel=2)
        self._spatial: Optional[torch.Tensor] = None
        getattr(self.model, SPATIAL_BLOCK).branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output):
        # output: (B, 192, 17, 17), after BN and ReLU (torch-fidelity's BasicConv2d = conv, BN, ReLU).
        # reshape of the permuted view copies, so the kept tensor is ours.
        self._spatial = output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(output.shape[0], -1)   # (B, 2023)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, Optional[torch.Tensor]]:
        x = _to_device_nchw(images, self.device)           # (B, C, H, W) uint8
        if x.shape[1] == 1:                                 # grey: replicate to RGB, as usual for Inception metrics
            x = x.expand(-1, 3, -1, -1)
        with exact_fp32(self.device):
            pool, logits = self.model(x.contiguous())      # (B, 2048), (B, 1008) = pool @ fc.weight.T (no bias)
        spatial, self._spatial = self._spatial, None
        return {"pool": pool, "logits": logits, "spatial": spatial}

    @property
    def tag(self) -> str:
        return f"inception-{self.sha256[:8]}"

    def info(self) -> dict:
        return {"kind": "inception-v3-tf-2015", "weights": os.path.abspath(self.weights_path), "sha256": self.sha256,
                "standard_weights": self.standard_weights}


class ScriptedFeatures(FeatureNetwork):
    """A TorchScript module mapping float images (B, C, H, W) with values in [0, 255] to (features (B, F),
    logits (B, K)), or to features alone. Resizing and normalisation are the module's own business."""

    class_logits = True

    def __init__(self, path: str, device=None):
        super().__init__(device)
        if not os.path.isfile(path):
            raise EvalInputError(f"feature network not found: {path} (--feature-network)")
        try:
            with warnings.catch_warnings():                 # TorchScript is deprecated in favour of torch.export,
                warnings.simplefilter("ignore", FutureWarning)  # but it is the documented interface here
                self.model = torch.jit.load(path, map_location=self.device).eval()
        except Exception as e:
            raise EvalInputError(f"cannot load {path} as a TorchScript module (torch.jit.save): {_one_line(e)}") from None
        self.path = path
        self.sha256 = _sha256_of_file(path)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, Optional[torch.Tensor]]:
        x = _to_device_nchw(images, self.device).float()    # (B, C, H, W) in [0, 255]
        try:
            with exact_fp32(self.device):
                out = self.model(x)
        except Exception as e:
            raise EvalInputError(f"feature network {self.path} failed on a batch of shape {tuple(x.shape)}: {_one_line(e)}") from None
        features, logits = (tuple(out) + (None,))[:2] if isinstance(out, (tuple, list)) else (out, None)
        for name, t in (("features", features), ("logits", logits)):
            if t is None and name == "logits":
                continue
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != x.shape[0]:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise EvalInputError(f"feature network {self.path} must return (features (B, F), logits (B, K)) for "
                                     f"B = {x.shape[0]}; its {name} are {got}")
        return {"pool": features.float(), "logits": None if logits is None else logits.float(), "spatial": None}

    @property
    def tag(self) -> str:
        return f"net-{self.sha256[:8]}"

    def info(self) -> dict:
        return {"kind": "torchscript", "path": os.path.abspath(self.path), "sha256": self.sha256}


def load_network(inception_weights: Optional[str] = None, feature_network: Optional[str] = None,
                 device=None) -> FeatureNetwork:
    """The TorchScript `feature_network` when given, else Inception-v3 (weights located by find_inception_weights)."""
    if feature_network:
        return ScriptedFeatures(feature_network, device)
    return InceptionV3Features(inception_weights, device)
