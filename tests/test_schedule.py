"""Beta schedules, q(x_t | x0), its posterior and Eq. 4 solved for x0 or eps, checked against diffusers and against
the maths done independently (iterating the one-step chain, Bayes' rule on a grid). What a network predicts, the
loss weights and Algorithm 1 are the objective's: tests/test_objective.py."""
import math

import numpy as np
import pytest
import torch

from ddpm_lib.schedule import NoiseSchedule, cosine_betas, linear_betas

diffusers = pytest.importorskip("diffusers")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- against diffusers -------------------------------------------------------------------------

def test_linear_betas_match_diffusers():
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    betas = linear_betas()
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    torch.testing.assert_close(betas.float(), ref.betas, rtol=1e-6, atol=0)


def test_cosine_betas_match_diffusers_squaredcos_cap_v2():
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    betas = cosine_betas()
    torch.testing.assert_close(betas.float(), ref.betas, rtol=1e-6, atol=0)
    assert betas[-1].item() == 0.999                                   # clipped at max_beta
    # Nichol & Dhariwal Eq. 17 before clipping: alpha_bar_t = f(t) / f(0)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    abar = torch.cumprod(1 - betas, 0)
    for t in (1, 100, 500, 900):
        assert abar[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)


@pytest.mark.parametrize("kind", ["linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_and_add_noise_match_diffusers(kind):
    schedule = NoiseSchedule.linear() if kind == "linear" else NoiseSchedule.cosine()
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind)
    torch.testing.assert_close(schedule.alphas_cumprod, ref.alphas_cumprod, rtol=2e-5, atol=1e-7)
    g = gen(1)
    x0 = torch.rand(8, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 10, 250, 500, 750, 998, 999])
    torch.testing.assert_close(schedule.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)


# ---- against the maths, done independently ----------------------------------------------------

@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(100, 1e-4, 0.2), NoiseSchedule.cosine(100)],
                         ids=["linear", "cosine"])
def test_q_sample_matches_iterated_one_step_chain(schedule):
    """Eq. 4 in closed form against x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z iterated t times."""
    n, g = 20_000, gen(2)
    x0 = torch.tensor([-1.0, 0.3, 1.0], dtype=torch.float64).expand(n, 3)
    checks = {0, schedule.num_timesteps // 10, schedule.num_timesteps // 2, schedule.num_timesteps - 1}
    x = x0.clone()
    for t in range(schedule.num_timesteps):
        beta = schedule.betas[t].double()
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
        if t not in checks:
            continue
        closed = schedule.q_sample(x0, torch.full((n,), t), torch.randn(x.shape, generator=g, dtype=torch.float64))
        abar = math.prod(1 - b for b in schedule.betas[: t + 1].double().tolist())
        mean, var = math.sqrt(abar) * x0[0], 1 - abar                     # the moments of Eq. 4
        for samples in (x, closed):
            se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))
            torch.testing.assert_close(samples.mean(0), mean, rtol=0, atol=5 * se_mean)
            torch.testing.assert_close(samples.var(0), torch.full((3,), var, dtype=torch.float64),
                                       rtol=0, atol=5 * se_var)


def _bayes_on_grid(schedule, x0, x_t, t):
    """Mean and variance of q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0), integrated numerically."""
    beta = schedule.betas.double()
    abar_prev = math.prod(1 - b for b in beta[:t].tolist())
    y = np.linspace(-8, 8, 800_001)                                   # wide enough for posteriors of variance ~1
    log_p = (-(x_t - np.sqrt(1 - beta[t].item()) * y) ** 2 / (2 * beta[t].item())
             - (y - np.sqrt(abar_prev) * x0) ** 2 / (2 * (1 - abar_prev)))
    p = np.exp(log_p - log_p.max())
    p /= np.trapezoid(p, y)
    mean = np.trapezoid(y * p, y)
    return mean, np.trapezoid((y - mean) ** 2 * p, y)


