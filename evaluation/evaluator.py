"""Sample batch + reference batch + feature networks -> FID, sFID, FDD, IS, precision, recall (ADM protocol; FDD:
EDM2's)."""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Mapping
from typing import Optional, Sequence

import numpy as np

from .batches import (NpzImages, as_images, prefetch, read_labels, read_stored_statistics, sorted_by_class,
                      write_npz)
from .errors import EvalInputError
from .features import FeatureNetwork, load_network
from .metrics import (IS_SPLIT_SIZE, classifier_accuracy, feature_statistics, frechet_distance, inception_score,
                      precision_recall)


def compute_features(images, network: FeatureNetwork, batch_size: int = 100, progress: bool = False,
                     label: str = "images") -> dict[str, Optional[np.ndarray]]:
    """Run `network` over images (ADM .npz path or uint8 (N, H, W, C) array) -> float32 numpy arrays
    {'pool': (N, F), 'logits': (N, K) or None, 'spatial': (N, 2023) or None}."""
    return compute_features_many(images, [network], batch_size, progress, label)[0]


def compute_features_many(images, networks: Sequence[FeatureNetwork], batch_size: int = 100, progress: bool = False,
                          label: str = "images") -> list[dict[str, Optional[np.ndarray]]]:
    """`compute_features` for several networks in one pass over the images (a 50k batch is read once)."""
    images = as_images(images, label)
    parts = [{"pool": [], "logits": [], "spatial": []} for _ in networks]
    done, start, last_report = 0, time.time(), 0.0
    for batch in prefetch(images.batches(batch_size)):
        for network, kept in zip(networks, parts):
            out = network(batch)
            for key, chunk in kept.items():
                if out.get(key) is not None:
                    chunk.append(out[key].float().cpu().numpy())
        done += len(batch)
        now = time.time()
        if progress and (now - last_report > 30 or done == len(images)):
            last_report = now
            print(f"{label}: {done}/{len(images)} images ({done / max(now - start, 1e-9):.0f} img/s)", file=sys.stderr)
    return [{key: np.concatenate(chunk) if chunk else None for key, chunk in kept.items()} for kept in parts]


def reference_cache_path(ref_path: str, network: FeatureNetwork) -> str:
    """Where `reference_statistics(..., cache=True)` keeps a reference batch's features: beside it."""
    stem = ref_path[:-4] if ref_path.endswith(".npz") else ref_path
    return f"{stem}.{network.tag}.features.npz"


def _file_stamp(path: str) -> np.ndarray:
    st = os.stat(path)
    return np.array([st.st_size, st.st_mtime_ns], dtype=np.int64)


def _read_cache(cache_path: str, ref_path: str, network: FeatureNetwork) -> Optional[dict]:
    """The cached computed statistics if the cache was made from this very reference file by this network."""
    if not os.path.isfile(cache_path):
        return None
    try:
        with np.load(cache_path) as z:
            cached = {k: z[k] for k in z.files}
    except Exception:                                       # unreadable cache: recompute and rewrite it
        return None
    if not np.array_equal(cached.get("ref_stamp"), _file_stamp(ref_path)) or str(cached.get("network_sha256")) != network.sha256:
        return None
    return {k: v for k, v in cached.items() if k in ("features", "mu", "sigma", "mu_s", "sigma_s")}


def reference_statistics(ref: str, network: FeatureNetwork, batch_size: int = 100, cache: bool = False,
                         progress: bool = False) -> dict:
    """Everything the metrics need of a reference batch (ADM .npz):
        features (N, F)          pool features of arr_0, for precision/recall (always computed from arr_0;
                                 None for a network that does not serve precision/recall, e.g. DINOv2)
        mu, sigma                for FID: stored in the npz when present (Inception only), else computed
        mu_s, sigma_s            for sFID: likewise (networks with spatial features only)
        source                   {'fid': 'stored' | 'computed', 'sfid': ...}
    With cache=True the computed part is kept in REF.<network tag>.features.npz beside the reference and reused
    while the reference file is unchanged (size and mtime). The result can be passed to `evaluate` as `ref`."""
    return reference_statistics_many(ref, [network], batch_size, cache, progress)[0]


