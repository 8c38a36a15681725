"""The paper's figures of the reverse process (Ho et al. 2020, Sec. 4.3): progressive generation (Fig. 6),
coarse-to-fine continuations of a shared x_t (Fig. 7) and interpolation in x_t (Fig. 8).

All three are `ddpm_sample` (Algorithm 2, sigma_t^2 = beta_t, the predicted x0 clipped to [-1, 1] as the
official code does); Figs. 7 and 8 start it part-way, at some t < T-1, from an x_t made with q(x_t | x0)
(`ddpm_sample(..., x_T=x_t, t_start=t)`). Each takes a denoiser (ddpm_lib.objective.Denoiser), as every sampler does.
Every function is deterministic in its `generator` and runs on its inputs' device (x0's; the schedule's for
progressive_generation) unless `device` is given.
"""
from typing import Optional, Sequence

import torch

from .objective import Denoiser
from .samplers import ddpm_sample
from .timesteps import ddim_timesteps
from .unet import UNetConfig
from .utils import check_int, check_timestep, randn


def _check_images(x0: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor) or x0.ndim != 4 or not x0.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (B, C, H, W) in [-1, 1], got "
                         f"{type(x0).__name__} {tuple(getattr(x0, 'shape', ()))}")
    return x0


@torch.no_grad()
def progressive_generation(denoiser: Denoiser, n: int, n_frames: int = 8, *,
                           image_shape: Optional[tuple] = None, generator: Optional[torch.Generator] = None,
                           device=None):
    """Fig. 6: the predicted x0 along n ancestral chains from x_T ~ N(0, I), at n_frames timesteps.

    Returns (frames (n_frames, n, C, H, W) on the sampling device, timesteps): frames[i] is the model's x0 at
    timesteps[i], evenly spaced from T-1 down to 0; the last frame is the sample itself. The frames are the
    x0_pred that `ddpm_sample` passes its callback at those timesteps (only they are kept). image_shape (C, H, W)
    defaults to the network's config (ch_list[0], image_size, image_size); device to the schedule's.
    """
    check_int(n, "n")
    timesteps = ddim_timesteps(denoiser.schedule.num_timesteps, check_int(n_frames, "n_frames"))
    if image_shape is None:
        config = getattr(denoiser.net, "config", None)
        if not isinstance(config, UNetConfig):
            raise ValueError("image_shape (C, H, W) is needed for a network without a UNetConfig")
        image_shape = (config.ch_list[0], config.image_size, config.image_size)
    device = torch.device(device) if device is not None else denoiser.schedule.device
    frames: dict = {}                                                  # timestep -> x0_pred (n, C, H, W)

    def keep(t: int, x_t: torch.Tensor, x0_pred: torch.Tensor) -> None:
        if t in timesteps:
            frames[t] = x0_pred

    ddpm_sample(denoiser, (n,) + tuple(image_shape), generator=generator, device=device, callback=keep)
    return torch.stack([frames[t] for t in timesteps]), timesteps      # (n_frames, n, C, H, W)


@torch.no_grad()
def coarse_to_fine(denoiser: Denoiser, x0: torch.Tensor, ts: Optional[Sequence[int]] = None,
                   n_continuations: int = 4, *, generator: Optional[torch.Generator] = None, device=None) -> dict:
    """Fig. 7: x_t = q_sample(x0, t, eps) of each source image, then n_continuations ancestral samples from it.

    x0 (B, C, H, W) in [-1, 1]: real images as in the paper, or samples (a chain's own endpoint). One eps per
    source is shared by all t. ts defaults to (T-1, 3T/4, T/2, T/4), i.e. (999, 750, 500, 250) for T = 1000.
    Large t keeps only coarse features of x0 (the continuations differ), small t keeps the details.
    Returns {"t": ts, "x_t": (len(ts), B, C, H, W), "samples": (len(ts), n_continuations, B, C, H, W)}.
    """
    x0 = _check_images(x0, "x0")
    T = denoiser.schedule.num_timesteps
    ts = [T - 1, 3 * T // 4, T // 2, T // 4] if ts is None else [check_timestep(t, T, "ts entry") for t in ts]
    if not ts:
        raise ValueError("ts must name at least one timestep")
    k = check_int(n_continuations, "n_continuations")
    x0 = x0.to(device) if device is not None else x0
    schedule = denoiser.schedule.to(x0.device)
    eps = randn(x0.shape, generator, x0.device, x0.dtype)
    x_ts, samples = [], []
    for t in ts:
        x_t = schedule.q_sample(x0, torch.full((len(x0),), t, device=x0.device), eps)                # Eq. 4
        x_T = x_t.repeat(k, 1, 1, 1)                                                                # (k B, C, H, W)
        x = ddpm_sample(denoiser, x_T.shape, generator=generator, x_T=x_T, t_start=t)
        x_ts.append(x_t)
        samples.append(x.reshape((k,) + tuple(x0.shape)))                                          # (k, B, C, H, W)
    return {"t": ts, "x_t": torch.stack(x_ts), "samples": torch.stack(samples)}


@torch.no_grad()
def interpolate(denoiser: Denoiser, x0_a: torch.Tensor, x0_b: torch.Tensor, t: int,
                lambdas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), *,
                generator: Optional[torch.Generator] = None, device=None) -> dict:
    """Fig. 8: decode x_t(lambda) = (1 - lambda) x_t + lambda x'_t with ancestral sampling from t.

    x_t = q_sample(x0_a, t, eps) and x'_t = q_sample(x0_b, t, eps) share one eps, so x_t(lambda) is q_sample
    of the blended images with unit-variance noise for every lambda; the reverse process also shares its
    noise across lambdas (the paper fixes it, so that only x_t changes along a row): each lambda is decoded
    from the same generator state, so every decoding draws the same z at each step. Without a generator, one
    is seeded from torch's global generator.
    Returns {"lambdas": [...], "x_t": (L, B, C, H, W), "samples": (L, B, C, H, W)}.
    """
    x0_a, x0_b = _check_images(x0_a, "x0_a"), _check_images(x0_b, "x0_b")
    if x0_a.shape != x0_b.shape:
        raise ValueError(f"x0_a and x0_b must have the same shape, got {tuple(x0_a.shape)} and {tuple(x0_b.shape)}")
    check_timestep(t, denoiser.schedule.num_timesteps, "t")
    lambdas = [float(lam) for lam in lambdas]
    if not lambdas:
        raise ValueError("lambdas must hold at least one value")
    device = torch.device(device) if device is not None else x0_a.device
    x0_a, x0_b = x0_a.to(device), x0_b.to(device)
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(2 ** 62, ())))
    eps = randn(x0_a.shape, generator, device, x0_a.dtype)
    t_batch = torch.full((len(x0_a),), t, device=device)
    schedule = denoiser.schedule.to(device)
    x_a, x_b = schedule.q_sample(x0_a, t_batch, eps), schedule.q_sample(x0_b, t_batch, eps)   # Eq. 4
    x_t = torch.stack([(1 - lam) * x_a + lam * x_b for lam in lambdas])                        # (L, B, C, H, W)
    state, samples = generator.get_state(), []
    for x_t_lam in x_t:
        generator.set_state(state)                                   # the same z sequence for every lambda
        samples.append(ddpm_sample(denoiser, x_t_lam.shape, generator=generator, x_T=x_t_lam, t_start=t))
    return {"lambdas": lambdas, "x_t": x_t, "samples": torch.stack(samples)}
