"""The variational bound of Eq. 5 in bits per dimension: the negative log-likelihood the paper reports (Table 1).

    L = L_T + sum_{t>1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x0) || N(0, I))                          the prior term (no parameters)
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))   Gaussians: Eq. 7 against mu_theta, sigma_t^2
    L_0     = -log p_theta(x0 | x_1)                               the discretised Gaussian decoder (Eq. 13)

p_theta's mean is the posterior mean (Eq. 7) of the denoiser's x0 (clipped to [-1, 1], as the samplers do), its
variance the fixed sigma_t^2 (`NoiseSchedule.reverse_log_variance`: beta_t or beta_tilde_t). Each term is in bits
per dimension: nats averaged over the C H W dimensions, divided by log 2. Index 0 of the library's t is the
paper's t = 1, so library t = 0 is the decoder term L_0 and library t >= 1 the KL term L_{t-1}.
Summing all T terms takes T network calls per image; `variational_bound` can instead draw one t per stratum of
the KL terms and weigh it by the stratum's size: an unbiased estimate of their sum in fewer calls.
The formulas follow the official code (diffusion_tf's `normal_kl` and `discretized_gaussian_log_likelihood`, with
its tanh approximation of the normal CDF), as improved-diffusion's do.
"""
from __future__ import annotations

import math

import torch

from .objective import Denoiser
from .schedule import VARIANCES
from .utils import check_int