def reference_statistics_many(ref: str, networks: Sequence[FeatureNetwork], batch_size: int = 100,
                              cache: bool = False, progress: bool = False) -> list[dict]:
    """`reference_statistics` for several networks; those without a valid cache share one pass over arr_0."""
    ref = os.fspath(ref)
    images = NpzImages(ref)
    # ADM's stored statistics are Inception's: another network's features are never compared with them.
    stored = read_stored_statistics(ref) if any(net.uses_adm_statistics for net in networks) else {}
    cache_paths = [reference_cache_path(ref, net) if cache else None for net in networks]
    computed = [_read_cache(path, ref, net) if path else None for path, net in zip(cache_paths, networks)]
    todo = [i for i, c in enumerate(computed) if c is None]
    if todo:
        label = f"reference {os.path.basename(ref)}"
        for i, feats in zip(todo, compute_features_many(images, [networks[i] for i in todo], batch_size, progress, label)):
            computed[i] = {"features": feats["pool"]} if networks[i].precision_recall else {}
            computed[i]["mu"], computed[i]["sigma"] = feature_statistics(feats["pool"])
            if feats["spatial"] is not None:
                computed[i]["mu_s"], computed[i]["sigma_s"] = feature_statistics(feats["spatial"])
            if cache_paths[i]:
                write_npz(cache_paths[i], **computed[i], ref_stamp=_file_stamp(ref),
                          network_sha256=np.array(networks[i].sha256))
    return [_combine(ref, images, stored if net.uses_adm_statistics else {}, c) for net, c in zip(networks, computed)]


def _combine(ref: str, images: NpzImages, stored: dict, computed: dict) -> dict:
    """Computed statistics + ADM's stored ones (which win) -> the reference_statistics dict."""
    stats = {"features": computed.get("features"), "num_images": len(images), "image_shape": images.shape[1:],
             "source": {}}
    for metric, mu, sigma in (("fid", "mu", "sigma"), ("sfid", "mu_s", "sigma_s")):
        if mu in stored:
            if stored[mu].shape != computed[mu].shape:
                raise EvalInputError(f"{ref}: stored '{mu}' has shape {stored[mu].shape}, but the network's features "
                                     f"give {computed[mu].shape}")
            stats[mu], stats[sigma], stats["source"][metric] = stored[mu], stored[sigma], "stored"
        elif mu in computed:
            stats[mu], stats[sigma], stats["source"][metric] = computed[mu], computed[sigma], "computed"
    return stats


def _given_statistics(ref: Mapping, what: str) -> dict:
    stats = dict(ref)
    if "mu" not in stats or "sigma" not in stats:
        raise EvalInputError(f"a {what} given as statistics needs at least 'mu' and 'sigma'")
    stats.setdefault("source", {"fid": "given", "sfid": "given" if "mu_s" in stats else None})
    return stats


def _check_same_size(samples_shape, ref_image_shape) -> None:
    """Samples (N, H, W, C) and reference images (H, W, ...) must have one resolution: the features of
    resized images of another size are not comparable (a 16 px batch scored against 8 px references)."""
    if tuple(ref_image_shape)[:2] != tuple(samples_shape[1:3]):
        raise EvalInputError(f"sample resolution {samples_shape[1]}x{samples_shape[2]} differs from the reference "
                             f"images' {ref_image_shape[0]}x{ref_image_shape[1]}: generate samples at the "
                             f"reference's resolution")


def check_inputs(samples, ref):
    """The samples as images (`as_images`), checked readable and of the reference images' size (a reference
    path without images, statistics only, is checked later against its stored image shape, if any)."""
    images = as_images(samples, "samples")
    if not isinstance(ref, Mapping):
        try:
            ref_shape = as_images(ref, "reference").shape
        except EvalInputError:
            ref_shape = None
        if ref_shape is not None:
            _check_same_size(images.shape, ref_shape[1:])
    return images


