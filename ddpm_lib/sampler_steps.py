"""What every sampler shares: x_T drawn on the sampling device, the denoiser's (x0, eps) at one timestep, the
schedule's coefficients as Python floats, and the per-step callback (`Trajectory` keeps every step).
"""
from typing import Callable

import torch

from .schedule import NoiseSchedule
from .utils import randn

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]  # callback(t, x_t, x0_pred), once per step


def check_shape(shape) -> tuple:
    """shape as a tuple when it is (B, C, H, W) of positive ints."""
    shape = tuple(shape)
    if len(shape) != 4 or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ValueError(f"shape must be 4-D (B, C, H, W) with positive integer sizes, got {shape!r}")
    return shape


def start_chain(schedule: NoiseSchedule, shape, generator, device, x_T):
    """The denoiser's schedule on the sampling device and x_T ~ N(0, I)  (Algorithm 2, line 1)."""
    shape = check_shape(shape)
    if x_T is not None and tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
    device = torch.device(device) if device is not None else (x_T.device if x_T is not None else schedule.device)
    x = randn(shape, generator, device) if x_T is None else x_T.to(device)
    return schedule.to(device), x


def denoise_at(denoiser, schedule: NoiseSchedule, x_t: torch.Tensor, t: int, clip_denoised: bool):
    """The denoiser's (x0, eps) at (x_t, t) and t as (B,). With clipping, x0 is clipped to [-1, 1] and eps
    recomputed from it by Eq. 4 (as improved-diffusion does), so that the two still agree."""
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    x0, eps = denoiser(x_t, t_batch)
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
        eps = schedule.predict_eps(x_t, t_batch, x0)
    return x0, eps, t_batch


class Trajectory:
    """A sampler callback that keeps every step on the CPU; `result(x0)` gives them, with the returned sample, as
    {"t": [S timesteps], "x_t": (S+1, B, C, H, W), "x0_pred": (S, B, C, H, W)}: x_t[i] is the state at timestep
    t[i], x0_pred[i] the model's x0 there, and x_t[S] the sample x0.

        trajectory = Trajectory()
        x0 = ddim_sample(denoiser, shape, callback=trajectory)
        states = trajectory.result(x0)
    """

    def __init__(self) -> None:
        self.t: list[int] = []
        self.x_t: list[torch.Tensor] = []
        self.x0_pred: list[torch.Tensor] = []

    def __call__(self, t: int, x_t: torch.Tensor, x0_pred: torch.Tensor) -> None:
        self.t.append(int(t))
        self.x_t.append(x_t.cpu())
        self.x0_pred.append(x0_pred.cpu())

    def result(self, x0: torch.Tensor) -> dict:
        """The states seen, ending with the sample x0 the sampler returned."""
        if not self.t:
            raise ValueError("the trajectory is empty: pass it to a sampler as callback= before asking for it")
        return {"t": list(self.t), "x_t": torch.stack(self.x_t + [x0.cpu()]), "x0_pred": torch.stack(self.x0_pred)}


def chain_coefficients(schedule: NoiseSchedule):
    """alpha_bar_t, sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t) as float64 lists (scalars: no device syncs in loops)."""
    return (schedule.alphas_cumprod.double().cpu().tolist(), schedule.sqrt_alphas_cumprod.double().cpu().tolist(),
            schedule.sqrt_one_minus_alphas_cumprod.double().cpu().tolist())
