"""Samplers against diffusers' schedulers step for step, and against Gaussian data, whose ideal noise
predictor and probability-flow ODE solution are known in closed form."""
import math

import pytest
import torch

from ddpm_lib.samplers import (ddim_sample, ddim_timesteps, ddpm_sample, dpm_solver_sample,
                               dpm_solver_timesteps)
from ddpm_lib.schedule import NoiseSchedule, cosine_betas, linear_betas

diffusers = pytest.importorskip("diffusers")
# diffusers' DPMSolverMultistepScheduler.set_timesteps trips a NumPy 2 deprecation inside diffusers itself
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

MU, S = 0.2, 0.25                      # Gaussian data x0 ~ N(MU, S^2), per element
SHAPE = (2, 3, 4, 4)
GAUSS_SHAPE = (10, 1, 20, 20)          # 4,000 draws of the 1-D Gaussian; a small batch keeps per-step indexing cheap


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def fake_model(x_t, t):
    """A fixed nonlinear 'network': eps depends on x_t and t; its x0 predictions leave [-1, 1] at large t."""
    return torch.tanh(1.3 * x_t) * 0.9 + 0.1 * torch.cos(t.to(x_t.dtype) / 37.0).view(-1, 1, 1, 1)


class IdealEps:
    """E[eps | x_t] for x0 ~ N(MU, S^2): sqrt(1 - abar) (x_t - sqrt(abar) MU) / (abar S^2 + 1 - abar)."""

    def __init__(self, schedule):
        self.abar = torch.cumprod(1 - schedule.state_dict()["betas"], 0)      # float64, from the betas alone

    def __call__(self, x_t, t):
        abar = self.abar.to(x_t.device)[t].to(x_t.dtype).view(-1, 1, 1, 1)
        return (1 - abar).sqrt() * (x_t - abar.sqrt() * MU) / (abar * S ** 2 + 1 - abar)


def flow_solution(schedule, x_T):
    """The probability-flow ODE from t = T-1 to t = 0 keeps the standardised value z of a 1-D Gaussian
    (the flow is monotone), followed by the final x0 = E[x0 | x_0] every sampler ends with."""
    abar = torch.cumprod(1 - schedule.state_dict()["betas"], 0)
    z = (x_T - abar[-1].sqrt() * MU) / (abar[-1] * S ** 2 + 1 - abar[-1]).sqrt()
    x_at_0 = abar[0].sqrt() * MU + (abar[0] * S ** 2 + 1 - abar[0]).sqrt() * z
    return MU + abar[0].sqrt() * S ** 2 / (abar[0] * S ** 2 + 1 - abar[0]) * (x_at_0 - abar[0].sqrt() * MU)


# ---- against diffusers, full sampling loops ---------------------------------------------------

@pytest.mark.parametrize("betas, variance, variance_type, atol", [
    (linear_betas(), "beta", "fixed_large", 1e-4),
    (linear_betas(), "posterior", "fixed_small", 1e-4),
    (cosine_betas(), "beta", "fixed_large", 1e-3),         # diffusers' float32 cumprod drifts more here
], ids=["linear-beta", "linear-posterior", "cosine-beta"])
def test_ddpm_matches_diffusers_ddpm_scheduler(betas, variance, variance_type, atol):
    """Algorithm 2 with sigma^2 = beta ("fixed_large") or beta_tilde ("fixed_small"), clipping x0."""
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(),
                                  variance_type=variance_type, clip_sample=True)
    g = gen(1)
    x = torch.randn(SHAPE, generator=g)                  # same draws, same order: x_T, then one per t > 0
    for t in ref.timesteps:
        x = ref.step(fake_model(x, t.repeat(SHAPE[0])), t, x, generator=g).prev_sample
    ours = ddpm_sample(fake_model, NoiseSchedule(betas), SHAPE, variance, generator=gen(1))
    torch.testing.assert_close(ours, x, rtol=0, atol=atol)
    assert ours.abs().max() <= 1


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers_ddim_scheduler(eta):
    """28 steps on T = 1000 are 999, 962, ..., 0 (gap 37); diffusers' step() with 27 inference steps
    steps back by 1000 // 27 = 37, so both walk the same timesteps."""
    betas = linear_betas()
    assert ddim_timesteps(1000, 28) == list(range(999, -1, -37))
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(), clip_sample=True)
    ref.set_timesteps(27)
    g = gen(2)
    x = torch.randn(SHAPE, generator=g)
    for t in ddim_timesteps(1000, 28):
        out = fake_model(x, torch.full((SHAPE[0],), t))
        x = ref.step(out, t, x, eta=eta, use_clipped_model_output=True, generator=g).prev_sample
    ours = ddim_sample(fake_model, NoiseSchedule(betas), SHAPE, steps=28, eta=eta, generator=gen(2))
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpm_solver_matches_diffusers_multistep_scheduler(steps):
    """DPM-Solver++(2M) with log-SNR spacing: the same timesteps as diffusers' use_lu_lambdas, and the same
    result once diffusers is given the noise levels of those (rounded) timesteps, which the model sees."""
    schedule = NoiseSchedule.linear()
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=linear_betas().numpy(), algorithm_type="dpmsolver++",
        solver_order=2, use_lu_lambdas=True, lower_order_final=False, final_sigmas_type="zero")
    ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == dpm_solver_timesteps(schedule, steps)
    abar = schedule.alphas_cumprod.double()[ref.timesteps]
    ref.sigmas[:-1] = ((1 - abar) / abar).sqrt().float()
    x_T = torch.randn(SHAPE, generator=gen(3))
    x = x_T
    for t in ref.timesteps:
        x = ref.step(fake_model(x, t.repeat(SHAPE[0])), t, x).prev_sample
    ours = dpm_solver_sample(fake_model, schedule, SHAPE, steps, x_T=x_T, clip_denoised=False)
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


