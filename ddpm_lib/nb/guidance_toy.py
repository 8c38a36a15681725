"""Classifier-free guidance (Ho & Salimans 2022) on an exact toy: notebook 08's labelled 2-D data.

GaussianClasses is 2-D labelled data whose class y is a mixture of isotropic Gaussians N(mu_k, s_k^2 I). Under the
forward process (Eq. 4) each component stays Gaussian: x_t | k ~ N(a mu_k, v_k I) with a = sqrt(alpha_bar_t),
v_k = a^2 s_k^2 + 1 - a^2, and E[eps | x_t, k] = sqrt(1 - alpha_bar_t) (x_t - a mu_k) / v_k. The ideal noise
predictors are the posterior-weighted averages of these over the components of class y (eps_c) or of all classes
(eps_u): what a perfectly trained network would output, so samplers can be run on it with no training.
GaussianClasses.denoiser(schedule) is that predictor as the denoiser of a class-conditional network, called as
denoiser(x_t, t, y); ddpm_lib.guidance.guided(denoiser, y, s) makes of it the guided denoiser of (x_t, t) that a
sampler takes.
(Notebook 08's CIFAR-10 samples are scored by ddpm_lib.classifier; its viewer is ddpm_lib.nb.widgets.guidance_viewer.)
"""
from __future__ import annotations

import math

import torch

from ..objective import Denoiser
from ..schedule import NoiseSchedule
from ..utils import check_labels

class GaussianClasses:
    """2-D data, class y a mixture of isotropic Gaussians, and its exact noise predictor under a NoiseSchedule."""

    def __init__(self, means, stds, classes, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)            # (M, 2): component means mu_k
        self.stds = torch.as_tensor(stds, dtype=torch.float64)              # (M,): component standard deviations s_k
        self.classes = torch.as_tensor(classes, dtype=torch.long)           # (M,): the class of each component
        M = len(self.means)
        self.weights = (torch.full((M,), 1.0 / M, dtype=torch.float64) if weights is None
                        else torch.as_tensor(weights, dtype=torch.float64))  # (M,): p(k), summing to 1
        if self.means.shape != (M, 2) or M == 0:
            raise ValueError(f"means must be (M, 2) with M >= 1, got shape {tuple(self.means.shape)}")
        for name, value in (("stds", self.stds), ("classes", self.classes), ("weights", self.weights)):
            if value.shape != (M,):
                raise ValueError(f"{name} must have one entry per component, shape ({M},), got {tuple(value.shape)}")
        if not bool((self.stds > 0).all()):
            raise ValueError(f"stds must be > 0, got {self.stds.tolist()}")
        if not bool((self.weights > 0).all()) or abs(float(self.weights.sum()) - 1) > 1e-6:
            raise ValueError(f"weights must be > 0 and sum to 1, got {self.weights.tolist()}")
        self.num_classes = int(self.classes.max()) + 1
        if int(self.classes.min()) < 0 or set(self.classes.tolist()) != set(range(self.num_classes)):
            raise ValueError(f"classes must use every label 0..K-1 (K = {self.num_classes}), "
                             f"got {self.classes.tolist()}")

    def sample(self, y, generator: torch.Generator | None = None) -> torch.Tensor:
        """x0 ~ p(x0 | y) float32 (n, 2), one row per label in y (int64 (n,); -1 draws from p(x0), all classes)."""
        y = check_labels(y, self.num_classes)
        w = self.weights.expand(len(y), -1) * ((self.classes == y[:, None]) | (y[:, None] == -1))  # (n, M)
        k = torch.multinomial(w, 1, generator=generator)[:, 0]                                      # components
        z = torch.randn(len(y), 2, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k, None] * z).float()

    def _components(self, x_t: torch.Tensor, alpha_bar: torch.Tensor):
        """log p(k) N(x_t; a mu_k, v_k I) + const (B, M), x_t - a mu_k (B, M, 2) and v_k (B, M), in float64."""
        x, a2 = x_t.double(), alpha_bar.double().to(x_t.device)[:, None]                # (B, 2), (B, 1)
        v = a2 * self.stds.to(x.device) ** 2 + 1 - a2                                   # (B, M): Var of x_t | k
        diff = x[:, None, :] - a2.sqrt()[:, :, None] * self.means.to(x.device)          # (B, M, 2): x_t - a mu_k
        log_w = self.weights.to(x.device).log() - diff.square().sum(-1) / (2 * v) - v.log()
        return log_w, diff, v

    def class_probs(self, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """p(y | x_t) (B, K) for x_t (B, 2) at alpha_bar_t (B,): the classifier that guidance implies."""
        log_w, _, _ = self._components(x_t, alpha_bar)
        classes = self.classes.to(x_t.device)
        per_class = torch.stack([log_w[:, classes == c].logsumexp(1) for c in range(self.num_classes)], 1)
        return per_class.softmax(1).to(x_t.dtype)

    def eps(self, x_t: torch.Tensor, alpha_bar: torch.Tensor, y=None) -> torch.Tensor:
        """E[eps | x_t, y] (eps_c) for x_t (B, 2) at alpha_bar_t (B,); rows with y = -1, or y=None, get E[eps | x_t]."""
        log_w, diff, v = self._components(x_t, alpha_bar)
        y = torch.full((len(x_t),), -1) if y is None else check_labels(y, self.num_classes, len(x_t))
        y = y.to(x_t.device)[:, None]
        in_class = (self.classes.to(x_t.device) == y) | (y == -1)                        # (B, M)
        post = torch.softmax(log_w.masked_fill(~in_class, -math.inf), dim=1)             # (B, M): p(k | x_t, y)
        eps_k = (1 - alpha_bar.double().to(x_t.device)).sqrt()[:, None, None] * diff / v[:, :, None]  # E[eps | x_t, k]
        return (post[:, :, None] * eps_k).sum(1).to(x_t.dtype)                          # (B, 2)

    def denoiser(self, schedule: NoiseSchedule) -> Denoiser:
        """The ideal noise predictor, eps(x (B, 2, 1, 1), t (B,), y=None) -> (B, 2, 1, 1), as a denoiser on
        `schedule` (an eps-prediction objective)."""
        def ideal_eps(x, t, y=None):
            alpha_bar = schedule.alphas_cumprod.to(x.device)[t]
            return self.eps(x.reshape(len(x), 2), alpha_bar, y).reshape(x.shape)   # (B, 2) <-> (B, 2, 1, 1)
        return Denoiser(ideal_eps, schedule)
