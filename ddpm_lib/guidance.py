"""Classifier-free guidance (Ho & Salimans 2022) as a model wrapper: the samplers never see labels.

`guided(model, y, scale)` turns a class-conditional network model(x_t, t, y) into a model of (x_t, t), the form
every sampler takes, with the labels y (B,) fixed and the guidance scale s:

    eps = eps_u + s (eps_c - eps_u),   eps_c = model(x_t, t, y),   eps_u = model(x_t, t, -1)   (-1: no label)

in diffusers' convention: s = 1 is the conditional model alone, s = 0 the unconditional one (one model call each);
any other s evaluates both branches in one batched call of 2B rows. The paper writes it as (1 + w) eps_c - w eps_u,
so s = 1 + w. The weights (1 - s, s) sum to 1, so it guides an x0 or v output exactly as it guides eps (each is
affine in eps at fixed x_t); the wrapper keeps the model's `config` for the samplers to read.
"""
import math

import torch

from .utils import check_labels


class GuidedModel:
    """A conditional network with fixed labels and guidance scale, as a model of (x_t, t); built by `guided`."""

    def __init__(self, model, y: torch.Tensor, scale: float):
        self.model, self.y, self.scale = model, y, scale  # y int64 (B,), checked by guided

    @property
    def config(self):
        """The wrapped network's config (what it predicts, its channels and image size); none for a function."""
        return self.model.config

    def rows(self, start: int, stop: int) -> "GuidedModel":
        """The same guidance for the batch of rows start:stop of y (its labels were checked with the rest)."""
        return GuidedModel(self.model, self.y[start:stop], self.scale)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_u + s (eps_c - eps_u) for x_t (B, C, H, W) and t int64 (B,), B = len(y)."""
        if x_t.shape[0] != len(self.y):
            raise ValueError(f"x_t has a batch of {x_t.shape[0]} rows but the guided model holds {len(self.y)} "
                             f"labels y, one per row")
        if self.y.device != x_t.device:
            self.y = self.y.to(x_t.device)                                          # moved once, not every step
        y, s = self.y, self.scale
        null = torch.full_like(y, -1)
        if s == 1:
            return self.model(x_t, t, y)                                            # eps_c alone
        if s == 0:
            return self.model(x_t, t, null)                                         # eps_u alone
        both = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))  # (2B, C, H, W)
        eps_c, eps_u = both.chunk(2)
        return eps_u + s * (eps_c - eps_u)                                          # classifier-free guidance


def guided(model, y, scale: float = 1.0) -> GuidedModel:
    """model(x_t, t, y) guided with labels y (B,) and scale s: a model of (x_t, t) -> eps_u + s (eps_c - eps_u).

    y: integer labels in [-1, K) (-1: no label for that row), K = model.config.num_classes (a plain function
    without a config: labels >= -1); scale: a finite number. Both are checked here, once: a ValueError for labels
    out of range or of the wrong type, for an unconditional model (config.num_classes None) and for y=None.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"the guidance scale s must be a finite number, got {scale!r}")
    if y is None:
        raise ValueError(f"guidance (scale s={scale!r}) needs class labels y, got None (it mixes the conditional "
                         f"and unconditional predictions)")
    config = getattr(model, "config", None)                 # None: a plain function of (x_t, t, y)
    if config is not None and getattr(config, "num_classes", None) is None:
        raise ValueError("y was given but the model is unconditional (its config.num_classes is None)")
    num_classes = None if config is None else config.num_classes
    return GuidedModel(model, check_labels(y, num_classes, name="y"), float(scale))