@pytest.mark.parametrize("t", [1, 5, 100, 600, 999])
def test_q_posterior_matches_bayes_rule(t):
    schedule = NoiseSchedule.linear()
    x0 = torch.tensor([-0.7, 0.1, 0.9], dtype=torch.float64)
    x_t = torch.tensor([-1.2, 0.4, 0.05], dtype=torch.float64)
    mean, var, log_var = schedule.q_posterior(x0, x_t, torch.full((3,), t))
    assert mean.dtype == var.dtype == log_var.dtype == torch.float64
    for i in range(3):
        ref_mean, ref_var = _bayes_on_grid(schedule, x0[i].item(), x_t[i].item(), t)
        assert mean[i].item() == pytest.approx(ref_mean, rel=1e-6, abs=1e-8)
        assert var[i].item() == pytest.approx(ref_var, rel=1e-5)
    torch.testing.assert_close(log_var, var.log())                       # not clipped for t >= 1


def test_posterior_log_variance_clipped_at_first_step():
    schedule = NoiseSchedule.linear()
    assert schedule.posterior_variance[0].item() == 0.0                   # q(x_0 | x_1, x0) is a point mass
    assert schedule.posterior_log_variance_clipped[0] == schedule.posterior_log_variance_clipped[1]


def test_predict_x0_inverts_q_sample_and_snr():
    schedule = NoiseSchedule.cosine(50)
    g = gen(3)
    x0 = torch.randn(50, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.arange(50)
    torch.testing.assert_close(schedule.predict_x0(schedule.q_sample(x0, t, eps), t, eps), x0, rtol=1e-9, atol=1e-9)
    abar = np.cumprod(1 - cosine_betas(50).numpy())
    torch.testing.assert_close(schedule.snr(t), torch.from_numpy(abar / (1 - abar)).float())
    assert schedule.snr(7).shape == ()


def test_eq_4_solved_for_eps_the_velocity_and_the_coefficients_objectives_read():
    """predict_eps inverts q_sample; velocity is Salimans & Ho's v; sqrt_alpha_bar, sqrt_one_minus_alpha_bar and
    snr are alpha_bar's functions (float64 from the betas), broadcast against x in its dtype."""
    schedule = NoiseSchedule.linear()
    g = gen(9)
    x0 = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    abar = torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))[t]
    x_t = schedule.q_sample(x0, t, eps)
    torch.testing.assert_close(schedule.predict_eps(x_t, t, x0), eps, rtol=0, atol=1e-9)  # / sqrt(1 - abar): 100
    a, s = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(schedule.velocity(x0, t, eps), a * eps - s * x0, rtol=0, atol=1e-14)
    assert schedule.sqrt_alpha_bar(t, x0).shape == schedule.sqrt_one_minus_alpha_bar(t, x0).shape == (6, 1, 1, 1)
    torch.testing.assert_close(schedule.sqrt_alpha_bar(t, x0), a, rtol=1e-14, atol=0)
    torch.testing.assert_close(schedule.sqrt_one_minus_alpha_bar(t, x0), s, rtol=1e-14, atol=0)
    assert schedule.sqrt_alpha_bar(t, x0.float()).dtype == torch.float32
    snr = schedule.snr(t, dtype=torch.float64)
    assert snr.dtype == torch.float64 and schedule.snr(t).dtype == torch.float32
    torch.testing.assert_close(snr, abar / (1 - abar), rtol=1e-12, atol=0)  # 1 - abar near 1e-4 at t = 0: float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_are_kept(dtype):
    schedule = NoiseSchedule.linear()
    x = torch.randn(4, 3, 2, 2, generator=gen(4), dtype=dtype)
    t = torch.tensor([0, 3, 500, 999])
    x_t = schedule.q_sample(x, t, x)
    outputs = [x_t, schedule.predict_x0(x_t, t, x), *schedule.q_posterior(x, x_t, t)]
    assert all(o.dtype == dtype and o.shape == x.shape for o in outputs)
    # float64 in -> float64 coefficients, not float32 ones cast up
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t.numpy()].reshape(-1, 1, 1, 1)
    expected = (np.sqrt(abar) + np.sqrt(1 - abar)) * x.double().numpy()
    np.testing.assert_allclose(x_t.double().numpy(), expected, rtol=1e-12 if dtype == torch.float64 else 1e-6)


