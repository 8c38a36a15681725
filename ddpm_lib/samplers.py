"""Samplers: DDPM (Algorithm 2), DDIM (Song et al. 2021) and DPM-Solver++(2M) (Lu et al. 2022).

Each takes the noise predictor as `model(x_t, t) -> eps`, with x_t float (B, C, H, W) and t int64 (B,),
draws x_T ~ N(0, I) and returns x0. Common keyword arguments:
  generator          torch.Generator for every random draw (x_T first, then the per-step noise);
                     a CPU generator gives the same numbers on every device
  device             where to sample (default: the schedule's device)
  progress           show a tqdm progress bar
  return_trajectory  also return {"t": [S timesteps], "x_t": (S+1, B, C, H, W), "x0_pred": (S, B, C, H, W)}
                     on the CPU: x_t[i] is the state at timestep t[i], x0_pred[i] the model's x0 there,
                     and x_t[S] the returned sample
  clip_denoised      clip the predicted x0 to [-1, 1] at every step, as the official code does
  x_T                start from this noise instead of drawing it (its dtype and device are used)
"""
import math
from typing import Optional

import torch
from tqdm.auto import tqdm

from .schedule import NoiseSchedule, _randn


def _check_shape(shape) -> tuple:
    shape = tuple(shape)
    if len(shape) != 4 or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ValueError(f"shape must be 4-D (B, C, H, W) with positive integer sizes, got {shape!r}")
    return shape


def _check_solver_steps(steps, T: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in [1, T={T}], got {steps!r}")


def _start(schedule: NoiseSchedule, shape, generator, device, x_T):
    """The schedule on the sampling device and x_T ~ N(0, I)  (Algorithm 2, line 1)."""
    shape = _check_shape(shape)
    if x_T is not None and tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
    device = torch.device(device) if device is not None else (x_T.device if x_T is not None else schedule.device)
    x = _randn(shape, generator, device) if x_T is None else x_T.to(device)
    return schedule.to(device), x


def _denoise(model, schedule: NoiseSchedule, x_t: torch.Tensor, t: int, clip_denoised: bool):
    """The x0 that eps_theta(x_t, t) implies (Eq. 4 solved for x0), clipped to [-1, 1] if asked, and t as (B,)."""
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    eps = model(x_t, t_batch).to(x_t.dtype)
    x0 = schedule.predict_x0(x_t, t_batch, eps)
    return (x0.clamp(-1, 1) if clip_denoised else x0), t_batch


class _Trajectory:
    """Collects x_t and the predicted x0 at each step (on the CPU) when enabled."""

    def __init__(self, enabled: bool):
        self.enabled, self.t, self.x_t, self.x0_pred = enabled, [], [], []

    def add(self, t: int, x_t: torch.Tensor, x0_pred: torch.Tensor) -> None:
        if self.enabled:
            self.t.append(int(t))
            self.x_t.append(x_t.cpu())
            self.x0_pred.append(x0_pred.cpu())

    def result(self, x0: torch.Tensor, return_trajectory: bool):
        if not return_trajectory:
            return x0
        return x0, {"t": self.t, "x_t": torch.stack(self.x_t + [x0.cpu()]), "x0_pred": torch.stack(self.x0_pred)}


def _cpu_coefficients(schedule: NoiseSchedule):
    """alpha_bar_t, sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) as float64 lists (scalars: no device syncs in loops)."""
    return (schedule.alphas_cumprod.double().cpu().tolist(), schedule.sqrt_alphas_cumprod.double().cpu().tolist(),
            schedule.sqrt_one_minus_alphas_cumprod.double().cpu().tolist())


@torch.no_grad()
def ddpm_sample(model, schedule: NoiseSchedule, shape, variance: str = "beta", *,
                generator: Optional[torch.Generator] = None, device=None, progress: bool = False,
                return_trajectory: bool = False, clip_denoised: bool = True, x_T: Optional[torch.Tensor] = None):
    """Algorithm 2, ancestral sampling through all T steps.

    variance="beta" uses sigma_t^2 = beta_t (the paper's CIFAR-10 choice); "posterior" uses
    sigma_t^2 = beta_tilde_t (Eq. 7, `posterior_log_variance_clipped`). The mean is the posterior mean
    (Eq. 7) of the (clipped) predicted x0, which equals Eq. 11 when nothing is clipped.
    """
    if variance not in ("beta", "posterior"):
        raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")
    schedule, x = _start(schedule, shape, generator, device, x_T)
    log_var = schedule.betas.log() if variance == "beta" else schedule.posterior_log_variance_clipped
    traj = _Trajectory(return_trajectory)
    for t in tqdm(range(schedule.steps - 1, -1, -1), disable=not progress, desc="DDPM"):   # Algorithm 2, line 2
        x0, t_batch = _denoise(model, schedule, x, t, clip_denoised)
        traj.add(t, x, x0)
        mean, _, _ = schedule.q_posterior(x0, x, t_batch)                                  # Eq. 7
        if t > 0:                                                                          # Algorithm 2, line 3
            z = _randn(x.shape, generator, x.device, x.dtype)
            x = mean + (0.5 * log_var[t]).exp().to(x.dtype) * z                            # Algorithm 2, line 4
        else:
            x = mean
    return traj.result(x, return_trajectory)


def ddim_timesteps(T: int, steps: int) -> list:
    """`steps` timesteps evenly spaced from T-1 down to 0, both included (diffusers' "linspace" spacing).

    Unlike "leading" spacing (0, T//steps, ... which stops short of T-1 when steps does not divide T),
    the first step always starts where x_T ~ N(0, I) is defined and the last one reaches t = 0.
    """
    _check_solver_steps(steps, T)
    if steps == 1:
        return [T - 1]
    return [int(math.floor((T - 1) * (1 - i / (steps - 1)) + 0.5)) for i in range(steps)]


@torch.no_grad()
def ddim_sample(model, schedule: NoiseSchedule, shape, steps: int = 50, eta: float = 0.0, *,
                generator: Optional[torch.Generator] = None, device=None, progress: bool = False,
                return_trajectory: bool = False, clip_denoised: bool = True, x_T: Optional[torch.Tensor] = None):
    """DDIM (Song et al. 2021, Eq. 12) on `ddim_timesteps(T, steps)`; eta=0 is deterministic, eta=1 is DDPM-like.

    With clipping, eps is recomputed from the clipped x0 (as improved-diffusion does) so that both agree.
    One noise draw per step when eta > 0.
    """
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    timesteps = ddim_timesteps(schedule.steps, steps)
    schedule, x = _start(schedule, shape, generator, device, x_T)
    abar, sqrt_abar, sqrt_1m_abar = _cpu_coefficients(schedule)
    traj = _Trajectory(return_trajectory)
    for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="DDIM")):
        x0, _ = _denoise(model, schedule, x, t, clip_denoised)
        traj.add(t, x, x0)
        eps = (x - sqrt_abar[t] * x0) / sqrt_1m_abar[t]                                  # Eq. 12, eps of this x0
        abar_prev = abar[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar[t]) * (1 - abar[t] / abar_prev))    # Eq. 16
        x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps   # Eq. 12
        if eta > 0:
            x = x + sigma * _randn(x.shape, generator, x.device, x.dtype)
    return traj.result(x, return_trajectory)


