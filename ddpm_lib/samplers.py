"""Samplers: DDPM (Algorithm 2), DDIM (Song et al. 2021), DPM-Solver++(2M) (Lu et al. 2022), and Euler's and Heun's
methods on the probability-flow ODE in flow matching's coordinates (Karras et al. 2022; Lipman et al. 2023); one
registry.

Each takes a denoiser (ddpm_lib.objective.Denoiser: a network with its schedule and objective), called as
`denoiser(x_t, t) -> (x0, eps)` with x_t float (B, C, H, W) and t int64 (B,); it draws x_T ~ N(0, I) on the
denoiser's schedule and returns x0. What the network predicts is the denoiser's business: no sampler converts.
Labels never reach a sampler: a class-conditional denoiser is wrapped first, `guided(denoiser, y, s)`
(ddpm_lib.guidance, classifier-free guidance), and that is a denoiser of (x_t, t) too.
Common keyword arguments:
  generator      torch.Generator for every random draw (x_T first, then the per-step noise);
                 a CPU generator gives the same numbers on every device
  device         where to sample (default: the schedule's device)
  progress       show a tqdm progress bar
  callback       called once per step, before the update, as callback(t: int, x_t, x0_pred): the timestep,
                 the state there and the model's x0 from it (clipped if clip_denoised), on the sampling device;
                 `Trajectory()` is such a callback that keeps them all
  clip_denoised  clip the predicted x0 to [-1, 1] at every step, as the official code does
  x_T            start from this noise instead of drawing it (its dtype and device are used)
"""
import math
from types import MappingProxyType
from typing import Callable, NamedTuple, Optional

import torch
from tqdm.auto import tqdm

from .guidance import guided
from .objective import Denoiser
from .sampler_steps import StepCallback, chain_coefficients, denoise_at, start_chain
from .schedule import VARIANCES
from .unet import UNetConfig
from .timesteps import (DDIM_STEPS, DPM_SOLVER_STEPS, EULER_STEPS, HEUN_STEPS, check_sample_steps, ddim_timesteps,
                        dpm_solver_timesteps)
from .utils import check_int, check_timestep, randn, to_uint8

@torch.no_grad()
def ddpm_sample(denoiser, shape, variance: str = "beta", *,
                generator: Optional[torch.Generator] = None, device=None, progress: bool = False,
                callback: Optional[StepCallback] = None, clip_denoised: bool = True,
                x_T: Optional[torch.Tensor] = None, t_start: Optional[int] = None) -> torch.Tensor:
    """Algorithm 2, ancestral sampling through all T timesteps, or part-way from t_start.

    variance="beta" uses sigma_t^2 = beta_t (the paper's CIFAR-10 choice); "posterior" uses
    sigma_t^2 = beta_tilde_t (Eq. 7, `posterior_log_variance_clipped`). The mean is the posterior mean
    (Eq. 7) of the (clipped) predicted x0, which equals Eq. 11 when nothing is clipped.
    t_start: the timestep x_T belongs to (None: T-1). Below T-1, x_T is an x_t given by the caller (e.g.
    q_sample(x0, t_start, eps), Figs. 7-8) and the chain runs t_start, ..., 0 (so do its callbacks), drawing
    one z per step t > 0 as the full chain does from there.
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    T = denoiser.schedule.num_timesteps
    t_start = check_timestep(T - 1 if t_start is None else t_start, T, "t_start")
    if t_start < T - 1 and x_T is None:
        raise ValueError(f"t_start={t_start} needs x_T, the x_t to start from (x_T ~ N(0, I) is drawn only at "
                         f"t_start = T-1 = {T - 1})")
    schedule, x = start_chain(denoiser.schedule, shape, generator, device, x_T)
    for t in tqdm(range(t_start, -1, -1), disable=not progress, desc="DDPM"):              # Algorithm 2, line 2
        x0, _, t_batch = denoise_at(denoiser, schedule, x, t, clip_denoised)
        if callback is not None:
            callback(t, x, x0)
        mean, _, _ = schedule.q_posterior(x0, x, t_batch)                                  # Eq. 7
        if t > 0:                                                                          # Algorithm 2, line 3
            z = randn(x.shape, generator, x.device, x.dtype)
            x = mean + (0.5 * schedule.reverse_log_variance(t_batch, x, variance)).exp() * z  # Algorithm 2, line 4
        else:
            x = mean
    return x


@torch.no_grad()
def ddim_sample(denoiser, shape, sample_steps: int = DDIM_STEPS, eta: float = 0.0, *,
                generator: Optional[torch.Generator] = None, device=None, progress: bool = False,
                callback: Optional[StepCallback] = None, clip_denoised: bool = True,
                x_T: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, Eq. 12) on `ddim_timesteps(T, sample_steps)`; eta=0: deterministic, eta=1: DDPM-like.

    With clipping, eps is recomputed from the clipped x0 (as improved-diffusion does) so that both agree.
    One noise draw per step when eta > 0.
    """
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    timesteps = ddim_timesteps(denoiser.schedule.num_timesteps, sample_steps)
    schedule, x = start_chain(denoiser.schedule, shape, generator, device, x_T)
    abar, _, _ = chain_coefficients(schedule)
    abars = [abar[t] for t in timesteps] + [1.0]                      # the end value: alpha_bar = 1, clean data
    steps_ = tqdm(zip(timesteps, abars[:-1], abars[1:]), total=len(timesteps), disable=not progress, desc="DDIM")
    for t, abar_t, abar_next in steps_:
        x0, eps, _ = denoise_at(denoiser, schedule, x, t, clip_denoised)
        if callback is not None:
            callback(t, x, x0)
        sigma = eta * math.sqrt((1 - abar_next) / (1 - abar_t) * (1 - abar_t / abar_next))      # Eq. 16
        x = math.sqrt(abar_next) * x0 + math.sqrt(max(1 - abar_next - sigma ** 2, 0.0)) * eps   # Eq. 12
        if eta > 0:
            x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
    return x


