"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper: the samplers never see labels.

`guided(denoiser, y, scale)` turns the denoiser of a class-conditional network, denoiser(x_t, t, y), into a
denoiser of (x_t, t), the form every sampler takes, with the labels y (B,) fixed and the guidance scale s:

    eps = eps_u + s (eps_c - eps_u),   eps_c = eps(x_t, t, y),   eps_u = eps(x_t, t, -1)   (-1: no label)

in diffusers' convention: s = 1 is the conditional model alone, s = 0 the unconditional one (one network call
each); any other s evaluates both branches in one batched call of 2B rows. The paper writes it as
(1 + w) eps_c - w eps_u, so s = 1 + w. At fixed x_t, x0 is affine in eps (Eq. 4) and the weights (1 - s, s) sum
to 1, so the same mixture of the two x0 is the x0 of the guided eps: the wrapper mixes both, whatever the network
predicts.
"""
import math

import torch

from .objective import Denoised, Denoiser
from .utils import check_labels


class GuidedDenoiser:
    """A conditional denoiser with fixed labels and guidance scale, as a denoiser of (x_t, t); built by `guided`."""

    def __init__(self, denoiser: Denoiser, y: torch.Tensor, scale: float):
        self.denoiser, self.y, self.scale = denoiser, y, scale  # y int64 (B,), checked by guided
        self.schedule = denoiser.schedule                          # the samplers step on it

    def rows(self, start: int, stop: int) -> "GuidedDenoiser":
        """The same guidance for the batch of rows start:stop of y (its labels were checked with the rest)."""
        return GuidedDenoiser(self.denoiser, self.y[start:stop], self.scale)

    def to(self, device) -> "GuidedDenoiser":
        """The same guidance with the denoiser and the labels on `device`."""
        return GuidedDenoiser(self.denoiser.to(device), self.y.to(device), self.scale)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> Denoised:
        """(x0, eps) mixed as eps_u + s (eps_c - eps_u) for x_t (B, C, H, W) and t int64 (B,), B = len(y)."""
        if x_t.shape[0] != len(self.y):
            raise ValueError(f"x_t has a batch of {x_t.shape[0]} rows but the guided denoiser holds {len(self.y)} "
                             f"labels y, one per row")
        if self.y.device != x_t.device:
            self.y = self.y.to(x_t.device)                                          # moved once, not every step
        y, s = self.y, self.scale
        null = torch.full_like(y, -1)
        if s == 1:
            return self.denoiser(x_t, t, y)                                         # conditional alone
        if s == 0:
            return self.denoiser(x_t, t, null)                                      # unconditional alone
        both = self.denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))  # 2B rows
        (x0_c, x0_u), (eps_c, eps_u) = both.x0.chunk(2), both.eps.chunk(2)
        return Denoised(x0_u + s * (x0_c - x0_u), eps_u + s * (eps_c - eps_u))  # classifier-free guidance


def guided(denoiser: Denoiser, y, scale: float = 1.0) -> GuidedDenoiser:
    """denoiser(x_t, t, y) guided with labels y (B,) and scale s: a denoiser of (x_t, t), eps_u + s (eps_c - eps_u).

    y: integer labels in [-1, K) (-1: no label for that row), K = the network's config.num_classes (a plain
    function without a config: labels >= -1); scale: a finite number. Both are checked here, once: a ValueError
    for labels out of range or of the wrong type, for an unconditional network (config.num_classes None) and for
    y=None.
    """
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser: expected a Denoiser (ddpm_lib.objective), got {type(denoiser).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"the guidance scale s must be a finite number, got {scale!r}")
    if y is None:
        raise ValueError(f"guidance (scale s={scale!r}) needs class labels y, got None (it mixes the conditional "
                         f"and unconditional predictions)")
    config = getattr(denoiser.net, "config", None)          # None: a plain function of (x_t, t, y)
    if config is not None and getattr(config, "num_classes", None) is None:
        raise ValueError("y was given but the network is unconditional (its config.num_classes is None)")
    num_classes = None if config is None else config.num_classes
    return GuidedDenoiser(denoiser, check_labels(y, num_classes, name="y"), float(scale))