def test_coefficients_stored_float32_and_state_dict_round_trip(tmp_path):
    schedule = NoiseSchedule.linear(300, 2e-4, 0.03)
    assert schedule.num_timesteps == 300 and schedule.device == torch.device("cpu")
    assert all(getattr(schedule, n).dtype == torch.float32 for n in ("betas", "alphas_cumprod", "posterior_variance"))
    torch.save(schedule.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert state["betas"].dtype == torch.float64
    again = NoiseSchedule.from_state_dict(state)
    assert torch.equal(again.posterior_mean_coef1, schedule.posterior_mean_coef1)
    assert again.kind == "linear" and dict(again.params) == {"num_timesteps": 300, "beta_min": 2e-4, "beta_max": 0.03}
    moved = schedule.to("cpu")
    assert moved is not schedule and torch.equal(moved.alphas_cumprod, schedule.alphas_cumprod)


def test_a_schedule_records_how_its_betas_were_made():
    cosine = NoiseSchedule.cosine(50, s=0.01)
    assert cosine.kind == "cosine" and dict(cosine.params) == {"num_timesteps": 50, "s": 0.01}
    assert torch.equal(cosine.betas, cosine_betas(50, 0.01).float())
    custom = NoiseSchedule(torch.linspace(0.3, 1e-3, 40, dtype=torch.float64))
    assert custom.kind == "custom" and dict(custom.params) == {}
    assert NoiseSchedule.from_state_dict(cosine.state_dict()).params == cosine.params
    assert cosine.to("cpu").kind == "cosine"
    with pytest.raises(TypeError):
        cosine.params["s"] = 0.5  # read-only: the betas would no longer match it
    with pytest.raises(ValueError, match="kind must be one of"):
        NoiseSchedule(linear_betas(10), kind="sigmoid")
    with pytest.raises(ValueError, match="'betas', 'kind' and 'params'"):
        NoiseSchedule.from_state_dict({"betas": linear_betas(10)})


@pytest.mark.parametrize("T", [1000, 100, 21])
def test_paper_schedule_scales_its_betas_for_a_shorter_T(T):
    schedule = NoiseSchedule.paper(T)
    assert schedule.kind == "linear" and schedule.num_timesteps == T
    assert schedule.params["beta_min"] == pytest.approx(1e-4 * 1000 / T)
    assert schedule.params["beta_max"] == pytest.approx(0.02 * 1000 / T)
    assert schedule.alphas_cumprod[-1] < 1e-4  # the forward chain still ends near N(0, I)
    assert torch.equal(NoiseSchedule.paper().betas, NoiseSchedule.linear(1000, 1e-4, 0.02).betas)
    with pytest.raises(ValueError, match="expected T > 20"):
        NoiseSchedule.paper(20)


@pytest.mark.parametrize("T", [1, 2, 5, 100, 1000])
@pytest.mark.parametrize("kind", ["linear", "squaredcos_cap_v2"])
def test_every_coefficient_for_any_T(T, kind):
    """Short schedules too (T = 1 has no t - 1 step, T = 2 has one): betas and alpha_bar against diffusers,
    and every coefficient against Eqs. 4-7 evaluated in plain Python floats."""
    betas = linear_betas(T) if kind == "linear" else cosine_betas(T)
    schedule = NoiseSchedule(betas)
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=kind)
    torch.testing.assert_close(betas.float(), ref.betas, rtol=1e-6, atol=0)
    torch.testing.assert_close(schedule.alphas_cumprod, ref.alphas_cumprod, rtol=2e-5, atol=1e-7)
    b = betas.tolist()
    abar = [math.prod(1 - x for x in b[: t + 1]) for t in range(T)]
    abar_prev = [1.0] + abar[:-1]
    var = [b[t] * (1 - abar_prev[t]) / (1 - abar[t]) for t in range(T)]          # Eq. 7, beta_tilde
    expected = {
        "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev, "posterior_variance": var,
        "posterior_log_variance_clipped": [math.log(var[1] if T > 1 else b[0])] + [math.log(v) for v in var[1:]],
        "posterior_mean_coef1": [b[t] * math.sqrt(abar_prev[t]) / (1 - abar[t]) for t in range(T)],
        "posterior_mean_coef2": [(1 - abar_prev[t]) * math.sqrt(1 - b[t]) / (1 - abar[t]) for t in range(T)],
        "sqrt_recipm1_alphas_cumprod": [math.sqrt(1 / a - 1) for a in abar],
    }
    for name, values in expected.items():
        torch.testing.assert_close(schedule._f64[name], torch.tensor(values, dtype=torch.float64), rtol=1e-9, atol=0,
                                   msg=name)
    x0 = torch.tensor([-0.7, 0.1, 0.9], dtype=torch.float64)
    x_t = torch.tensor([-1.2, 0.4, 0.05], dtype=torch.float64)
    mean, variance, _ = schedule.q_posterior(x0, x_t, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean, x0, rtol=0, atol=1e-12)                      # t = 1: x_0 is x0 itself
    assert variance.abs().max().item() == 0
    if T > 1:                                                                     # the last step, by Bayes' rule
        mean, variance, _ = schedule.q_posterior(x0, x_t, torch.full((3,), T - 1))
        for i in range(3):
            ref_mean, ref_var = _bayes_on_grid(schedule, x0[i].item(), x_t[i].item(), T - 1)
            assert mean[i].item() == pytest.approx(ref_mean, rel=1e-5, abs=1e-7)
            assert variance[i].item() == pytest.approx(ref_var, rel=1e-4)


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: linear_betas(0), "num_timesteps"),
    (lambda: linear_betas(2.5), "num_timesteps"),
    (lambda: cosine_betas(-1), "num_timesteps"),
    (lambda: linear_betas(10, 0.02, 0.0001), "beta_min must be < beta_max"),
    (lambda: linear_betas(10, 0.01, 0.01), "beta_min must be < beta_max"),
    (lambda: linear_betas(10, 0.0, 0.5), r"\(0, 1\)"),
    (lambda: linear_betas(10, 0.1, 1.5), r"\(0, 1\)"),
    (lambda: cosine_betas(10, max_beta=1.0), "max_beta"),
    (lambda: cosine_betas(10, s=-0.1), "s must be"),
    (lambda: NoiseSchedule([0.1, 0.0, 0.2]), r"open interval \(0, 1\)"),
    (lambda: NoiseSchedule([0.1, 1.0]), r"open interval \(0, 1\)"),
    (lambda: NoiseSchedule(torch.full((2, 3), 0.1)), "1-D"),
    (lambda: NoiseSchedule([]), "1-D"),
    (lambda: NoiseSchedule.from_state_dict({}), "betas"),
    # a stored schedule whose parameters are not its kind's (a version-5 "steps" for T) is refused by name
    (lambda: NoiseSchedule.from_state_dict({"betas": [0.1, 0.2], "kind": "cosine", "params": {"steps": 2, "s": 0.008}}),
     r"params of a cosine schedule must be \('num_timesteps', 's'\), got \('steps', 's'\)"),
    (lambda: NoiseSchedule([0.1], "custom", {"num_timesteps": 1}), r"params of a custom schedule must be \(\)"),
    (lambda: NoiseSchedule.linear(10).q_sample(torch.zeros(2, 3), torch.tensor([0.5, 1.0]), torch.zeros(2, 3)),
     "integer timesteps"),
    (lambda: NoiseSchedule.linear(10).q_sample(torch.zeros(2, 3), 0, torch.zeros(2, 4)), "noise must have"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
