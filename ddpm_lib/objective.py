"""What the network predicts and how the loss weighs each t: the objective, the denoiser, and Algorithm 1.

A network's output is one of PREDICTIONS: eps (the paper), x0, v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0
(Salimans & Ho 2022), or the flow velocity u = eps - x0 of flow matching (Lipman et al. 2023; rectified flow, Liu et
al. 2023), the derivative of the straight path z_s = (1 - s) x0 + s eps in s; a flow network sees z_s and s T
(`Objective.net_input`, as diffusers' flow-matching schedulers feed it), the others x_t and t. `Objective` records
which, with the loss weighting of each t (uniform, the paper's L_simple, or min-SNR-gamma, Hang et al. 2023); it is
saved with the network. This module holds the one set of conversions between them (`Objective.split`,
`Objective.target`), the weights (`Objective.weight`) and the loss (`diffusion_loss`). `Denoiser` joins a network,
its schedule and its objective into the function every sampler, the trainer's sample grids, the evaluator and
guidance call: (x_t, t) -> (x0, eps), whatever the network predicts (EDM's preconditioned denoiser; denoising-
diffusion-pytorch's `model_predictions`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from .cli_args import FieldError, flag, number
from .schedule import NoiseSchedule
from .utils import randn

PREDICTIONS = ("eps", "x0", "v", "flow")  # what a network's output is (Objective.prediction)
WEIGHTINGS = ("uniform", "min-snr")   # how the loss weighs each t (Objective.weighting)


@dataclass(frozen=True)
class Objective:
    """What the network predicts and how the loss weighs each t; each field with its `python -m ddpm_lib train`
    flag (cli_args.flag) and --help text."""

    prediction: str = field(  # what the network outputs: "eps" (the paper), "x0", "v" or "flow" (u = eps - x0)
        default="eps", metadata=flag("--prediction", help="eps (the paper), x0, v = sqrt(alpha_bar) eps - "
                                     "sqrt(1 - alpha_bar) x0, or flow: the velocity eps - x0 of flow matching (with "
                                     "--schedule flow) (default: the recipe's, else {default})",
                                     choices=PREDICTIONS))
    weighting: str = field(  # the weight of each t's error: "uniform" (with eps the paper's L_simple) or "min-snr"
        default="uniform", metadata=flag("--loss-weighting", help="uniform (with eps the paper's L_simple) or min-snr "
                                         "(min-SNR-gamma, Hang et al. 2023) (default: the recipe's, else {default})",
                                         choices=WEIGHTINGS))
    snr_gamma: float = field(  # min-SNR-gamma's gamma (Hang et al. 2023), used with weighting="min-snr"
        default=5.0, metadata=flag("--snr-gamma", number, "gamma of min-snr (default {default})"))

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise FieldError("Objective", "prediction", f"must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.weighting not in WEIGHTINGS:
            raise FieldError("Objective", "weighting", f"must be one of {WEIGHTINGS}, got {self.weighting!r}")
        gamma = self.snr_gamma
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
            raise FieldError("Objective", "snr_gamma", f"must be a number > 0, got {gamma!r}")

    def to_dict(self) -> dict:
        """The objective as a checkpoint and config.json store it; `from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values) -> "Objective":
        """The Objective of a `to_dict()`, every field present (a stored record is complete: a missing field is not
        silently the paper's); a ValueError naming an unknown or missing key or a bad value."""
        names = list(asdict(cls()))
        if not isinstance(values, dict):
            raise ValueError(f"objective: expected a dict of {names}, got {type(values).__name__}")
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"objective: {unknown[0]!r} is not a field of Objective (expected {', '.join(names)})")
        missing = [name for name in names if name not in values]
        if missing:
            raise ValueError(f"objective: {', '.join(missing)} missing (expected {', '.join(names)})")
        return cls(**values)

    def net_input(self, schedule: NoiseSchedule, x_t: torch.Tensor, t) -> tuple:
        """What the network is called with at (x_t, t): (x_t, t) itself, or for "flow" the point of the straight
        path z_s = x_t / (alpha_t + sigma_t) and its time s T as a float (diffusers' flow schedulers' timestep)."""
        if self.prediction != "flow":
            return x_t, t
        T = schedule.num_timesteps
        scale = schedule.sqrt_alpha_bar(t, x_t) + schedule.sqrt_one_minus_alpha_bar(t, x_t)   # alpha_t + sigma_t
        s = schedule.flow_time(t, torch.zeros(x_t.shape[0], dtype=torch.float64, device=x_t.device))  # (B,), float64
        return x_t / scale, (s * T).float()                                   # s T = t + 1 on the flow schedule

    def split(self, schedule: NoiseSchedule, output: torch.Tensor, x_t: torch.Tensor, t) -> tuple:
        """(x0, eps) that a network's `output` at (x_t, t) implies. eps: x0 by Eq. 4 solved for x0; x0: eps by
        Eq. 4 solved for eps; v: x_t and v are a rotation of x0 and eps by the angle phi_t (Salimans & Ho 2022),
        so x0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v and eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v;
        flow: z_s = (1 - s) x0 + s eps and u = eps - x0, so x0 = z_s - s u and eps = z_s + (1 - s) u."""
        if self.prediction == "eps":
            return schedule.predict_x0(x_t, t, output), output
        if self.prediction == "x0":
            return output, schedule.predict_eps(x_t, t, output)
        a, s = schedule.sqrt_alpha_bar(t, x_t), schedule.sqrt_one_minus_alpha_bar(t, x_t)
        if self.prediction == "flow":
            z, time = x_t / (a + s), schedule.flow_time(t, x_t)
            return z - time * output, z + (1 - time) * output
        return a * x_t - s * output, s * x_t + a * output

    def target(self, schedule: NoiseSchedule, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """What the network should output for x_t = q_sample(x0, t, eps): eps, x0, v or u = eps - x0."""
        if self.prediction == "v":
            return schedule.velocity(x0, t, eps)
        if self.prediction == "flow":
            return eps - x0
        return eps if self.prediction == "eps" else x0

    def weight(self, schedule: NoiseSchedule, t) -> torch.Tensor:
        """The weight (B,) of each t's squared error, float32 on t's device.

        "uniform": 1 (with eps, the paper's L_simple, Eq. 14). "min-snr" (Hang et al. 2023): every target's error
        is a multiple of x0's, ||eps - eps_hat||^2 = SNR ||x0 - x0_hat||^2 and ||v - v_hat||^2 = (SNR + 1)
        ||x0 - x0_hat||^2, ||u - u_hat||^2 = ||x0 - x0_hat||^2 / s^2 = (sqrt(SNR) + 1)^2 ||x0 - x0_hat||^2, and
        min-SNR-gamma weighs x0's error by min(SNR, gamma): so the weight is min(SNR, gamma) / SNR for eps,
        min(SNR, gamma) for x0, min(SNR, gamma) / (SNR + 1) for v and min(SNR, gamma) / (sqrt(SNR) + 1)^2 for flow.
        It caps the weight of the nearly clean t (large SNR), which otherwise dominate the x0 and v losses.
        """
        t = torch.as_tensor(t)
        if self.weighting == "uniform":
            return torch.ones(t.shape, device=t.device)
        snr = schedule.snr(t, dtype=torch.float64)                        # float64: near t = 0 SNR is about 1e4
        per_x0 = snr.clamp(max=self.snr_gamma)                            # min(SNR, gamma)
        weight = {"eps": per_x0 / snr, "x0": per_x0, "v": per_x0 / (snr + 1),
                  "flow": per_x0 / (snr.sqrt() + 1) ** 2}[self.prediction]
        return weight.float()


class Denoised(NamedTuple):
    """What a denoiser returns at (x_t, t): the clean image and the noise its network's output implies."""

    x0: torch.Tensor   # x0_theta(x_t, t)
    eps: torch.Tensor  # eps_theta(x_t, t)


class Denoiser:
    """A network, its schedule and its objective as one function (x_t, t[, y]) -> Denoised(x0, eps).

    net: a UNet (or any function of (x_t, t), or of (x_t, t, y) with labels) whose output `objective.prediction`
    names; the denoiser converts it (`Objective.split`) in x_t's dtype. `net` is kept as given: its train/eval
    mode and device are the caller's (`to` moves both the network and the schedule).
    """

    def __init__(self, net, schedule: NoiseSchedule, objective: Objective | None = None):
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule: expected a NoiseSchedule, got {type(schedule).__name__}")
        objective = objective if objective is not None else Objective()
        if not isinstance(objective, Objective):
            raise ValueError(f"objective: expected an Objective, got {type(objective).__name__}")
        self.net, self.schedule, self.objective = net, schedule, objective

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> Denoised:
        x_in, t_in = self.objective.net_input(self.schedule, x_t, t)
        output = self.net(x_in, t_in) if y is None else self.net(x_in, t_in, y)
        return Denoised(*self.objective.split(self.schedule, output.to(x_t.dtype), x_t, t))

    def to(self, device) -> "Denoiser":
        """This denoiser with its network (an nn.Module, moved in place) and schedule on `device`."""
        net = self.net.to(device) if isinstance(self.net, torch.nn.Module) else self.net
        return Denoiser(net, self.schedule.to(device), self.objective)

    def __repr__(self) -> str:
        return f"Denoiser({type(self.net).__name__}, {self.schedule!r}, {self.objective!r})"


def diffusion_loss(net, schedule: NoiseSchedule, x0: torch.Tensor, objective: Objective | None = None,
                   generator: torch.Generator | None = None, reduction: str = "mean", t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """Algorithm 1: t ~ U{0..T-1}, eps ~ N(0, I), loss = w_t ||target - net(x_t, t)||^2.

    The target and w_t are the objective's (default: eps and uniform weights, the paper's L_simple, Eq. 14); `net`
    is a function of (x_t, t) (bind labels first, e.g. functools.partial(net, y=y)).
    reduction="mean" averages over everything; "none" returns the per-example loss (B,), weighted.
    `t` and `noise` fix the random draws (both default to draws from `generator`).
    """
    objective = objective if objective is not None else Objective()
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if x0.ndim < 1 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty batch (B, ...), got shape {tuple(x0.shape)}")
    B = x0.shape[0]
    if t is None:                                                                         # Algorithm 1, line 3
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, schedule.num_timesteps, (B,), generator=generator, device=gen_device).to(x0.device)
    elif t.shape != (B,):
        raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
    weight = objective.weight(schedule, t)                                                # checked before the net
    if noise is None:                                                                     # Algorithm 1, line 4
        noise = randn(x0.shape, generator, x0.device, x0.dtype)
    x_t = schedule.q_sample(x0, t, noise)
    target = objective.target(schedule, x0, t, noise)
    err = (target - net(*objective.net_input(schedule, x_t, t)).to(noise.dtype)) ** 2     # Algorithm 1, line 5
    per_example = err.reshape(B, -1).mean(1) * weight.to(err.dtype)                     # uniform: w_t = 1
    return per_example.mean() if reduction == "mean" else per_example