def evaluate(samples, ref, network: Optional[FeatureNetwork] = None, *, fdd_network: Optional[FeatureNetwork] = None,
             fdd_ref: Optional[Mapping] = None, labels=None, batch_size: int = 100, cache_ref: bool = False,
             progress: bool = False) -> dict:
    """FID, sFID, FDD, IS, precision and recall of `samples` against `ref` (see the package docstring).

    samples: an ADM .npz path (its arr_1, when present, are the labels) or uint8 images (N, H, W, C).
    ref: an ADM reference .npz path, or the dict of `reference_statistics` (or any dict with mu, sigma and
         optionally mu_s, sigma_s, features; precision/recall need `features`).
    network: from `load_network` (default: Inception-v3 with weights from $ELIT_INCEPTION_WEIGHTS).
    fdd_network: from `load_dinov2` for FDD (None: FDD is None). Its reference statistics come from `fdd_ref`
         (a `reference_statistics(REF, fdd_network)` dict) or else from the images of `ref` (a path), in the
         same pass as the main network's; `cache_ref` caches them too (REF.dinov2-....features.npz).
    labels: class labels (N,) for `classifier_accuracy` (feature networks whose logits are the dataset's classes).
    Metrics the network cannot give are None: sFID without spatial features, IS without logits, accuracy without
    labels or for Inception (its 1008 outputs are not the dataset's class indices)."""
    start = time.time()
    images = check_inputs(samples, ref)                     # validate the samples before any computation
    network = network if network is not None else load_network()
    wanted = [network] + ([fdd_network] if fdd_network is not None and fdd_ref is None else [])
    if isinstance(ref, Mapping):
        if len(wanted) > 1:
            raise EvalInputError("FDD with a reference given as statistics needs fdd_ref (the DINOv2 statistics)")
        ref_stats = [_given_statistics(ref, "reference")]
    else:
        ref_stats = reference_statistics_many(ref, wanted, batch_size, cache_ref, progress)
    ref_stats, fdd_stats = ref_stats[0], (ref_stats[1] if len(ref_stats) > 1 else None)
    if fdd_ref is not None:
        fdd_stats = _given_statistics(fdd_ref, "FDD reference")
    if "image_shape" in ref_stats:
        _check_same_size(images.shape, tuple(ref_stats["image_shape"]))
    if labels is None and isinstance(samples, (str, os.PathLike)):
        labels = read_labels(os.fspath(samples), len(images))
    if labels is not None and sorted_by_class(labels):      # no labels: nothing to check
        warnings.warn("the samples are sorted by class (one contiguous run of labels per class): the Inception "
                      f"Score averages consecutive splits of {IS_SPLIT_SIZE}, each then sees few classes and IS "
                      "collapses (guided-diffusion issues 153, 165); shuffle the batch", stacklevel=2)
    networks = [network] + ([fdd_network] if fdd_network is not None else [])
    feats, *fdd_feats = compute_features_many(images, networks, batch_size, progress, label="samples")

    mu, sigma = feature_statistics(feats["pool"])
    if mu.shape != np.shape(ref_stats["mu"]):
        raise EvalInputError(f"sample features have {mu.shape[0]} dimensions, the reference statistics {np.shape(ref_stats['mu'])[0]}")
    result = {"fid": frechet_distance(mu, sigma, ref_stats["mu"], ref_stats["sigma"]), "sfid": None, "fdd": None}
    if feats["spatial"] is not None and "mu_s" in ref_stats:
        mu_s, sigma_s = feature_statistics(feats["spatial"])
        result["sfid"] = frechet_distance(mu_s, sigma_s, ref_stats["mu_s"], ref_stats["sigma_s"])
    if fdd_feats:
        mu_d, sigma_d = feature_statistics(fdd_feats[0]["pool"])
        result["fdd"] = frechet_distance(mu_d, sigma_d, fdd_stats["mu"], fdd_stats["sigma"])
    result["inception_score"] = inception_score(feats["logits"]) if feats["logits"] is not None else None
    if ref_stats.get("features") is not None:
        result["precision"], result["recall"] = precision_recall(ref_stats["features"], feats["pool"], device=network.device)
    else:
        result["precision"] = result["recall"] = None
    result["classifier_accuracy"] = None
    if labels is not None and feats["logits"] is not None and network.class_logits:
        labels = np.asarray(labels)
        if labels.shape != (len(images),):
            raise EvalInputError(f"labels must have shape ({len(images)},), got {labels.shape}")
        result["classifier_accuracy"] = classifier_accuracy(feats["logits"], labels)
    source = dict(ref_stats.get("source", {}))
    if fdd_feats:
        source["fdd"] = fdd_stats["source"].get("fid")
    result.update(num_samples=len(images), num_reference=ref_stats.get("num_images"), reference_statistics=source,
                  network=network.info(), fdd_network=fdd_network.info() if fdd_network is not None else None,
                  seconds=round(time.time() - start, 2))
    return result
