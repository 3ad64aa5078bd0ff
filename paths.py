"""The interpolation path x_t = alpha(t) x0 + sigma(t) eps, defined once for the loss and the samplers.

Time convention: t = 0 is data, t = 1 is noise (SiT, Ma et al. 2024, Sec. 2; REPA's `samplers.py`).

    linear  (rectified flow):  alpha = 1 - t,          sigma = t
    cosine  (GVP):             alpha = cos(pi t / 2),  sigma = sin(pi t / 2)

With alpha', sigma' the time derivatives, the velocity target is the time derivative of the path,
    v = alpha' x0 + sigma' eps                                            (SiT Eq. 2)
and (x_t, v) is a linear system in (x0, eps) with determinant  det = alpha sigma' - sigma alpha'
(1 for linear, pi/2 for cosine), so
    x0  = (sigma' x_t - sigma v) / det,     eps = (alpha v - alpha' x_t) / det,
    score = grad log p_t(x_t) = -E[eps | x_t] / sigma                     (Song et al. 2021, Tweedie)
which is what the Euler-Maruyama sampler needs (REPA's `get_score_from_velocity` is the same formula
written differently).

`t` may be a Python float (the samplers' host-side grid) or a tensor: a (B,) tensor is reshaped to
(B, 1, ..., 1) against the tensor it multiplies; any other tensor shape must already broadcast.
`get_path(name)` returns one cached instance per name, so loss and samplers share the very same object.
"""

from __future__ import annotations

import functools
import math
from typing import Union

import torch

Time = Union[float, torch.Tensor]


def expand_t(t: Time, like: torch.Tensor) -> Time:
    """A (B,) time tensor -> (B, 1, ..., 1) to broadcast against `like` (B, ...); floats pass through."""
    if isinstance(t, torch.Tensor) and t.ndim == 1 and like.ndim > 1:
        return t.view(-1, *([1] * (like.ndim - 1)))
    return t


def _cos(t: Time) -> Time:
    return torch.cos(t) if isinstance(t, torch.Tensor) else math.cos(t)


def _sin(t: Time) -> Time:
    return torch.sin(t) if isinstance(t, torch.Tensor) else math.sin(t)


class InterpolationPath:
    """x_t = alpha(t) x0 + sigma(t) eps. Subclasses define alpha, sigma and their derivatives."""

    name: str = ""

    # Coefficients (float in -> float out, tensor in -> tensor out).
    def alpha(self, t: Time) -> Time:
        raise NotImplementedError

    def sigma(self, t: Time) -> Time:
        raise NotImplementedError

    def d_alpha(self, t: Time) -> Time:
        raise NotImplementedError

    def d_sigma(self, t: Time) -> Time:
        raise NotImplementedError

    def det(self, t: Time) -> Time:
        """alpha sigma' - sigma alpha': the determinant of the (x0, eps) -> (x_t, v) map."""
        return self.alpha(t) * self.d_sigma(t) - self.sigma(t) * self.d_alpha(t)

    # The path and its velocity.
    def interpolate(self, x0: torch.Tensor, eps: torch.Tensor, t: Time) -> torch.Tensor:
        """x_t = alpha x0 + sigma eps, (B, ...)."""
        t = expand_t(t, x0)
        return self.alpha(t) * x0 + self.sigma(t) * eps

    def velocity(self, x0: torch.Tensor, eps: torch.Tensor, t: Time) -> torch.Tensor:
        """v = d x_t / dt = alpha' x0 + sigma' eps, the flow-matching target (B, ...)."""
        t = expand_t(t, x0)
        return self.d_alpha(t) * x0 + self.d_sigma(t) * eps

    # Conversions from the model's velocity prediction.
    def x0_from_velocity(self, x_t: torch.Tensor, v: torch.Tensor, t: Time) -> torch.Tensor:
        """x0 = (sigma' x_t - sigma v) / det."""
        t = expand_t(t, x_t)
        return (self.d_sigma(t) * x_t - self.sigma(t) * v) / self.det(t)

    def eps_from_velocity(self, x_t: torch.Tensor, v: torch.Tensor, t: Time) -> torch.Tensor:
        """eps = (alpha v - alpha' x_t) / det."""
        t = expand_t(t, x_t)
        return (self.alpha(t) * v - self.d_alpha(t) * x_t) / self.det(t)

    def score_from_velocity(self, x_t: torch.Tensor, v: torch.Tensor, t: Time) -> torch.Tensor:
        """score = -eps / sigma (undefined at sigma = 0, i.e. t = 0)."""
        return -self.eps_from_velocity(x_t, v, t) / self.sigma(expand_t(t, x_t))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearPath(InterpolationPath):
    """alpha = 1 - t, sigma = t (rectified flow / SiT 'Linear')."""

    name = "linear"

    def alpha(self, t):
        return 1 - t

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return -1.0 if not isinstance(t, torch.Tensor) else torch.full_like(t, -1.0)

    def d_sigma(self, t):
        return 1.0 if not isinstance(t, torch.Tensor) else torch.ones_like(t)


class CosinePath(InterpolationPath):
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2) (SiT 'GVP': alpha^2 + sigma^2 = 1)."""

    name = "cosine"

    def alpha(self, t):
        return _cos(t * (math.pi / 2))

    def sigma(self, t):
        return _sin(t * (math.pi / 2))

    def d_alpha(self, t):
        return -(math.pi / 2) * _sin(t * (math.pi / 2))

    def d_sigma(self, t):
        return (math.pi / 2) * _cos(t * (math.pi / 2))


PATHS = {cls.name: cls for cls in (LinearPath, CosinePath)}


@functools.lru_cache(maxsize=None)
def get_path(name: str) -> InterpolationPath:
    """The one shared instance of the path called `name` ('linear' or 'cosine')."""
    if name not in PATHS:
        raise ValueError(f"unknown path_type '{name}'; valid: {', '.join(PATHS)}")
    return PATHS[name]()
