"""Metric formulas of the ADM protocol (Dhariwal & Nichol 2021, guided-diffusion/evaluations), in float64.

- Frechet distance (Heusel et al. 2017): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)); FID on Inception
  pool_3 features, sFID (Nash et al. 2021) on the spatial features.
- Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), per split of 5000 images, averaged.
- Precision / recall (Kynkaenniemi et al. 2019): k-NN manifold estimate, k = 3.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import scipy.special
import torch

from .errors import EvalInputError

IS_SPLIT_SIZE = 5000
PR_NEIGHBOURS = 3


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, F), in float64 (as np.cov)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise EvalInputError(f"statistics need at least 2 feature vectors (N, F), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2), as ADM computes it: the matrix
    square root by scipy.linalg.sqrtm; if it is not finite (singular product), sqrtm((S1 + eps I)(S2 + eps I));
    a complex result is accepted only if its diagonal's imaginary part is negligible (atol 1e-3), then made real."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise EvalInputError(f"Frechet distance: mismatched statistics, mu {mu1.shape} vs {mu2.shape}, "
                             f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():                         # singular products are expected (few images) and
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)   # handled below, as ADM's disp=False does
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise EvalInputError(f"Frechet distance: the covariance square root has an imaginary diagonal part of "
                                 f"{imag:.3g} (degenerate statistics: too few images?)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(logits, split_size: int = IS_SPLIT_SIZE) -> float:
    """Mean over consecutive splits of `split_size` images (the last may be shorter) of
    exp(mean_x KL(p(y|x) || p(y))), p(y|x) = softmax(logits) and p(y) the split's mean of p(y|x).
    ADM feeds the 1008-way Inception logits without the fc bias."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 1:
        raise EvalInputError(f"inception_score expects logits (N, K), got shape {z.shape}")
    log_p = z - scipy.special.logsumexp(z, axis=1, keepdims=True)          # (N, K) log p(y|x)
    scores = []
    for start in range(0, len(z), split_size):
        lp = log_p[start:start + split_size]
        p = np.exp(lp)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_marginal = np.log(p.mean(axis=0, keepdims=True))           # (1, K) log p(y)
            kl = np.where(p > 0, p * (lp - log_marginal), 0.0).sum(axis=1)  # 0 log 0 = 0
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def classifier_accuracy(logits, labels) -> float:
    """Fraction of images whose arg-max logit is their label."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    return float((logits.argmax(axis=1) == labels).mean())


# ----------------------------------------------------------------------------------------------------------
# Precision / recall.

def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, F), (m, F) -> (n, m) squared Euclidean distances, ||a||^2 - 2 a.b + ||b||^2 clamped at 0."""
    return (a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)).clamp_min_(0)


def _as_float64(x, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, device=device).to(torch.float64)


def manifold_radii(features, k: int = PR_NEIGHBOURS, batch_size: int = 5000, device=None) -> torch.Tensor:
    """Squared distance of every feature (N, F) to its k-th nearest neighbour among the others: the (k+1)-th
    smallest distance of its row, the 1st being itself (0). Returns (N,) float64 on `device`."""
    x = _as_float64(features, device)
    if x.dim() != 2 or x.shape[0] <= k:
        raise EvalInputError(f"precision/recall with k = {k} needs more than {k} feature vectors, got shape {tuple(x.shape)}")
    radii = torch.empty(len(x), dtype=torch.float64, device=x.device)
    for start in range(0, len(x), batch_size):
        d = _squared_distances(x[start:start + batch_size], x)           # (b, N)
        radii[start:start + batch_size] = d.kthvalue(k + 1, dim=1).values
    return radii


def precision_recall(ref_features, sample_features, k: int = PR_NEIGHBOURS, batch_size: int = 5000,
                     device=None) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) with ADM's k-NN manifolds over ALL features.

    precision = fraction of samples inside at least one reference ball (centre a reference feature, radius its
    distance to its k-th nearest reference neighbour); recall = fraction of reference features inside at least
    one sample ball. Boundaries count as inside (<=). Distances in float64, in (batch, batch) blocks, so 50k x
    50k runs in bounded memory (one H100: 50k x 50k x 2048 in under 1 s; on a CPU this size takes hours)."""
    device = torch.device(device) if device is not None else (
        ref_features.device if isinstance(ref_features, torch.Tensor) else torch.device("cpu"))
    ref, sam = _as_float64(ref_features, device), _as_float64(sample_features, device)
    if ref.dim() != 2 or sam.dim() != 2 or ref.shape[1] != sam.shape[1]:
        raise EvalInputError(f"precision/recall: features must be (N, F) with the same F, got {tuple(ref.shape)} and {tuple(sam.shape)}")
    ref_radii = manifold_radii(ref, k, batch_size, device)
    sam_radii = manifold_radii(sam, k, batch_size, device)
    sample_in = torch.zeros(len(sam), dtype=torch.bool, device=device)   # inside the reference manifold
    ref_in = torch.zeros(len(ref), dtype=torch.bool, device=device)      # inside the sample manifold
    for i in range(0, len(ref), batch_size):
        for j in range(0, len(sam), batch_size):
            d = _squared_distances(ref[i:i + batch_size], sam[j:j + batch_size])           # (bi, bj)
            sample_in[j:j + batch_size] |= (d <= ref_radii[i:i + batch_size, None]).any(dim=0)
            ref_in[i:i + batch_size] |= (d <= sam_radii[None, j:j + batch_size]).any(dim=1)
    return sample_in.double().mean().item(), ref_in.double().mean().item()

