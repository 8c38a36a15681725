"""The paper's figures of the reverse process (Ho et al. 2020, Sec. 4.3): progressive generation (Fig. 6),
coarse-to-fine continuations of a shared x_t (Fig. 7) and interpolation in x_t (Fig. 8).

All three run ancestral sampling (Algorithm 2, sigma_t^2 = beta_t, the predicted x0 clipped to [-1, 1]
as the official code does), but Figs. 7 and 8 start it part-way, at some t < T-1, from an x_t made with
q(x_t | x0). `ancestral_from` is that loop. The model is called as `model(x_t, t) -> eps`.
Every function is deterministic in its `generator` and runs on its inputs' device (x0's; the schedule's for
progressive_generation) unless `device` is given.
"""
from typing import Optional, Sequence

import torch

from .samplers import ddim_timesteps
from .schedule import NoiseSchedule, _randn


def _check_t(t, T: int, name: str) -> int:
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= T - 1:
        raise ValueError(f"{name} must be an integer timestep in [0, T-1={T - 1}], got {t!r}")
    return t


def _check_positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_images(x0: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor) or x0.ndim != 4 or not x0.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (B, C, H, W) in [-1, 1], got "
                         f"{type(x0).__name__} {tuple(getattr(x0, 'shape', ()))}")
    return x0


