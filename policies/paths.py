"""Probability paths: VP-SDE, GVP (trigonometric) and I-CFM, in ONE time convention.

Convention used throughout ``genctl.policies`` (it differs from GenerativeRL's diffusion models, which put
data at t=0): **t = 0 is noise, t = 1 is data**, and sampling integrates dx/dt = v(t, x) forward from t=0.
GenerativeRL's VP/GVP time is tau = 1 - t; I-CFM already uses our convention.

Every path is described by the Gaussian "marginal given x1" x_t | x1 ~ N(a(t) x1, b(t)^2 I) and by the
derivatives a', b'. For VP and GVP the training sample is x_t = a x1 + b eps with velocity target
a' x1 + b' eps; for I-CFM it is x_t = (1-t) x0 + t x1 + sigma xi with target x1 - x0, whose conditional mean
given (x_t, x1) is the same a' x1 + (b'/b)(x_t - a x1) with a = t, b = sqrt((1-t)^2 + sigma^2).

Endpoint choices (documented because they make log-densities exact statements about *this* model):
* VP: a(0) = exp(-(b1-b0)/4 - b0/2) ~ 0.0066, so the t=0 marginal is N(0, I) up to ~1e-4 in variance; the
  prior used is N(0, I). b'(t) diverges at t=1, so training draws t ~ U(0, 1-1e-5) (the reference's
  tau ~ U(1e-5, 1)) and the sampler stops at t_end = 1 - 1e-3 (sigma ~ 0.01 there).
* GVP: exact N(0, I) prior; velocity is finite on [0, 1], sampler runs to 1.
* I-CFM: the t=0 marginal is N(0, (1+sigma^2) I) and the t=1 marginal is data * N(0, sigma^2 I); we use that
  exact prior (the reference draws N(0, I), a small mismatch), so log_prob is the density of the smoothed data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class ProbabilityPath:
    """Base class. Subclasses define ``coeffs`` (a, b, a', b') and may override ``training_pair``."""

    name: str = ""
    supports_noise: bool = True   # can an eps-prediction network be converted to a velocity on this path?
    train_t_max: float = 1.0      # t ~ U(0, train_t_max) for the matching loss
    t_end: float = 1.0            # where the sampler stops (and log_prob starts)
    prior_std: float = 1.0        # x(t=0) ~ N(0, prior_std^2 I)

    def coeffs(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def config(self) -> dict:
        return {}

    def training_pair(self, x1: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(x_t, velocity target) for data x1 (B, D), times t (B,), standard normal eps (B, D)."""
        a, b, da, db = (c[:, None] for c in self.coeffs(t))
        return a * x1 + b * eps, da * x1 + db * eps

    def noise_to_velocity_coeffs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """v = A x + B eps_hat: with x1_hat = (x - b eps_hat)/a, v = a' x1_hat + b' eps_hat (exact PF-ODE)."""
        a, b, da, db = self.coeffs(t)
        return da / a, db - da * b / a


class VPSDEPath(ProbabilityPath):
    """Linear-beta VP-SDE, beta(tau) = b0 + tau (b1 - b0), tau = 1 - t. Derivative includes the b0 term."""

    name = "vpsde"
    train_t_max = 1.0 - 1e-5
    t_end = 1.0 - 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def config(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def coeffs(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        tau = 1.0 - t
        b0, b1 = self.beta_min, self.beta_max
        log_a = -0.25 * tau * tau * (b1 - b0) - 0.5 * tau * b0
        a = log_a.exp()
        b = (-torch.expm1(2.0 * log_a)).clamp_min(1e-20).sqrt()   # sqrt(1 - a^2) without cancellation
        da = 0.5 * (b0 + tau * (b1 - b0)) * a                       # d/dt = -d/dtau; d log a/dtau = -beta/2
        db = -a * da / b
        return a, b, da, db


class GVPPath(ProbabilityPath):
    """Trigonometric path: a = sin(pi t / 2), b = cos(pi t / 2) (GenerativeRL's ``gvp`` with tau = 1 - t)."""

    name = "gvp"
    supports_noise = False  # a(0) = 0: eps -> velocity is singular at the noise end
    train_t_max = 1.0 - 1e-5

    def coeffs(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h = 0.5 * math.pi
        a, b = (h * t).sin(), (h * t).cos()
        return a, b, h * b, -h * a


class ICFMPath(ProbabilityPath):
    """Independent conditional flow matching with constant noise sigma: x_t = (1-t) x0 + t x1 + sigma xi."""

    name = "icfm"
    supports_noise = False

    def __init__(self, sigma: float = 0.1):
        self.sigma = float(sigma)
        self.prior_std = math.sqrt(1.0 + self.sigma**2)

    def config(self) -> dict:
        return {"sigma": self.sigma}

    def coeffs(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b = ((1.0 - t) ** 2 + self.sigma**2).sqrt()
        return torch.ones_like(t) * t, b, torch.ones_like(t), -(1.0 - t) / b

    def training_pair(self, x1: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        # x0 = eps (the noise end); xi is an independent draw (its randn uses the global generator).
        xi = torch.randn_like(eps)
        tt = t[:, None]
        return (1.0 - tt) * eps + tt * x1 + self.sigma * xi, x1 - eps


PATHS = {"vpsde": VPSDEPath, "gvp": GVPPath, "icfm": ICFMPath}
