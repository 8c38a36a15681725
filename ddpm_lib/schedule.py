"""Beta schedules, the forward process q and its posterior (Ho et al. 2020, Sec. 2), and Eq. 4 solved for x0 or eps.

Every x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps is also a point of the straight path of flow matching
(Lipman et al. 2023; rectified flow, Liu et al. 2023) rescaled: z_s = (1 - s) x0 + s eps = x_t / (alpha_t + sigma_t)
with s = sigma_t / (alpha_t + sigma_t) (alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t)): `flow_time`.
The "flow" schedule spaces s evenly, s = (t + 1) / T, as flow matching samples its time.

What a network predicts and how its loss weighs each t live in ddpm_lib.objective, which reads its coefficients
from here.

Index 0 of every tensor here is the paper's t = 1; `t` is an int64 tensor in [0, T-1].
Coefficients are computed in float64 and stored as float32 (a float64 copy stays on the CPU
so that float64 inputs get float64 coefficients).
"""
import math
from types import MappingProxyType
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch

from .utils import check_int


class LinearBetas(NamedTuple):
    """The arguments of a linear beta schedule."""

    num_timesteps: int  # T, the number of diffusion timesteps
    beta_min: float     # beta_1
    beta_max: float     # beta_T


# The paper's schedule (Ho et al. 2020, Sec. 4): T = 1000 linear betas from 1e-4 to 0.02. The one place it is written.
PAPER_SCHEDULE = LinearBetas(num_timesteps=1000, beta_min=1e-4, beta_max=0.02)
# what a NoiseSchedule records of how its betas were made: its kind, and that kind's parameters
SCHEDULE_PARAMS = MappingProxyType({"linear": ("num_timesteps", "beta_min", "beta_max"),
                                    "cosine": ("num_timesteps", "s"), "flow": ("num_timesteps",), "custom": ()})
SCHEDULE_KINDS = tuple(SCHEDULE_PARAMS)


_COEFFICIENTS = (
    "betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "log_betas_clipped", "flow_times",
)
VARIANCES = ("beta", "posterior")  # the reverse process's fixed sigma_t^2 (Sec. 3.2): beta_t or beta_tilde_t