def dpm_solver_timesteps(schedule: NoiseSchedule, steps: int) -> list:
    """Integer timesteps from T-1 down to 0, spaced uniformly in log-SNR lambda = log(alpha_t / sigma_t).

    Targets evenly spaced in lambda are mapped to t by linear interpolation and rounded, as diffusers'
    `use_lu_lambdas` does. Timesteps that coincide after rounding are merged, so there can be fewer than
    `steps`: with many steps, or with schedules whose lambda falls steeply near T-1 (cosine betas clipped
    at 0.999 lose one of 10 steps there).
    """
    _check_solver_steps(steps, schedule.steps)
    if schedule.steps == 1:
        return [0]
    _, sqrt_abar, sqrt_1m_abar = _cpu_coefficients(schedule)
    log_sigma = torch.tensor([math.log(s / a) for a, s in zip(sqrt_abar, sqrt_1m_abar)], dtype=torch.float64)
    target = torch.linspace(log_sigma[-1].item(), log_sigma[0].item(), steps, dtype=torch.float64)  # -lambda, T-1 -> 0
    hi = torch.searchsorted(log_sigma, target).clamp(1, schedule.steps - 1)    # log_sigma increases with t
    lo = hi - 1
    w = ((target - log_sigma[lo]) / (log_sigma[hi] - log_sigma[lo])).clamp(0, 1)
    t = torch.round(lo + w).long().tolist()
    return sorted(set(t), reverse=True)


@torch.no_grad()
def dpm_solver_sample(model, schedule: NoiseSchedule, shape, steps: int = 20, *,
                      generator: Optional[torch.Generator] = None, device=None, progress: bool = False,
                      return_trajectory: bool = False, clip_denoised: bool = True,
                      x_T: Optional[torch.Tensor] = None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, data prediction, log-SNR-uniform steps.

    Solves the probability-flow ODE in lambda with the exponential integrator, using the model's x0
    prediction D and a second-order correction from the previous step's D. The first step is first order
    (no history yet, it equals DDIM); the last model call, at t = 0, returns its x0 prediction (the step
    to sigma = 0, diffusers' final_sigmas_type="zero"). One model call per `dpm_solver_timesteps` entry.
    The step sizes use lambda of the rounded timesteps the model sees (diffusers keeps the unrounded ones).
    """
    timesteps = dpm_solver_timesteps(schedule, steps)
    schedule, x = _start(schedule, shape, generator, device, x_T)
    _, alpha, sigma = _cpu_coefficients(schedule)
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]                         # lambda_t = log(alpha_t / sigma_t)
    traj = _Trajectory(return_trajectory)
    D_prev, h_prev = None, None
    for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="DPM-Solver++")):
        D, _ = _denoise(model, schedule, x, t, clip_denoised)                     # data prediction x0_theta(x_t, t)
        traj.add(t, x, D)
        if i + 1 == len(timesteps):                                               # to sigma = 0: x0 = D
            x = D
            break
        t_next = timesteps[i + 1]
        h = lam[t_next] - lam[t]
        if D_prev is not None:                                                    # 2M: D + (D - D_prev) / (2 r)
            r = h_prev / h
            D_step = (1 + 0.5 / r) * D - (0.5 / r) * D_prev
        else:
            D_step = D
        x = (sigma[t_next] / sigma[t]) * x - alpha[t_next] * math.expm1(-h) * D_step   # exponential integrator
        D_prev, h_prev = D, h
    return traj.result(x, return_trajectory)
