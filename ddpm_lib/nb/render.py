"""Pure render functions of the notebook viewers: each draws one picture and returns PNG bytes.

Matplotlib's Agg backend only (no pyplot, no display), so tests call them directly and ddpm_lib.nb.widgets wires
ipywidgets controls to them. Images come as uint8 (N, C, H, W) or float in [-1, 1]; t is the library's index.
"""
import io
import math

import numpy as np
import torch
from matplotlib.figure import Figure

from ..utils import to_model_range
from ..schedule import NoiseSchedule
from ..shapes import SHAPE_KINDS


# ----------------------------------------------------------------------------- helpers

def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def as_images(images, name: str) -> torch.Tensor:
    """uint8 (N, C, H, W) or float in [-1, 1] -> float32 in [-1, 1] on the CPU."""
    images = torch.as_tensor(images).detach().cpu()
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be (N, 3, H, W) (or 1 channel); got shape {tuple(images.shape)}")
    return to_model_range(images) if images.dtype == torch.uint8 else images.float()


def _hwc(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, C) in [0, 1] for imshow (values outside are clipped)."""
    hwc = ((x.float() + 1) / 2).clamp(0, 1).permute(1, 2, 0).numpy()
    return hwc[..., 0] if hwc.shape[-1] == 1 else hwc


def _check_index(value, size: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < size:
        raise ValueError(f"{name} must be an integer in [0, {size - 1}]; got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- forward process

def forward_sample(images, schedule: NoiseSchedule, t: int, index: int, seed: int):
    """(x0, x_t) for images[index], each (1, C, H, W) on the CPU; eps ~ N(0, I) from a generator seeded with `seed`."""
    x = as_images(images, "images")
    index = _check_index(index, len(x), "index")
    t = _check_index(t, schedule.num_timesteps, "t")
    x0 = x[index : index + 1]                                                 # (1, C, H, W)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x_t = schedule.q_sample(x0.to(schedule.device), torch.tensor([t]), eps.to(schedule.device))  # Eq. 4
    return x0, x_t.cpu()


def render_noising(images, schedule: NoiseSchedule, t: int, index: int = 0, seed: int = 0) -> bytes:
    """x0 and x_t ~ q(x_t | x0) (Eq. 4) for images[index], x_t's pixel histogram against N(0, 1),
    and alpha_bar with a marker at t. eps is drawn from a generator seeded with `seed`, so only t moves x_t.
    t is the library's index in [0, T-1]; titles and axes show the paper's t = index + 1."""
    x0, x_t = forward_sample(images, schedule, t, index, seed)
    t = int(t)
    alpha_bar = schedule.alphas_cumprod.cpu().numpy()

    fig = Figure(figsize=(12, 3.0))
    ax0, ax1, ax2, ax3 = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1.4, 1.4]})
    ax0.imshow(_hwc(x0[0]), cmap="gray", vmin=0, vmax=1)
    ax0.set_title("x0")
    ax1.imshow(_hwc(x_t[0]), cmap="gray", vmin=0, vmax=1)
    ax1.set_title(f"x_t, t={t + 1} (clipped)")
    for ax in (ax0, ax1):
        ax.set_axis_off()
    grid = np.linspace(-4, 4, 201)
    ax2.hist(x_t.flatten().numpy(), bins=60, range=(-4, 4), density=True, color="tab:blue", alpha=0.7, label="x_t")
    ax2.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), color="black", label="N(0, 1)")
    ax2.set_title("pixels of x_t")
    ax2.legend(loc="upper right", fontsize=8)
    ax3.plot(np.arange(1, schedule.num_timesteps + 1), alpha_bar, color="tab:orange")
    ax3.plot([t + 1], [alpha_bar[t]], "o", color="tab:red")
    ax3.set_title(f"alpha_bar_t = {alpha_bar[t]:.4f}")
    ax3.set_xlabel("t")
    ax3.set_ylim(-0.02, 1.02)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.16, top=0.88, wspace=0.25)
    return _png(fig)


# ----------------------------------------------------------------------------- attention

def render_attention(image, weights, query, head: int) -> bytes:
    """Where the query pixel `query` = (y, x) of a square H x W feature map attends, for one head.

    weights: (heads, HW, HW) or (1, heads, HW, HW), softmax rows as MultiHeadSelfAttention2d returns them;
    image: None or (3, H', W') uint8 / float in [-1, 1], shown under the heat map (any multiple of H)."""
    w = torch.as_tensor(weights).detach().float().cpu()
    w = w[0] if w.ndim == 4 and w.shape[0] == 1 else w
    side = int(round(w.shape[-1] ** 0.5)) if w.ndim == 3 else 0
    if w.ndim != 3 or w.shape[1] != w.shape[2] or side * side != w.shape[-1]:
        raise ValueError(f"weights must be (heads, HW, HW) for a square H x W map; got shape {tuple(w.shape)}")
    head = _check_index(head, w.shape[0], "head")
    if not isinstance(query, (tuple, list)) or len(query) != 2:
        raise ValueError(f"query must be a (y, x) pair; got {query!r}")
    qy, qx = (_check_index(q, side, f"query[{i}]") for i, q in enumerate(query))
    heat = w[head, qy * side + qx].reshape(side, side).numpy()               # (H, W) row of the softmax

    panels = 1 if image is None else 3
    fig = Figure(figsize=(3.2 * panels, 3.2))
    axes = np.atleast_1d(fig.subplots(1, panels))
    extent, scale = (-0.5, side - 0.5, side - 0.5, -0.5), 1.0
    if image is not None:
        img = as_images(torch.as_tensor(image)[None], "image")[0]
        scale = img.shape[-1] / side
        extent = (-0.5, img.shape[-1] - 0.5, img.shape[-2] - 0.5, -0.5)
        axes[0].imshow(_hwc(img), cmap="gray")
        axes[0].set_title("image and query")
        axes[2].imshow(_hwc(img), cmap="gray")
        axes[2].imshow(heat, cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest")
        axes[2].set_title("overlay")
    hm = axes[-1] if image is None else axes[1]
    im = hm.imshow(heat, cmap="inferno", extent=extent, interpolation="nearest")
    fig.colorbar(im, ax=hm, fraction=0.046)
    hm.set_title(f"head {head}: attention of ({qy}, {qx})")
    for ax in axes:
        ax.plot([(qx + 0.5) * scale - 0.5], [(qy + 0.5) * scale - 0.5], "c+", markersize=12, mew=2)
        ax.set_axis_off()
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03, top=0.9, wspace=0.15)
    return _png(fig)


# ----------------------------------------------------------------------------- sampling trajectory

def _trajectory_step(trajectory: dict, step: int, max_sample_steps: int):
    """Sampler step shown for `step` of the longest trajectory: the same fraction of the way to x0."""
    S = len(trajectory["t"])
    s = round(step * S / max_sample_steps) if max_sample_steps else 0
    x0_pred = trajectory["x0_pred"][s] if s < S else trajectory["x_t"][S]   # after the last step: the sample
    return s, trajectory["x_t"][s], x0_pred, (trajectory["t"][s] if s < S else None)


def render_trajectory(trajectories: dict, step: int, index: int = 0) -> bytes:
    """x_t and the predicted x0 side by side, one row per label, at `step` in 0..S (S: the longest trajectory's
    number of steps; shorter ones are shown at the same fraction of the way). trajectories: label -> a sampler's
    steps as `ddpm_lib.samplers.Trajectory.result(x0)` gives them ({"t", "x_t" (S+1, B, C, H, W),
    "x0_pred" (S, B, C, H, W)})."""
    if not isinstance(trajectories, dict) or not trajectories:
        raise ValueError("trajectories must be a non-empty dict label -> sampler trajectory")
    max_sample_steps = max(len(tr["t"]) for tr in trajectories.values())
    step = _check_index(step, max_sample_steps + 1, "step")
    fig = Figure(figsize=(4.4, 2.2 * len(trajectories)))
    axes = fig.subplots(len(trajectories), 2, squeeze=False)
    for row, (label, tr) in zip(axes, trajectories.items()):
        index = _check_index(index, tr["x_t"].shape[1], "index")
        s, x_t, x0_pred, t = _trajectory_step(tr, step, max_sample_steps)
        row[0].imshow(_hwc(x_t[index]), cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{label}: x_t, t={t}" if t is not None else f"{label}: x0", fontsize=9)
        row[1].imshow(_hwc(x0_pred[index]), cmap="gray", vmin=0, vmax=1)
        row[1].set_title(f"predicted x0 (step {s}/{len(tr['t'])})", fontsize=9)
        for ax in row:
            ax.set_axis_off()
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.92, wspace=0.05, hspace=0.2)
    return _png(fig)


# ----------------------------------------------------------------------------- training

def training_progress(start_step: int, step: int, total: int, seconds: float) -> str:
    """One line on what a run of a training cell did: the steps it trained, from where to where, and the seconds
    they took; "already at step N: nothing to train" when it started at its last step (a finished run resumed)."""
    if step == start_step:
        return (f"already at step {step:,} of {total:,}: nothing to train" if step >= total
                else f"at step {step:,} of {total:,}: training")
    return f"trained from step {start_step:,} to step {step:,} of {total:,} in {seconds:.0f} s"


def render_training(losses, grid=None, loss_name: str = "loss", progress: str | None = None,
                    reference=None) -> bytes:
    """Loss per step (log y, raw and a moving average; `loss_name` says which loss it is), if given a grid of
    samples (N, 3, H, W) with, under it, a row of `reference` images (the training data, for comparison), and
    `progress` (a line such as `training_progress` writes) as the title."""
    losses = np.asarray(torch.as_tensor(losses, dtype=torch.float64).cpu())
    if losses.ndim != 1:
        raise ValueError(f"losses must be a 1-D sequence of per-step losses; got shape {losses.shape}")
    if reference is not None and grid is None:
        raise ValueError("reference images go under a grid of samples: pass grid too")
    fig = Figure(figsize=(9 if grid is not None else 5, 3.6 if reference is not None else 3.2))
    if grid is None:
        ax = fig.subplots()
    else:
        spec = fig.add_gridspec(2, 2, width_ratios=[1.4, 1], height_ratios=[4, 1 if reference is not None else 0.01])
        ax = fig.add_subplot(spec[:, 0])
    if len(losses):
        at = np.arange(1, len(losses) + 1)
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(at, losses, color="tab:blue", alpha=0.3, label=loss_name)
        ax.plot(at[window - 1:], smooth, color="tab:blue", label=f"mean of {window}")
        ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{loss_name} {smooth[-1]:.4f} at step {len(losses):,}", fontsize=9)
    else:
        ax.set_title("no steps yet", fontsize=9)
    ax.set_xlabel("step")
    if grid is not None:
        from torchvision.utils import make_grid

        g = as_images(grid, "grid")
        cols = int(np.ceil(len(g) ** 0.5))
        top = fig.add_subplot(spec[0, 1])
        top.imshow(_hwc(make_grid(g, nrow=cols, pad_value=1.0)), cmap="gray")
        top.set_title(f"{len(g)} samples", fontsize=9)
        top.set_axis_off()
        if reference is not None:
            ref = as_images(reference, "reference")[:cols]
            bottom = fig.add_subplot(spec[1, 1])
            bottom.imshow(_hwc(make_grid(ref, nrow=cols, pad_value=1.0)), cmap="gray")
            bottom.set_title("training images", fontsize=9)
            bottom.set_axis_off()
    if progress:
        fig.suptitle(progress, fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.82 if progress else 0.9, wspace=0.1, hspace=0.3)
    return _png(fig)


# ----------------------------------------------------------------------------- guidance

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
        ax.imshow(_hwc(to_model_range(image)))
    fig.suptitle(f"class {class_names[label]!r}, guidance scale s = {s:g}", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.35 / fig.get_figheight(), wspace=0.05,
                        hspace=0.05)
    return _png(fig)