LOG2 = math.log(2.0)
UNIFORM_BPD = 8.0  # log2(256): every 8-bit value equally likely, the bound's trivial reference
PAPER_NLL = {"L (fixed isotropic sigma)": 3.70, "L_simple": 3.75}  # Ho et al. 2020, Table 1, CIFAR-10 test, <=


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) by the tanh approximation 0.5 (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) of the official code."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) per element of x in [-1, 1] on the 8-bit grid (256 bins of width 2/255) under N(means,
    exp(log_scales)^2) integrated over each bin, the edge bins taking the tails to -inf and +inf (Eq. 13)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))     # Eq. 13, delta_+
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))      # Eq. 13, delta_-
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_over_pixels(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(1)


def prior_bpd(schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T in bits/dim per image: KL(q(x_T | x0) || N(0, I)), x0 (B, C, H, W) in [-1, 1]."""
    t = torch.full((x0.shape[0],), schedule.num_timesteps - 1, device=x0.device)
    mean = schedule.sqrt_alpha_bar(t, x0) * x0                                       # Eq. 4's mean
    logvar = 2 * torch.log(schedule.sqrt_one_minus_alpha_bar(t, x0)).expand(x0.shape)
    return _mean_over_pixels(normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0))) / LOG2


def terms_bpd(denoiser: Denoiser, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
              variance: str = "beta", y: torch.Tensor | None = None) -> torch.Tensor:
    """The term of Eq. 5 at each row's t, in bits/dim (B,): L_0 (the decoder's NLL) where t = 0, else L_{t-1},
    for x_t = q_sample(x0, t, noise)."""
    schedule = denoiser.schedule
    x_t = schedule.q_sample(x0, t, noise)                                            # Eq. 4
    true_mean, _, true_logvar = schedule.q_posterior(x0, x_t, t)                     # Eq. 7
    x0_pred = denoiser(x_t, t, y).x0.clamp(-1, 1)
    model_mean, _, _ = schedule.q_posterior(x0_pred, x_t, t)                         # mu_theta: Eq. 7 of x0_theta
    model_logvar = schedule.reverse_log_variance(t, x_t, variance).expand(x_t.shape)  # log sigma_t^2
    # Eq. 8's KL; for an eps network (nothing clipped) its part that depends on theta is Eq. 12's
    # lambda_t ||eps - eps_theta||^2, lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t))
    kl = _mean_over_pixels(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / LOG2
    decoder = -_mean_over_pixels(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / LOG2
    return torch.where(t == 0, decoder, kl)


def kl_strata(T: int, n_t: int | None) -> list[tuple[int, int]]:
    """The library timesteps 1..T-1 of the KL terms cut into n_t strata [lo, hi), geometrically spaced (the terms
    fall by orders of magnitude from small t: the first strata hold one t each); None: every t its own stratum."""
    if T < 2:
        return []
    if n_t is None or n_t >= T - 1:
        return [(t, t + 1) for t in range(1, T)]
    check_int(n_t, "n_t", 1)
    edges = sorted(set(torch.logspace(0, math.log10(T), n_t + 1).round().long().tolist()) | {1, T})
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def variational_bound(denoiser: Denoiser, x0: torch.Tensor, *, variance: str = "beta", n_t: int | None = None,
                      y: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      batch_size: int = 256) -> dict:
    """Eq. 5 in bits/dim for images x0 (N, C, H, W) in [-1, 1] on the 8-bit grid.

    n_t: how many KL terms L_{t-1} to compute per image. None (or >= T - 1): all T - 1, exactly. Fewer: the
    timesteps are cut into about n_t strata (`kl_strata`), each image draws one t uniformly in each, and a term
    counts (stratum size) times: an unbiased estimate of the sum. L_T and L_0 are always computed. Each (image,
    t) pair gets its own noise from `generator`; the network sees batches of up to `batch_size` such rows.
    y: labels for a class-conditional network (-1: none).
    Returns per-image float64 tensors (N,) "prior" (L_T), "decoder" (L_0), "kl" (the sum of the L_{t-1}) and
    "total", and "n_t", the KL terms computed per image (T - 1 when exact).
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if not isinstance(x0, torch.Tensor) or x0.ndim != 4 or not x0.is_floating_point() or len(x0) == 0:
        raise ValueError(f"x0 must be a float tensor (N, C, H, W) in [-1, 1] with N >= 1, got "
                         f"{type(x0).__name__} {tuple(getattr(x0, 'shape', ()))}")
    check_int(batch_size, "batch_size")
    schedule = denoiser.schedule
    strata = kl_strata(schedule.num_timesteps, n_t)
    N, K = len(x0), len(strata)
    lo = torch.tensor([a for a, _ in strata] or [0], dtype=torch.float64)
    size = torch.tensor([b - a for a, b in strata] or [0], dtype=torch.float64)
    u = torch.rand((N, K), generator=generator, device=generator.device if generator else "cpu", dtype=torch.float64)
    t_kl = (lo + (u.cpu() * size).floor()).long()[:, :K]                              # one t per stratum, image
    ts = torch.cat([torch.zeros(N, 1, dtype=torch.long), t_kl], 1)                     # (N, 1 + K): t = 0 first
    rows = [(i, j) for i in range(N) for j in range(1 + K)]
    terms = torch.empty(N, 1 + K, dtype=torch.float64)
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        images = torch.tensor([i for i, _ in batch])
        t = torch.tensor([int(ts[i, j]) for i, j in batch], device=x0.device)
        x = x0[images.to(x0.device)]
        noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device,
                            dtype=x.dtype).to(x.device)
        labels = None if y is None else y.to(x.device)[images.to(x.device)]
        out = terms_bpd(denoiser, x, t, noise, variance, labels).double().cpu()
        for (i, j), value in zip(batch, out):
            terms[i, j] = value
    prior = prior_bpd(schedule, x0).double().cpu()
    decoder = terms[:, 0]
    kl = (terms[:, 1:] * size[:K]).sum(1)                                              # each term x its stratum
    return {"prior": prior, "decoder": decoder, "kl": kl, "total": prior + decoder + kl, "n_t": K}


def bound_summary(result: dict) -> dict:
    """Each term of a `variational_bound` result ("total", "prior", "kl", "decoder") as its mean over the images
    and the standard error of that mean (None for one image), in bits/dim."""
    n = len(result["total"])
    return {name: {"mean": result[name].mean().item(),
                   "sem": result[name].std().item() / math.sqrt(n) if n > 1 else None}
            for name in ("total", "prior", "kl", "decoder")}


def gaussian_fit_bpd(train: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Bits/dim per image of x0 (N, C, H, W) in [-1, 1] under one Gaussian per dimension fitted to `train` (its mean
    and standard deviation at each of the C H W positions), discretised to the 8-bit grid as the decoder is (Eq. 13):
    the simplest density model, to place a bound between it and the uniform UNIFORM_BPD."""
    if train.shape[1:] != x0.shape[1:] or len(train) < 2:
        raise ValueError(f"train must hold at least 2 images shaped like x0's {tuple(x0.shape[1:])}, got "
                         f"{tuple(train.shape)}")
    mean = train.double().mean(0).expand(x0.shape)
    log_scale = train.double().std(0).clamp_min(1e-3).log().expand(x0.shape)     # a constant pixel: no log 0
    return -_mean_over_pixels(discretized_gaussian_log_likelihood(x0.double(), mean, log_scale)) / LOG2
