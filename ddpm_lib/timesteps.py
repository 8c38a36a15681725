"""The timesteps a sampler visits: DDIM's evenly spaced ones, DPM-Solver's spaced uniformly in log-SNR.

Both lists run from T-1 (where x_T ~ N(0, I) starts) down to 0 (one step: T-1 alone), distinct and descending,
one entry per model evaluation: `sample_steps` asked for are `sample_steps` evaluations made.
"""
import torch

from .schedule import NoiseSchedule
from .utils import check_int

DDIM_STEPS = 50        # DDIM's default number of model evaluations
DPM_SOLVER_STEPS = 20  # DPM-Solver++(2M)'s default number of model evaluations
EULER_STEPS = 50       # Euler's (on the probability-flow ODE) default number of model evaluations
HEUN_STEPS = 35        # Heun's default number of model evaluations: EDM's for CIFAR-10 (Karras et al. 2022, 18 steps)


def check_sample_steps(sample_steps, T: int) -> int:
    """sample_steps itself when it is a number of model evaluations a sampler can make on T timesteps: [1, T]."""
    return check_int(sample_steps, "sample_steps", 1, T, f"T={T}")


def ddim_timesteps(T: int, sample_steps: int) -> list:
    """`sample_steps` timesteps evenly spaced from T-1 down to 0, both included (diffusers' "linspace" spacing).

    Unlike "leading" spacing (0, T//sample_steps, ..., short of T-1 when sample_steps does not divide T),
    the first step always starts where x_T ~ N(0, I) is defined and the last one reaches t = 0.
    Rounded half to even, as numpy.linspace(...).round() in diffusers; one step is [T-1].
    """
    check_sample_steps(sample_steps, T)
    if sample_steps == 1:
        return [T - 1]
    gap = (T - 1) / (sample_steps - 1)
    return [round(i * gap) for i in range(sample_steps - 1, -1, -1)]


def _increasing_integers(targets: list, high: int) -> list:
    """The strictly increasing integers n_0 < ... < n_{k-1} in [0, high] nearest (least squares) to ascending targets.

    n is strictly increasing exactly when m_i = n_i - i is non-decreasing, so m is the isotonic regression of
    targets_i - i (pool adjacent violators), clipped to [0, high - k + 1] and rounded. Targets 1 or more apart
    are never pooled: there n_i = round(target_i), and where rounding would collide the colliding run is spread
    over consecutive integers centred on its targets.
    """
    blocks = []                                                       # [sum, count] of pooled m values
    for i, u in enumerate(targets):
        blocks.append([u - i, 1])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    m = [min(max(total / count, 0.0), high - len(targets) + 1) for total, count in blocks for _ in range(count)]
    return [round(m_i) + i for i, m_i in enumerate(m)]


def dpm_solver_timesteps(schedule: NoiseSchedule, sample_steps: int) -> list:
    """`sample_steps` distinct integer timesteps from T-1 down to 0, spaced as uniformly in log-SNR as integers allow.

    Targets evenly spaced in lambda = log(alpha_t / sigma_t) are mapped to t by linear interpolation and
    rounded, as diffusers' `use_lu_lambdas` does. Where lambda changes fast (near t = 0, and near T-1 on
    cosine betas clipped at 0.999) several targets round to the same integer; diffusers then repeats a
    timestep, here the colliding ones move to the nearest free integers (`_increasing_integers`), so
    there are always exactly `sample_steps` model evaluations.
    """
    T = schedule.num_timesteps
    check_sample_steps(sample_steps, T)
    if T == 1:
        return [0]
    abar = schedule.alphas_cumprod.double().cpu()                    # float32 values, as diffusers has them
    log_sigma = 0.5 * ((1 - abar) / abar).log()                      # log(sigma_t / alpha_t) = -lambda_t
    target = torch.linspace(log_sigma[-1].item(), log_sigma[0].item(), sample_steps,  # -lambda
                            dtype=torch.float64).flip(0)
    hi = torch.searchsorted(log_sigma, target).clamp(1, T - 1)        # log_sigma increases with t
    lo = hi - 1
    w = ((target - log_sigma[lo]) / (log_sigma[hi] - log_sigma[lo])).clamp(0, 1)
    return _increasing_integers((lo + w).tolist(), T - 1)[::-1]
