"""Classifier-free guidance (Ho & Salimans 2022), notebook 08's helpers: an exact toy, a shape classifier, a viewer.

GaussianClasses is 2-D labelled data whose class y is a mixture of isotropic Gaussians N(mu_k, s_k^2 I). Under the
forward process (Eq. 4) each component stays Gaussian: x_t | k ~ N(a mu_k, v_k I) with a = sqrt(alpha_bar_t),
v_k = a^2 s_k^2 + 1 - a^2, and E[eps | x_t, k] = sqrt(1 - alpha_bar_t) (x_t - a mu_k) / v_k. The ideal noise
predictors are the posterior-weighted averages of these over the components of class y (eps_c) or of all classes
(eps_u): what a perfectly trained network would output, so samplers can be run on it with no training.
shape_kind classifies `make_shapes` images by how much of its bounding box the shape fills; guidance_viewer shows
precomputed samples of a class-conditional model per (guidance scale, class).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy import ndimage

from .schedule import NoiseSchedule
from .shapes import SHAPE_KINDS
from .widgets import _hwc, _png, _slider, _wire

# Share of its bounding box a shape of make_shapes fills, in SHAPE_KINDS order: circle pi r^2 / (2r)^2,
# square 1, triangle (apex, base 2r, height 2r) 2 r^2 / (2r)^2.
FILL_RATIOS = (math.pi / 4, 1.0, 0.5)


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

    def _check_y(self, y, n: int) -> torch.Tensor:
        y = torch.as_tensor(y)
        if y.shape != (n,) or y.is_floating_point() or (n and (y.min() < -1 or y.max() >= self.num_classes)):
            raise ValueError(f"y must be integer labels (n,) = ({n},) in [-1, {self.num_classes}) (-1: no label), "
                             f"got {y.dtype} {tuple(y.shape)}")
        return y.long()

    def sample(self, y, generator: torch.Generator | None = None) -> torch.Tensor:
        """x0 ~ p(x0 | y) float32 (n, 2), one row per label in y (int64 (n,); -1 draws from p(x0), all classes)."""
        y = self._check_y(y, len(y))
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
        y = torch.full((len(x_t),), -1) if y is None else self._check_y(y, len(x_t))
        y = y.to(x_t.device)[:, None]
        in_class = (self.classes.to(x_t.device) == y) | (y == -1)                        # (B, M)
        post = torch.softmax(log_w.masked_fill(~in_class, -math.inf), dim=1)             # (B, M): p(k | x_t, y)
        eps_k = (1 - alpha_bar.double().to(x_t.device)).sqrt()[:, None, None] * diff / v[:, :, None]  # E[eps | x_t, k]
        return (post[:, :, None] * eps_k).sum(1).to(x_t.dtype)                          # (B, 2)

    def model(self, schedule: NoiseSchedule):
        """The ideal noise predictor as a sampler's model: model(x (B, 2, 1, 1), t (B,), y=None) -> eps (B, 2, 1, 1)."""
        def ideal_eps(x, t, y=None):
            alpha_bar = schedule.alphas_cumprod.to(x.device)[t]
            return self.eps(x.reshape(len(x), 2), alpha_bar, y).reshape(x.shape)   # (B, 2) <-> (B, 2, 1, 1)
        return ideal_eps


def _kind_of(img: np.ndarray, tol: int) -> int:
    """SHAPE_KINDS index of the largest blob off the border's colour in img (H, W, 3) uint8; -1 if there is none."""
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])          # (4 size - 4, 3)
    background = np.median(border, axis=0)
    foreground = (np.abs(img.astype(np.int16) - background.astype(np.int16)) > tol).any(-1)   # (H, W)
    labels, count = ndimage.label(foreground)                                       # 4-connected blobs
    if count == 0:
        return -1
    blob = labels == 1 + np.bincount(labels.ravel())[1:].argmax()
    rows, cols = np.nonzero(blob)
    fill = blob.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))                   # area / bounding box
    return int(np.abs(np.array(FILL_RATIOS) - fill).argmin())


def shape_kind(images: torch.Tensor, tol: int = 40) -> torch.Tensor:
    """int64 (N,) shape kinds (SHAPE_KINDS index; -1: no shape) of uint8 images (N, 3, H, W), by fill ratio."""
    if not (torch.is_tensor(images) and images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3):
        got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor (N, 3, H, W), got {got}")
    hwc = images.permute(0, 2, 3, 1).cpu().numpy()                                  # (N, H, W, 3)
    return torch.tensor([_kind_of(img, tol) for img in hwc], dtype=torch.long)


def render_guided_samples(samples: dict, s: float, label: int, class_names=SHAPE_KINDS) -> bytes:
    """PNG of samples[(s, label)] (uint8 (n, 3, H, W)): a class-conditional model's samples of class `label`
    at guidance scale s, in a grid of up to 8 columns."""
    if (s, label) not in samples:
        raise ValueError(f"(s, label) must be a key of samples, one of {sorted(samples)}; got {(s, label)!r}")
    images = samples[s, label]
    cols = min(8, len(images))
    rows = math.ceil(len(images) / cols)
    fig = Figure(figsize=(1.1 * cols, 1.1 * rows + 0.4))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, image in zip(axes, images):
        ax.imshow(_hwc(image.float() / 127.5 - 1))
    fig.suptitle(f"class {class_names[label]!r}, guidance scale s = {s:g}", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.35 / fig.get_figheight(), wspace=0.05,
                        hspace=0.05)
    return _png(fig)


def guidance_viewer(samples: dict, class_names=SHAPE_KINDS):
    """A slider over the guidance scales and a class dropdown, wired to render_guided_samples."""
    import ipywidgets as widgets

    scales = sorted({s for s, _ in samples})
    labels = sorted({label for _, label in samples})
    controls = {
        "s": _slider("SelectionSlider", options=scales, value=scales[min(1, len(scales) - 1)],
                     description="guidance scale s"),
        "label": widgets.Dropdown(options=[(class_names[k], k) for k in labels], value=labels[0], description="class"),
    }
    return _wire(lambda s, label: render_guided_samples(samples, s, label, class_names), controls,
                 [list(controls.values())])