@torch.no_grad()
def ancestral_from(model, schedule: NoiseSchedule, x_t: torch.Tensor, t: int, *,
                   generator: Optional[torch.Generator] = None, keep: Sequence[int] = (),
                   noise_groups: int = 1):
    """Algorithm 2, lines 2-6, started at timestep t from the given x_t (on x_t's device).

    Returns (x0, {s: predicted x0 at timestep s for s in keep}). From t = T-1 with x_t = x_T drawn from the
    same generator, this is `ddpm_sample` step for step: one N(0, I) draw of x_t's shape per step s > 0.
    noise_groups = G > 1 splits the batch into G consecutive blocks of B/G rows; row i of every block gets
    the same noise z at each step, so that rows differing only in x_t are decoded with the same randomness.
    """
    _check_t(t, schedule.steps, "t")
    B = x_t.shape[0]
    _check_positive(noise_groups, "noise_groups")
    if B % noise_groups:
        raise ValueError(f"noise_groups={noise_groups} must divide the batch size {B}")
    schedule = schedule.to(x_t.device)
    sigma = schedule.betas.sqrt()                                                   # sigma_t^2 = beta_t
    x, kept, keep = x_t, {}, set(keep)
    for s in range(t, -1, -1):                                                      # Algorithm 2, line 2
        s_batch = torch.full((B,), s, dtype=torch.long, device=x.device)
        eps = model(x, s_batch).to(x.dtype)
        x0 = schedule.predict_x0(x, s_batch, eps).clamp(-1, 1)                      # Eq. 4 solved for x0
        if s in keep:
            kept[s] = x0
        mean, _, _ = schedule.q_posterior(x0, x, s_batch)                           # Eq. 7 (= Eq. 11 unclipped)
        if s > 0:                                                                   # Algorithm 2, line 3
            z = _randn((B // noise_groups,) + tuple(x.shape[1:]), generator, x.device, x.dtype)
            x = mean + sigma[s].to(x.dtype) * z.repeat(noise_groups, 1, 1, 1)       # Algorithm 2, line 4
        else:
            x = mean                                                                # z = 0 at the last step
    return x, kept


@torch.no_grad()
def progressive_generation(model, schedule: NoiseSchedule, n: int, n_frames: int = 8, *,
                           image_shape: Optional[tuple] = None, generator: Optional[torch.Generator] = None,
                           device=None):
    """Fig. 6: the predicted x0 along n ancestral chains from x_T ~ N(0, I), at n_frames timesteps.

    Returns (frames (n_frames, n, C, H, W), timesteps): frames[i] is the model's x0 at timesteps[i], evenly
    spaced from T-1 down to 0; the last frame is the sample itself. image_shape (C, H, W) defaults to the
    model's config (ch_list[0], image_size, image_size); device to the schedule's, as in the samplers.
    """
    _check_positive(n, "n")
    timesteps = ddim_timesteps(schedule.steps, _check_positive(n_frames, "n_frames"))
    if image_shape is None:
        if not hasattr(model, "config"):
            raise ValueError("image_shape (C, H, W) is needed for a model without a UNetConfig")
        image_shape = (model.config.ch_list[0], model.config.image_size, model.config.image_size)
    device = torch.device(device) if device is not None else schedule.device
    x_T = _randn((n,) + tuple(image_shape), generator, device)                      # Algorithm 2, line 1
    _, kept = ancestral_from(model, schedule, x_T, schedule.steps - 1, generator=generator, keep=timesteps)
    return torch.stack([kept[s] for s in timesteps]), timesteps


@torch.no_grad()
def coarse_to_fine(model, schedule: NoiseSchedule, x0: torch.Tensor, ts: Optional[Sequence[int]] = None,
                   n_continuations: int = 4, *, generator: Optional[torch.Generator] = None, device=None) -> dict:
    """Fig. 7: x_t = q_sample(x0, t, eps) of each source image, then n_continuations ancestral samples from it.

    x0 (B, C, H, W) in [-1, 1]: real images as in the paper, or samples (a chain's own endpoint). One eps per
    source is shared by all t. ts defaults to (T-1, 3T/4, T/2, T/4), i.e. (999, 750, 500, 250) for T = 1000.
    Large t keeps only coarse features of x0 (the continuations differ), small t keeps the details.
    Returns {"t": ts, "x_t": (len(ts), B, C, H, W), "samples": (len(ts), n_continuations, B, C, H, W)}.
    """
    x0 = _check_images(x0, "x0")
    T = schedule.steps
    ts = [T - 1, 3 * T // 4, T // 2, T // 4] if ts is None else [_check_t(t, T, "ts entry") for t in ts]
    if not ts:
        raise ValueError("ts must name at least one timestep")
    k = _check_positive(n_continuations, "n_continuations")
    x0 = x0.to(device) if device is not None else x0
    schedule = schedule.to(x0.device)
    eps = _randn(x0.shape, generator, x0.device, x0.dtype)
    x_ts, samples = [], []
    for t in ts:
        x_t = schedule.q_sample(x0, torch.full((len(x0),), t, device=x0.device), eps)                # Eq. 4
        x, _ = ancestral_from(model, schedule, x_t.repeat(k, 1, 1, 1), t, generator=generator)      # (k B, C, H, W)
        x_ts.append(x_t)
        samples.append(x.reshape((k,) + tuple(x0.shape)))                                          # (k, B, C, H, W)
    return {"t": ts, "x_t": torch.stack(x_ts), "samples": torch.stack(samples)}


@torch.no_grad()
def interpolate(model, schedule: NoiseSchedule, x0_a: torch.Tensor, x0_b: torch.Tensor, t: int,
                lambdas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), *,
                generator: Optional[torch.Generator] = None, device=None) -> dict:
    """Fig. 8: decode x_t(lambda) = (1 - lambda) x_t + lambda x'_t with ancestral sampling from t.

    x_t = q_sample(x0_a, t, eps) and x'_t = q_sample(x0_b, t, eps) share one eps, so x_t(lambda) is q_sample
    of the blended images with unit-variance noise for every lambda; the reverse process also shares its
    noise across lambdas (the paper fixes it, so that only x_t changes along a row).
    Returns {"lambdas": [...], "x_t": (L, B, C, H, W), "samples": (L, B, C, H, W)}.
    """
    x0_a, x0_b = _check_images(x0_a, "x0_a"), _check_images(x0_b, "x0_b")
    if x0_a.shape != x0_b.shape:
        raise ValueError(f"x0_a and x0_b must have the same shape, got {tuple(x0_a.shape)} and {tuple(x0_b.shape)}")
    _check_t(t, schedule.steps, "t")
    lambdas = [float(lam) for lam in lambdas]
    if not lambdas:
        raise ValueError("lambdas must hold at least one value")
    device = torch.device(device) if device is not None else x0_a.device
    x0_a, x0_b = x0_a.to(device), x0_b.to(device)
    eps = _randn(x0_a.shape, generator, device, x0_a.dtype)
    t_batch = torch.full((len(x0_a),), t, device=device)
    schedule = schedule.to(device)
    x_a, x_b = schedule.q_sample(x0_a, t_batch, eps), schedule.q_sample(x0_b, t_batch, eps)   # Eq. 4
    x_t = torch.stack([(1 - lam) * x_a + lam * x_b for lam in lambdas])                        # (L, B, C, H, W)
    x, _ = ancestral_from(model, schedule, x_t.flatten(0, 1), t, generator=generator,
                          noise_groups=len(lambdas))                                           # (L B, C, H, W)
    return {"lambdas": lambdas, "x_t": x_t, "samples": x.reshape(x_t.shape)}