def linear_betas(num_timesteps: int = PAPER_SCHEDULE.num_timesteps, beta_min: float = PAPER_SCHEDULE.beta_min,
                 beta_max: float = PAPER_SCHEDULE.beta_max) -> torch.Tensor:
    """The paper's schedule: beta_1..beta_T evenly spaced from beta_min to beta_max (float64, (T,))."""
    check_int(num_timesteps, "num_timesteps")
    if not 0.0 < beta_min < 1.0 or not 0.0 < beta_max < 1.0:
        raise ValueError(f"beta_min and beta_max must lie in (0, 1), got {beta_min!r} and {beta_max!r}")
    if beta_min >= beta_max:
        raise ValueError(f"beta_min must be < beta_max, got beta_min={beta_min!r} >= beta_max={beta_max!r}")
    return torch.linspace(beta_min, beta_max, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int = PAPER_SCHEDULE.num_timesteps, s: float = 0.008,
                 max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021) Eq. 17: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2), betas clipped at max_beta."""
    check_int(num_timesteps, "num_timesteps")
    if not s >= 0.0:
        raise ValueError(f"s must be >= 0, got {s!r}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]                       # beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
    return betas.clamp(max=max_beta)


def flow_betas(num_timesteps: int = PAPER_SCHEDULE.num_timesteps, max_beta: float = 0.999) -> torch.Tensor:
    """The betas whose x_t are the straight path z_s = (1 - s) x0 + s eps at s = (t + 1) / T, rescaled (flow matching,
    the time grid of diffusers' FlowMatchEulerDiscreteScheduler): alpha_bar = (1 - s)^2 / ((1 - s)^2 + s^2), the
    variance-preserving x_t with z_s's signal-to-noise ratio. Clipped at max_beta as cosine's are: s = 1 would be
    alpha_bar = 0, so the last s is 1 - 3.2e-5 (T = 1000) instead."""
    check_int(num_timesteps, "num_timesteps")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
    s = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps       # s_0 = 0: clean data
    alpha_bar = (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]            # beta_t = 1 - abar_t / abar_t-1; abar > 0 below s = 1
    return betas.clamp(max=max_beta)


class NoiseSchedule:
    """The forward process q(x_t | x0) of a beta schedule, its posterior, and the conversions between x0 and eps.

    It records how its betas were made: `kind` ("linear", "cosine", "flow" or "custom") and `params` (linear:
    num_timesteps, beta_min, beta_max; cosine: num_timesteps, s; flow: num_timesteps; custom: none), through the
    constructors `linear`, `cosine` and `flow`.
    """

    # float32 (T,) coefficients, indexed by t (set from the float64 ones in __init__, moved by `to`)
    betas: torch.Tensor                          # beta_t
    alphas: torch.Tensor                         # alpha_t = 1 - beta_t
    alphas_cumprod: torch.Tensor                 # alpha_bar_t
    alphas_cumprod_prev: torch.Tensor            # alpha_bar_{t-1} (1 at t = 0)
    sqrt_alphas_cumprod: torch.Tensor            # sqrt(alpha_bar_t)
    sqrt_one_minus_alphas_cumprod: torch.Tensor  # sqrt(1 - alpha_bar_t)
    sqrt_recip_alphas_cumprod: torch.Tensor      # 1 / sqrt(alpha_bar_t)
    sqrt_recipm1_alphas_cumprod: torch.Tensor    # sqrt(1 / alpha_bar_t - 1)
    posterior_variance: torch.Tensor             # beta_tilde_t (Eq. 7)
    posterior_log_variance_clipped: torch.Tensor  # log beta_tilde_t, t = 0 taking t = 1's value
    posterior_mean_coef1: torch.Tensor           # coefficient of x0 in mu_tilde (Eq. 7)
    posterior_mean_coef2: torch.Tensor           # coefficient of x_t in mu_tilde (Eq. 7)
    log_betas_clipped: torch.Tensor              # log beta_t, t = 0 taking log beta_tilde_2 (the official code's)
    flow_times: torch.Tensor                     # s_t = sigma_t / (alpha_t + sigma_t), x_t's time on the flow path

    def __init__(self, betas: Union[torch.Tensor, Sequence[float]], kind: str = "custom",
                 params: Optional[dict] = None):
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
        if set(params or {}) != set(SCHEDULE_PARAMS[kind]):
            raise ValueError(f"params of a {kind} schedule must be {SCHEDULE_PARAMS[kind]}, got {tuple(params or {})}")
        betas = torch.as_tensor(betas).detach().to("cpu", torch.float64)
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must lie in the open interval (0, 1), got min {betas.min().item():.3g}, "
                             f"max {betas.max().item():.3g}")
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)                                       # alpha_bar_t
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)  # Eq. 7, beta_tilde_t
        # beta_tilde at the paper's t = 1 is 0: like the official code, log beta_tilde at t = 2 there (beta_1 if T = 1)
        first = posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        f64 = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": torch.cat([first, posterior_variance[1:]]).log(),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),          # Eq. 7
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),   # Eq. 7
            # sigma_t^2 = beta_t, except at the paper's t = 1, where the official code takes beta_tilde_2 as it
            # does for log beta_tilde: the decoder's variance (Eq. 13). Sampling adds no noise there.
            "log_betas_clipped": torch.cat([first, betas[1:]]).log(),
            "flow_times": (1 - alphas_cumprod).sqrt() / (alphas_cumprod.sqrt() + (1 - alphas_cumprod).sqrt()),
        }
        self._f64 = f64
        self.kind = kind
        self.params = MappingProxyType(dict(params or {}))  # read-only: the arguments that made the betas
        self.num_timesteps = len(betas)
        self.device = torch.device("cpu")
        for name in _COEFFICIENTS:
            setattr(self, name, f64[name].float())

    @classmethod
    def linear(cls, num_timesteps: int = PAPER_SCHEDULE.num_timesteps, beta_min: float = PAPER_SCHEDULE.beta_min,
               beta_max: float = PAPER_SCHEDULE.beta_max) -> "NoiseSchedule":
        return cls(linear_betas(num_timesteps, beta_min, beta_max), "linear",
                   {"num_timesteps": num_timesteps, "beta_min": float(beta_min), "beta_max": float(beta_max)})

    @classmethod
    def cosine(cls, num_timesteps: int = PAPER_SCHEDULE.num_timesteps, s: float = 0.008) -> "NoiseSchedule":
        return cls(cosine_betas(num_timesteps, s), "cosine", {"num_timesteps": num_timesteps, "s": float(s)})

    @classmethod
    def flow(cls, num_timesteps: int = PAPER_SCHEDULE.num_timesteps) -> "NoiseSchedule":
        """Flow matching's time grid, s = (t + 1) / T evenly spaced (`flow_betas`)."""
        return cls(flow_betas(num_timesteps), "flow", {"num_timesteps": num_timesteps})

    @classmethod
    def paper(cls, num_timesteps: int = PAPER_SCHEDULE.num_timesteps) -> "NoiseSchedule":
        """The paper's linear betas; for another T scaled by 1000 / T, so that alpha_bar_T stays near 0 (a short T
        with the paper's betas would end the forward chain far from N(0, I))."""
        check_int(num_timesteps, "num_timesteps")
        scale = PAPER_SCHEDULE.num_timesteps / num_timesteps
        if PAPER_SCHEDULE.beta_max * scale >= 1:
            raise ValueError(f"num_timesteps: the paper's betas scaled by 1000 / T reach 1 at T = {num_timesteps}; "
                             f"expected T > {math.floor(PAPER_SCHEDULE.beta_max * PAPER_SCHEDULE.num_timesteps)}")
        return cls.linear(num_timesteps, PAPER_SCHEDULE.beta_min * scale, PAPER_SCHEDULE.beta_max * scale)

    def to(self, device) -> "NoiseSchedule":
        """A copy whose float32 tensors live on `device` (the float64 copy stays on the CPU)."""
        new = object.__new__(NoiseSchedule)
        new.__dict__.update(self.__dict__)
        new.device = torch.device(device)
        for name in _COEFFICIENTS:
            setattr(new, name, getattr(self, name).to(new.device))
        return new

    def state_dict(self) -> dict:
        return {"betas": self._f64["betas"].clone(), "kind": self.kind, "params": dict(self.params)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "NoiseSchedule":
        if not isinstance(state, dict) or not {"betas", "kind", "params"} <= set(state):
            raise ValueError("state must be a dict with 'betas', 'kind' and 'params', as NoiseSchedule.state_dict() "
                             "returns")
        return cls(state["betas"], state["kind"], state["params"])

    def config(self) -> dict:
        """The schedule as config.json writes it: {"kind": "linear", "num_timesteps", "beta_min", "beta_max"},
        {"kind": "cosine", "num_timesteps", "s"}, {"kind": "flow", "num_timesteps"} or {"kind": "custom", "betas":
        [...]}; `from_config` reads it back."""
        if self.kind == "custom":
            return {"kind": "custom", "betas": self._f64["betas"].tolist()}
        return {"kind": self.kind, **self.params}

    @classmethod
    def from_config(cls, values: dict) -> "NoiseSchedule":
        """The schedule of a `config()` dict; a ValueError naming an unknown kind or key."""
        makers: dict[str, tuple[Callable[..., NoiseSchedule], tuple[str, ...]]] = {
            "linear": (cls.linear, SCHEDULE_PARAMS["linear"]), "cosine": (cls.cosine, SCHEDULE_PARAMS["cosine"]),
            "flow": (cls.flow, SCHEDULE_PARAMS["flow"]), "custom": (cls, ("betas",))}
        kind = values.get("kind") if isinstance(values, dict) else None
        if kind not in makers:
            raise ValueError(f"kind: expected one of {sorted(makers)}, got {kind!r}")
        make, keys = makers[kind]
        unknown = sorted(set(values) - {"kind", *keys})
        if unknown:
            raise ValueError(f"{unknown[0]}: not a key of a {kind} schedule (expected {', '.join(keys)})")
        return make(**{k: values[k] for k in keys if k in values})

    def __repr__(self) -> str:
        b = self._f64["betas"]
        params = "".join(f", {k}={v:g}" for k, v in self.params.items() if k != "num_timesteps")
        return (f"NoiseSchedule({self.kind}, T={self.num_timesteps}{params}, beta_1={b[0].item():.3g}, "
                f"beta_T={b[-1].item():.3g}, device={self.device})")

    def _check_t(self, t, device=None) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t must hold integer timesteps in [0, {self.num_timesteps - 1}], got dtype {t.dtype}")
        return t.long()

    def _extract(self, name: str, t, x: torch.Tensor) -> torch.Tensor:
        """coefficient[t] on x's device and dtype, shaped (B, 1, ..., 1) to broadcast against x."""
        t = self._check_t(t, x.device)
        coef = self._f64[name] if x.dtype == torch.float64 else getattr(self, name)
        out = coef.to(x.device)[t].to(x.dtype)
        return out.reshape(out.shape + (1,) * (x.ndim - out.ndim))

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps  (Eq. 4, reparameterised)."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return (self._extract("sqrt_alphas_cumprod", t, x0) * x0
                + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t):
        """Mean, variance and log-variance of q(x_{t-1} | x_t, x0)  (Eqs. 6-7), each of x_t's shape."""
        mean = (self._extract("posterior_mean_coef1", t, x_t) * x0
                + self._extract("posterior_mean_coef2", t, x_t) * x_t)                  # Eq. 7, mu_tilde
        variance = self._extract("posterior_variance", t, x_t).expand(x_t.shape)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t).expand(x_t.shape)
        return mean, variance, log_variance

    def reverse_log_variance(self, t, x: torch.Tensor, variance: str = "beta") -> torch.Tensor:
        """log sigma_t^2 of p_theta(x_{t-1} | x_t) (Sec. 3.2): "beta" sigma_t^2 = beta_t (the paper's CIFAR-10
        choice), "posterior" beta_tilde_t (Eq. 7); each at t = 0 taking t = 1's beta_tilde, as the official code
        does. In x's dtype and device, shaped to broadcast against x."""
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        return self._extract("log_betas_clipped" if variance == "beta" else "posterior_log_variance_clipped", t, x)

    def predict_x0(self, x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)  (Eq. 4 solved for x0: the paper's Eq. 15)."""
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def predict_eps(self, x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)  (Eq. 4 solved for eps)."""
        return ((x_t - self._extract("sqrt_alphas_cumprod", t, x_t) * x0)
                / self._extract("sqrt_one_minus_alphas_cumprod", t, x_t))

    def velocity(self, x0: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0  (Salimans & Ho 2022, Sec. 4)."""
        return (self._extract("sqrt_alphas_cumprod", t, x0) * eps
                - self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * x0)

    def snr(self, t, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) in `dtype`, on t's device."""
        t = self._check_t(t)
        abar = self._f64["alphas_cumprod"][t.cpu()]                     # float64: 1 - alpha_bar is tiny near t = 0
        return (abar / (1 - abar)).to(t.device, dtype)

    def sqrt_alpha_bar(self, t, x: torch.Tensor) -> torch.Tensor:
        """sqrt(alpha_bar_t) in x's dtype and device, shaped to broadcast against x."""
        return self._extract("sqrt_alphas_cumprod", t, x)

    def sqrt_one_minus_alpha_bar(self, t, x: torch.Tensor) -> torch.Tensor:
        """sqrt(1 - alpha_bar_t) in x's dtype and device, shaped to broadcast against x."""
        return self._extract("sqrt_one_minus_alphas_cumprod", t, x)

    def flow_time(self, t, x: torch.Tensor) -> torch.Tensor:
        """s_t = sigma_t / (alpha_t + sigma_t), where x_t / (alpha_t + sigma_t) lies on the straight path
        z_s = (1 - s) x0 + s eps; in x's dtype and device, shaped to broadcast against x."""
        return self._extract("flow_times", t, x)