# ---- Gaussian data: the samplers return the data's distribution --------------------------------

def _check_moments(x, tol_mean, tol_sd):
    n = x.numel()
    assert abs(x.mean().item() - MU) < tol_mean + 4 * S / math.sqrt(n)
    assert abs(x.std().item() - S) < tol_sd + 4 * S / math.sqrt(2 * n)


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_reproduces_gaussian_data(variance):
    schedule = NoiseSchedule.linear()
    x = ddpm_sample(IdealEps(schedule), schedule, GAUSS_SHAPE, variance, generator=gen(4))
    _check_moments(x, 0.0, 0.005)         # measured with 20,000 samples: sd 0.251 (beta), 0.247 (posterior)


def test_ddim_reproduces_gaussian_data():
    schedule = NoiseSchedule.linear()
    x = ddim_sample(IdealEps(schedule), schedule, GAUSS_SHAPE, steps=50, generator=gen(5))
    # DDIM's first-order steps shrink the spread even with a perfect model: sd 0.226 at 50 steps
    # (measured, 20,000 samples), as DESIGN.md reports; the mean is unbiased.
    _check_moments(x, 0.0, 0.03)
    x = ddim_sample(IdealEps(schedule), schedule, GAUSS_SHAPE, steps=500, generator=gen(5))
    _check_moments(x, 0.0, 0.005)


def test_dpm_solver_beats_ddim_at_10_steps():
    schedule = NoiseSchedule.linear()
    model = IdealEps(schedule)
    dpm = dpm_solver_sample(model, schedule, GAUSS_SHAPE, steps=10, generator=gen(6))
    ddim = ddim_sample(model, schedule, GAUSS_SHAPE, steps=10, generator=gen(6))
    _check_moments(dpm, 0.0, 0.01)                                      # measured sd 0.257
    assert abs(dpm.std().item() - S) < abs(ddim.std().item() - S) / 4   # DDIM: sd 0.138
    assert abs(dpm.mean().item() - MU) <= abs(ddim.mean().item() - MU) + 0.002


def test_deterministic_samplers_converge_to_probability_flow_solution():
    """Per sample, from the same x_T: DPM-Solver++(2M) and DDIM (eta = 0) approach the closed-form
    solution of the probability-flow ODE, DPM-Solver++ much faster (second vs first order)."""
    schedule = NoiseSchedule.linear()
    model = IdealEps(schedule)
    x_T = torch.randn(5, 1, 20, 20, generator=gen(7), dtype=torch.float64)
    exact = flow_solution(schedule, x_T)
    err = {}
    for steps in (10, 50, 200):
        x = dpm_solver_sample(model, schedule, x_T.shape, steps, x_T=x_T, clip_denoised=False)
        err[steps] = (x - exact).abs().max().item()
    assert err[10] > err[50] > err[200] and err[200] < 2e-3             # measured 0.026, 0.0026, 0.0005
    ddim = ddim_sample(model, schedule, x_T.shape, 1000, x_T=x_T, clip_denoised=False)
    assert (ddim - exact).abs().max().item() < 1e-2                      # measured 0.0055
    dpm = dpm_solver_sample(model, schedule, x_T.shape, 200, x_T=x_T, clip_denoised=False)
    torch.testing.assert_close(dpm, ddim, rtol=0, atol=1e-2)