@torch.no_grad()
def dpm_solver_sample(denoiser, shape, sample_steps: int = DPM_SOLVER_STEPS, *,
                      generator: Optional[torch.Generator] = None, device=None, progress: bool = False,
                      callback: Optional[StepCallback] = None, clip_denoised: bool = True,
                      x_T: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, data prediction, log-SNR-uniform timesteps.

    Solves the probability-flow ODE in lambda with the exponential integrator, using the model's x0
    prediction D and a second-order correction from the previous step's D. The first step is first order
    (no history yet, it equals DDIM), and so is the last, from t = 0 to sigma = 0, which returns D there
    (diffusers' final_sigmas_type="zero"). One model call per timestep: exactly `sample_steps`.
    The step sizes use lambda of the rounded timesteps the model sees (diffusers keeps the unrounded ones).
    """
    timesteps = dpm_solver_timesteps(denoiser.schedule, sample_steps)
    schedule, x = start_chain(denoiser.schedule, shape, generator, device, x_T)
    _, alpha, sigma = chain_coefficients(schedule)
    # (alpha_t, sigma_t, lambda_t = log(alpha_t / sigma_t)) per timestep, then the end value: clean data
    points = [(alpha[t], sigma[t], math.log(alpha[t] / sigma[t])) for t in timesteps] + [(1.0, 0.0, math.inf)]
    D_prev, h_prev = None, None
    steps_ = tqdm(zip(timesteps, points[:-1], points[1:]), total=len(timesteps), disable=not progress,
                  desc="DPM-Solver++")
    for t, (_, sigma_t, lam_t), (alpha_next, sigma_next, lam_next) in steps_:
        D, _, _ = denoise_at(denoiser, schedule, x, t, clip_denoised)  # data prediction x0_theta(x_t, t)
        if callback is not None:
            callback(t, x, D)
        h = lam_next - lam_t
        if D_prev is None or math.isinf(h):                                  # first order: first and last step
            D_step = D
        else:                                                                # 2M: D + (D - D_prev) / (2 r)
            r = h_prev / h
            D_step = (1 + 0.5 / r) * D - (0.5 / r) * D_prev
        x = (sigma_next / sigma_t) * x - alpha_next * math.expm1(-h) * D_step   # exponential integrator
        D_prev, h_prev = D, h
    return x


def _flow_ode(denoiser, shape, timesteps: list, heun_steps: int, generator, device, progress: bool, callback,
              clip_denoised: bool, x_T, desc: str) -> torch.Tensor:
    """The probability-flow ODE dz/ds = u = eps - x0 on z_s = x_t / (alpha_t + sigma_t), s = sigma_t / (alpha_t +
    sigma_t) (flow matching's straight path), stepped over `timesteps` and then to s = 0: Heun's method (Karras et al.
    2022, Algorithm 1 without churn) on the first `heun_steps` intervals, Euler's on the rest (always the last)."""
    schedule, x = start_chain(denoiser.schedule, shape, generator, device, x_T)
    _, alpha, sigma = chain_coefficients(schedule)
    # (t, alpha_t + sigma_t, s_t) per timestep, then the end value: clean data at s = 0
    points = [(t, alpha[t] + sigma[t], sigma[t] / (alpha[t] + sigma[t])) for t in timesteps] + [(None, 1.0, 0.0)]
    steps_ = tqdm(enumerate(zip(points[:-1], points[1:])), total=len(timesteps), disable=not progress, desc=desc)
    for i, ((t, scale, s), (t_next, scale_next, s_next)) in steps_:
        x0, eps, _ = denoise_at(denoiser, schedule, x, t, clip_denoised)
        if callback is not None:
            callback(t, x, x0)
        z, u = x / scale, eps - x0
        z_next = z + (s_next - s) * u                                                     # Euler
        if i < heun_steps and t_next is not None:                                          # Heun's correction
            x0_next, eps_next, _ = denoise_at(denoiser, schedule, z_next * scale_next, t_next, clip_denoised)
            z_next = z + (s_next - s) * 0.5 * (u + eps_next - x0_next)
        x = z_next * scale_next
    return x


@torch.no_grad()
def euler_sample(denoiser, shape, sample_steps: int = EULER_STEPS, *,
                 generator: Optional[torch.Generator] = None, device=None, progress: bool = False,
                 callback: Optional[StepCallback] = None, clip_denoised: bool = True,
                 x_T: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE in flow matching's coordinates, z_s' = z_s + (s' - s) u, on
    `ddim_timesteps(T, sample_steps)` (evenly spaced in s on the flow schedule): the sampler of a flow-matching model
    (diffusers' FlowMatchEulerDiscreteScheduler). As z_s' = (1 - s') x0 + s' eps, it is DDIM with eta = 0 on every
    schedule and objective. One model evaluation per timestep."""
    timesteps = ddim_timesteps(denoiser.schedule.num_timesteps, sample_steps)
    return _flow_ode(denoiser, shape, timesteps, 0, generator, device, progress, callback, clip_denoised, x_T, "Euler")


@torch.no_grad()
def heun_sample(denoiser, shape, sample_steps: int = HEUN_STEPS, *,
                generator: Optional[torch.Generator] = None, device=None, progress: bool = False,
                callback: Optional[StepCallback] = None, clip_denoised: bool = True,
                x_T: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Heun's method on the probability-flow ODE in flow matching's coordinates (Karras et al. 2022, Algorithm 1;
    diffusers' FlowMatchHeunDiscreteScheduler): an Euler step to the next timestep, then the average of the velocities
    at both ends. `sample_steps` model evaluations: K = ceil((sample_steps + 1) / 2) timesteps evenly spaced
    (ddim_timesteps), Heun on the first sample_steps - K intervals between them (two evaluations each), Euler on the
    rest and on the last step to clean data (one each); an odd sample_steps is Heun everywhere but that last step."""
    K = (check_sample_steps(sample_steps, denoiser.schedule.num_timesteps) + 2) // 2
    timesteps = ddim_timesteps(denoiser.schedule.num_timesteps, K)
    return _flow_ode(denoiser, shape, timesteps, sample_steps - K, generator, device, progress, callback,
                     clip_denoised, x_T, "Heun")


class Sampler(NamedTuple):
    """A registry entry: the sampling function and how many model evaluations it makes by default."""

    fn: Callable                         # fn(denoiser, shape, [sample_steps,] *, generator, device, callback, ...)
    default_sample_steps: Optional[int]  # sample_steps when none are asked for; None: all T (ddpm takes none)


SAMPLERS = MappingProxyType({
    "ddpm": Sampler(ddpm_sample, None),
    "ddim": Sampler(ddim_sample, DDIM_STEPS),
    "dpm-solver": Sampler(dpm_solver_sample, DPM_SOLVER_STEPS),
    "euler": Sampler(euler_sample, EULER_STEPS),
    "heun": Sampler(heun_sample, HEUN_STEPS),
})


def resolve_sample_steps(sampler: str, sample_steps: Optional[int], T: int) -> int:
    """The model evaluations `sampler` makes for `sample_steps` (None: its default, at most T; "ddpm": all T),
    checked."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    default = SAMPLERS[sampler].default_sample_steps
    if default is None and sample_steps not in (None, T):
        raise ValueError(f"sampler={sampler!r} runs all T={T} timesteps: pass sample_steps=None, "
                         f"or another sampler for fewer (got sample_steps={sample_steps})")
    sample_steps = min(default or T, T) if sample_steps is None else sample_steps
    check_sample_steps(sample_steps, T)
    return sample_steps


def generate_images(denoiser: Denoiser, n: int, *, sampler: str = "ddim", sample_steps: Optional[int] = None,
                    batch_size: int = 256, seed: int = 0, y=None, guidance_scale: float = 1.0, device=None,
                    progress: bool = False, options: Optional[dict] = None) -> torch.Tensor:
    """n samples of a UNet's denoiser as uint8 (n, C, H, W) on the CPU, drawn in batches; deterministic in (seed,
    batch_size, device).

    sampler: a name in SAMPLERS; sample_steps: its model evaluations (None: its default; "ddpm" always runs all T).
    y: labels (n,) for a class-conditional model, sampled with classifier-free guidance of scale guidance_scale
    (`guided`; both checked before any sampling): the one place labels enter sampling. The network is moved to
    `device` (default: where it is) and put in eval mode for sampling; its train/eval mode is restored afterwards.
    options: further keyword arguments of the sampler, e.g. {"eta": 1.0} for "ddim" or {"variance": "posterior"}
    for "ddpm".
    """
    config = getattr(getattr(denoiser, "net", None), "config", None)
    if not isinstance(denoiser, Denoiser) or not isinstance(denoiser.net, torch.nn.Module) or not isinstance(
            config, UNetConfig):
        raise ValueError(f"denoiser: expected a Denoiser of a network with a UNetConfig (it gives the image size), "
                         f"got {denoiser!r}")
    sample_steps = resolve_sample_steps(sampler, sample_steps, denoiser.schedule.num_timesteps)
    check_int(n, "n"), check_int(batch_size, "batch_size")
    entry = SAMPLERS[sampler]
    guide = None if y is None and guidance_scale == 1 else guided(denoiser, y, guidance_scale)
    if guide is not None and len(guide.y) != n:
        raise ValueError(f"y must hold one label per image, n={n}, got {len(guide.y)}")
    net = denoiser.net
    device = torch.device(device) if device is not None else next(net.parameters(), torch.empty(0)).device
    C, size = config.ch_list[0], config.image_size  # image channels and side, from the config
    kwargs = {**(options or {}), **({} if entry.default_sample_steps is None else {"sample_steps": sample_steps})}
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.empty((n, C, size, size), dtype=torch.uint8)
    was_training = net.training
    try:
        net.eval()
        denoiser = denoiser.to(device)
        with tqdm(total=n, disable=not progress, desc=f"{sampler}, {sample_steps} sample steps", unit="img") as bar:
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                rows = denoiser if guide is None else guide.rows(start, stop).to(device)  # a denoiser of (x_t, t)
                x0 = entry.fn(rows, (stop - start, C, size, size), generator=generator, device=device, **kwargs)
                images[start:stop] = to_uint8(x0).cpu()
                bar.update(stop - start)
    finally:
        net.train(was_training)
    return images