# ---- reproducibility, trajectories, dtypes, devices ------------------------------------------

SAMPLERS = {
    "ddpm": lambda **kw: ddpm_sample(fake_model, NoiseSchedule.linear(20), SHAPE, **kw),
    "ddim": lambda **kw: ddim_sample(fake_model, NoiseSchedule.linear(20), SHAPE, steps=7, eta=0.5, **kw),
    "dpm": lambda **kw: dpm_solver_sample(fake_model, NoiseSchedule.linear(20), SHAPE, steps=7, **kw),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_seeded_runs_repeat_and_trajectory_shapes(name):
    sample = SAMPLERS[name]
    a = sample(generator=gen(8))
    b, traj = sample(generator=gen(8), return_trajectory=True, progress=True)
    assert torch.equal(a, b)
    assert not torch.equal(a, sample(generator=gen(9)))
    S = {"ddpm": 20, "ddim": 7, "dpm": len(dpm_solver_timesteps(NoiseSchedule.linear(20), 7))}[name]
    assert traj["t"][0] == 19 and traj["t"][-1] == 0 and len(traj["t"]) == S
    assert traj["x_t"].shape == (S + 1, *SHAPE) and traj["x0_pred"].shape == (S, *SHAPE)
    assert traj["x_t"].device.type == "cpu"
    assert torch.equal(traj["x_t"][0], torch.randn(SHAPE, generator=gen(8)))   # x_T is the first draw
    assert torch.equal(traj["x_t"][-1], b)
    assert traj["x0_pred"].abs().max() <= 1 and b.abs().max() <= 1           # clip_denoised=True


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_x_T(name, dtype):
    x_T = torch.randn(SHAPE, generator=gen(10), dtype=dtype)
    out = SAMPLERS[name](x_T=x_T, generator=gen(11))
    assert out.dtype == dtype
    assert SAMPLERS[name](generator=gen(11)).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", SAMPLERS)
def test_cuda_agrees_with_cpu(name):
    cpu = SAMPLERS[name](generator=gen(12))
    cuda = SAMPLERS[name](generator=gen(12), device="cuda")          # a CPU generator: the same draws
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_timesteps():
    assert ddim_timesteps(1000, 1) == [999]
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert ddim_timesteps(10, 4) == [9, 6, 3, 0]
    schedule = NoiseSchedule.linear()
    ts = dpm_solver_timesteps(schedule, 10)
    assert ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    lam = [0.5 * math.log(schedule.snr(t).item()) for t in ts]
    gaps = [a - b for a, b in zip(lam[1:], lam)]
    assert max(gaps) - min(gaps) < 0.1 * (sum(gaps) / len(gaps))       # evenly spaced in log-SNR
    assert len(dpm_solver_timesteps(schedule, 1000)) <= 1000


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda s: ddpm_sample(fake_model, s, SHAPE, variance="fixed"), "variance must be 'beta' or 'posterior'"),
    (lambda s: ddpm_sample(fake_model, s, (2, 3, 4)), "shape must be 4-D"),
    (lambda s: ddim_sample(fake_model, s, (2, 3, 4, 0), steps=5), "shape must be 4-D"),
    (lambda s: ddim_sample(fake_model, s, SHAPE, steps=0), r"steps must be an integer in \[1, T=20\]"),
    (lambda s: ddim_sample(fake_model, s, SHAPE, steps=21), r"steps must be an integer in \[1, T=20\]"),
    (lambda s: ddim_sample(fake_model, s, SHAPE, eta=-0.1), "eta must be >= 0"),
    (lambda s: dpm_solver_sample(fake_model, s, SHAPE, steps=0), r"steps must be an integer in \[1, T=20\]"),
    (lambda s: dpm_solver_sample(fake_model, s, SHAPE, steps=21), r"steps must be an integer in \[1, T=20\]"),
    (lambda s: dpm_solver_sample(fake_model, s, SHAPE, x_T=torch.zeros(1, 3, 4, 4)), "x_T must have shape"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call(NoiseSchedule.linear(20))
