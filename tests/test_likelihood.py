"""The variational bound in bits/dim (ddpm_lib.likelihood) against closed forms, torch.distributions, scipy and the
official code's formulas; and formulas that are wrong on purpose (no log-scale, t off by one) fail."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ddpm_lib.likelihood import (approx_standard_normal_cdf, discretized_gaussian_log_likelihood, gaussian_fit_bpd,
                                 kl_strata, normal_kl, prior_bpd, terms_bpd, variational_bound)
from ddpm_lib.objective import Denoiser, Objective
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.tolerance import assert_close

F64 = torch.float64
MU, S = 0.0, 0.1  # Gaussian data x0 ~ N(MU, S^2) per pixel: E[x0 | x_t] is exact (and stays inside [-1, 1])


def betas_and_alpha_bar(schedule):
    """beta_t and alpha_bar_t in float64, from the schedule's own float64 betas (its stored coefficients are
    float32: near t = 0, 1 - alpha_bar keeps few of their digits)."""
    betas = schedule.state_dict()["betas"]
    return betas, torch.cumprod(1 - betas, 0)


def ideal_x0(schedule):
    """The ideal x0-predictor of Gaussian data: E[x0 | x_t] = MU + S^2 a (x_t - a MU) / (a^2 S^2 + 1 - a^2)."""
    _, alpha_bar = betas_and_alpha_bar(schedule)

    def net(x_t, t):
        a = alpha_bar[t].sqrt().reshape(-1, 1, 1, 1)
        return MU + S ** 2 * a * (x_t - a * MU) / (a ** 2 * S ** 2 + 1 - a ** 2)
    return Denoiser(net, schedule, Objective(prediction="x0"))


def expected_kl_nats(schedule, t: int) -> float:
    """E[L_{t-1}] per dimension in nats for the ideal predictor, from Eqs. 6-7 in closed form: both Gaussians have
    the posterior's mean structure, so only the x0 error survives, E[(x0 - E[x0|x_t])^2] = Var(x0 | x_t)."""
    betas, alpha_bar = betas_and_alpha_bar(schedule)
    abar, abar_prev, beta = alpha_bar[t].item(), alpha_bar[t - 1].item(), betas[t].item()
    coef1 = beta * math.sqrt(abar_prev) / (1 - abar)                                 # Eq. 7, x0's coefficient
    var_q = beta * (1 - abar_prev) / (1 - abar)                                      # beta_tilde_t
    var_p = beta                                                                     # sigma_t^2 = beta_t (t >= 1)
    var_x0 = S ** 2 * (1 - abar) / (abar * S ** 2 + 1 - abar)                        # Var(x0 | x_t)
    return 0.5 * (-1 + math.log(var_p / var_q) + var_q / var_p + coef1 ** 2 * var_x0 / var_p)


def test_normal_kl_is_torch_distributions_kl():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(1000, generator=g, dtype=F64), torch.randn(1000, generator=g, dtype=F64)
    lv1, lv2 = torch.randn(1000, generator=g, dtype=F64), torch.randn(1000, generator=g, dtype=F64)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                                 torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    assert_close(normal_kl(m1, lv1, m2, lv2), expected, reduction=8, why="a handful of terms, exp and log")


def test_the_cdf_approximation_is_within_its_known_error_of_scipy():
    x = torch.linspace(-6, 6, 10001, dtype=F64)
    err = (approx_standard_normal_cdf(x) - torch.from_numpy(norm.cdf(x.numpy()))).abs().max().item()
    assert err < 2e-4  # the tanh approximation's largest error is 1.8e-4 (an analytic property, not a rounding)


def official_discretized_log_likelihood(x, means, log_scales):
    """diffusion_tf's discretized_gaussian_log_likelihood, transcribed in numpy (float64) from the official code
    as improved-diffusion keeps it (guided_diffusion/losses.py)."""
    def cdf(v):
        return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * np.power(v, 3))))
    centered_x = x - means
    inv_stdv = np.exp(-log_scales)
    cdf_plus = cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = np.log(np.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = np.log(np.maximum(1.0 - cdf_min, 1e-12))
    cdf_delta = cdf_plus - cdf_min
    return np.where(x < -0.999, log_cdf_plus,
                    np.where(x > 0.999, log_one_minus_cdf_min, np.log(np.maximum(cdf_delta, 1e-12))))


def fixed_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4096,), generator=g).double() / 127.5 - 1                # the 8-bit grid
    x[:8] = -1.0
    x[8:16] = 1.0
    means = (x + 0.02 * torch.randn(4096, generator=g, dtype=F64)).clamp(-1.2, 1.2)
    log_scales = torch.empty(4096, dtype=F64).uniform_(math.log(1e-3), math.log(0.1), generator=g)
    return x, means, log_scales


def test_discretized_log_likelihood_is_the_official_codes():
    """Element by element: the same float64 operations (numpy's and torch's tanh may differ by an ulp or two), so
    the difference is a few roundings of the CDFs, divided by the bin's mass where log takes their difference
    (cancellation when both CDFs are near 1)."""
    x, means, log_scales = fixed_inputs()
    expected = official_discretized_log_likelihood(x.numpy(), means.numpy(), log_scales.numpy())
    ours = discretized_gaussian_log_likelihood(x, means, log_scales).numpy()
    cdf_plus = approx_standard_normal_cdf(torch.exp(-log_scales) * (x - means + 1 / 255)).numpy()
    cdf_min = approx_standard_normal_cdf(torch.exp(-log_scales) * (x - means - 1 / 255)).numpy()
    mass = np.maximum(np.where(x.numpy() < -0.999, cdf_plus, np.where(x.numpy() > 0.999, 1 - cdf_min,
                                                                       cdf_plus - cdf_min)), 1e-12)
    allowed = 16 * np.finfo(np.float64).eps * (np.abs(expected) + 1 / mass)
    assert np.all(np.abs(ours - expected) <= allowed)
    shifted = official_discretized_log_likelihood(x.numpy(), means.numpy() + 1 / 255, log_scales.numpy())
    assert not np.all(np.abs(ours - shifted) <= allowed)  # a half-bin shift of the mean is caught


def test_discretized_log_likelihood_is_the_bin_mass_within_the_cdf_approximation():
    """The exact mass of N(mean, scale^2) on each bin (scipy), the edge bins with their tails; where the mass is
    above 1e-3 the tanh CDF (error <= 1.8e-4 at each end) moves log-mass by at most 3.6e-4 / mass."""
    x, means, log_scales = fixed_inputs()
    xs, ms, sc = x.numpy(), means.numpy(), np.exp(log_scales.numpy())
    upper = np.where(xs > 0.999, 1.0, norm.cdf((xs - ms + 1 / 255) / sc))
    lower = np.where(xs < -0.999, 0.0, norm.cdf((xs - ms - 1 / 255) / sc))
    mass = upper - lower
    ok = mass > 1e-3
    ours = discretized_gaussian_log_likelihood(x, means, log_scales).numpy()
    assert ok.sum() > 1000
    assert np.all(np.abs(ours[ok] - np.log(mass[ok])) <= 3.6e-4 / mass[ok] * 1.01)
    no_log_scale = discretized_gaussian_log_likelihood(x, means, torch.zeros_like(log_scales)).numpy()  # wrong
    assert not np.all(np.abs(no_log_scale[ok] - np.log(mass[ok])) <= 3.6e-4 / mass[ok] * 1.01)


def test_the_per_pixel_gaussian_fit_is_scipys_bin_masses_of_the_fitted_normals():
    """Each dimension's mean and sample standard deviation (numpy, ddof=1) over the training images, each test value's
    bin mass under that normal (scipy, edge bins with their tails), -mean log2 per image; within the tanh CDF's
    error (3.6e-4 / mass per element). Fitting the variance as the scale, or the scale of all pixels at once, fails."""
    g = torch.Generator().manual_seed(0)
    centre = torch.rand(3, 4, 4, generator=g) * 1.6 - 0.8                  # each dimension its own mean
    spread = 0.01 + 0.03 * torch.rand(3, 4, 4, generator=g)                  # and its own spread

    def draw(n):
        x = (centre + spread * torch.randn(n, 3, 4, 4, generator=g).clamp(-2.5, 2.5)).clamp(-1, 1)  # no far tails
        return torch.round((x + 1) * 127.5) / 127.5 - 1                      # on the 8-bit grid
    train, x0 = draw(400), draw(12)
    tr, xs = train.double().numpy(), x0.double().numpy()
    mean, scale = tr.mean(0), tr.std(0, ddof=1)

    def bpd(scale):
        upper = np.where(xs > 0.999, 1.0, norm.cdf((xs - mean + 1 / 255) / scale))
        lower = np.where(xs < -0.999, 0.0, norm.cdf((xs - mean - 1 / 255) / scale))
        mass = upper - lower
        return -np.log(mass).reshape(len(xs), -1).mean(1) / math.log(2), mass
    oracle, mass = bpd(scale)
    bound = (3.6e-4 / mass).reshape(len(xs), -1).mean(1) / math.log(2) * 1.01
    ours = gaussian_fit_bpd(train, x0).numpy()
    assert mass.min() > 1e-3 and np.all(np.abs(ours - oracle) <= bound)
    with np.errstate(divide="ignore"):                                       # the variance leaves masses of 0
        for wrong in (scale ** 2, np.full_like(scale, tr.std(ddof=1))):      # the variance; one scale for all
            assert not np.all(np.abs(ours - bpd(wrong)[0]) <= bound)


def test_the_prior_term_is_the_kl_of_q_x_T_to_the_standard_normal():
    schedule = NoiseSchedule.linear(100, 1e-3, 0.1)
    x0 = torch.rand((3, 3, 4, 4), generator=torch.Generator().manual_seed(2), dtype=F64) * 2 - 1
    abar = betas_and_alpha_bar(schedule)[1][-1]
    q = torch.distributions.Normal(abar.sqrt() * x0, (1 - abar).sqrt())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean((1, 2, 3)) / math.log(2)
    assert_close(prior_bpd(schedule, x0), expected, reduction=48, why="a mean over 48 pixels")


@pytest.mark.parametrize("t", [1, 5, 17, 49])
def test_each_kl_term_of_the_ideal_predictor_is_its_closed_form_given_x0_and_x_t(t):
    """One (x0, eps): L_{t-1} in bits/dim against Eqs. 6-7 and the exact E[x0 | x_t], written out here."""
    schedule = NoiseSchedule.linear(50, 1e-3, 0.2)
    g = torch.Generator().manual_seed(t)
    x0 = MU + S * torch.randn((2, 3, 8, 8), generator=g, dtype=F64)
    eps = torch.randn(x0.shape, generator=g, dtype=F64)
    tt = torch.full((2,), t)
    betas, alpha_bar = betas_and_alpha_bar(schedule)
    abar, abar_prev, beta = alpha_bar[t], alpha_bar[t - 1], betas[t]
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps                                  # Eq. 4
    x0_hat = MU + S ** 2 * abar.sqrt() * (x_t - abar.sqrt() * MU) / (abar * S ** 2 + 1 - abar)
    coef1 = beta * abar_prev.sqrt() / (1 - abar)
    var_q, var_p = beta * (1 - abar_prev) / (1 - abar), beta
    kl = 0.5 * (-1 + torch.log(var_p / var_q) + var_q / var_p + coef1 ** 2 * (x0 - x0_hat) ** 2 / var_p)
    expected = kl.mean((1, 2, 3)) / math.log(2)
    assert_close(terms_bpd(ideal_x0(schedule), x0, tt, eps), expected, reduction=192, why="a mean over 192 pixels")


def test_the_expected_kl_terms_of_the_ideal_predictor_are_their_closed_forms_and_an_off_by_one_t_is_not():
    """Monte Carlo over 4,096 pixels at each t: the mean of L_{t-1} is within 5 standard errors of its closed-form
    expectation; the closed form of the neighbouring t is not (the terms change fast at small t)."""
    schedule = NoiseSchedule.linear(50, 1e-3, 0.2)
    denoiser = ideal_x0(schedule)
    g = torch.Generator().manual_seed(3)
    for t in (1, 2, 10, 30):
        x0 = MU + S * torch.randn((4096, 1, 1, 1), generator=g, dtype=F64)
        eps = torch.randn(x0.shape, generator=g, dtype=F64)
        per_pixel = terms_bpd(denoiser, x0, torch.full((4096,), t), eps) * math.log(2)       # nats
        mean, se = per_pixel.mean().item(), per_pixel.std().item() / math.sqrt(4096)
        assert abs(mean - expected_kl_nats(schedule, t)) < 5 * se + 1e-12, t
        assert abs(mean - expected_kl_nats(schedule, t + 1)) > 5 * se, t


def test_the_bound_sums_every_term_exactly_and_its_strata_estimate_it_without_bias():
    schedule = NoiseSchedule.linear(40, 1e-3, 0.2)
    denoiser = ideal_x0(schedule)
    g = torch.Generator().manual_seed(4)
    x0 = (MU + S * torch.randn((3, 1, 4, 4), generator=g, dtype=F64)).clamp(-1, 1)
    exact = variational_bound(denoiser, x0, generator=torch.Generator().manual_seed(5))
    assert exact["n_t"] == 39
    assert torch.equal(exact["total"], exact["prior"] + exact["decoder"] + exact["kl"])
    expected_kl = sum(expected_kl_nats(schedule, t) for t in range(1, 40)) / math.log(2)
    strata = [variational_bound(denoiser, x0, n_t=6, generator=torch.Generator().manual_seed(100 + i))["kl"].mean()
              for i in range(200)]
    estimate = torch.stack(strata)
    se = estimate.std().item() / math.sqrt(len(strata))
    # the exact sum over t for these 3 images, and the stratified estimate's mean over 200 draws, both estimate
    # the closed-form expectation; the stratified draws only within their own Monte Carlo error
    assert abs(estimate.mean().item() - expected_kl) < 5 * se + 0.05 * expected_kl
    assert abs(exact["kl"].mean().item() - expected_kl) < 0.25 * expected_kl


def test_strata_cover_every_kl_timestep_once():
    for T, n_t in ((1000, 20), (1000, 999), (10, 3), (2, None), (1000, None)):
        strata = kl_strata(T, n_t)
        covered = [t for lo, hi in strata for t in range(lo, hi)]
        assert covered == list(range(1, T)), (T, n_t)
        assert n_t is None or len(strata) <= n_t


def test_the_decoder_term_is_the_official_decoder_at_t_0():
    schedule = NoiseSchedule.linear(50, 1e-3, 0.2)
    denoiser = ideal_x0(schedule)
    x0 = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(6)).double() / 127.5 - 1
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    t = torch.zeros(2, dtype=torch.long)
    x_1 = schedule.q_sample(x0, t, eps)
    mean, _, _ = schedule.q_posterior(denoiser(x_1, t).x0.clamp(-1, 1), x_1, t)
    betas, alpha_bar = betas_and_alpha_bar(schedule)
    beta_tilde_2 = betas[1] * (1 - alpha_bar[0]) / (1 - alpha_bar[1])                 # Eq. 7 at the paper's t = 2
    log_scale = 0.5 * math.log(beta_tilde_2.item())                                 # sigma_1^2 := beta_tilde_2
    expected = -official_discretized_log_likelihood(x0.numpy(), mean.numpy(), log_scale).mean((1, 2, 3)) / math.log(2)
    assert_close(terms_bpd(denoiser, x0, t, eps), torch.from_numpy(expected), reduction=48, why="48 pixels")


def test_bad_inputs_are_refused_in_one_line():
    denoiser = ideal_x0(NoiseSchedule.linear(10, 1e-3, 0.2))
    with pytest.raises(ValueError, match="variance must be one of"):
        variational_bound(denoiser, torch.zeros(1, 1, 2, 2), variance="learned")
    with pytest.raises(ValueError, match=r"x0 must be a float tensor \(N, C, H, W\)"):
        variational_bound(denoiser, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="n_t"):
        variational_bound(denoiser, torch.zeros(1, 1, 2, 2), n_t=0)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A tiny UNet trained 30 steps on 16x16 shapes with T = 40, and a folder of 6 held-out shapes."""
    from dataclasses import replace

    from ddpm_lib.data import make_shapes
    from ddpm_lib.train import Trainer
    from ddpm_lib.train_config import TrainConfig
    from ddpm_lib.unet import PRESETS, UNet
    from helpers import write_image_folder

    out = tmp_path_factory.mktemp("nll")
    torch.manual_seed(0)
    trainer = Trainer(UNet(replace(PRESETS["tiny"], image_size=16)), NoiseSchedule.paper(40),
                      TrainConfig(train_steps=30, batch_size=8, lr=2e-3, warmup_steps=0, progress=False, sample_every=0,
                                  out_dir=str(out / "run")), Objective(prediction="x0"), device="cpu")
    trainer.fit(make_shapes(64, size=16, seed=0)[0])
    write_image_folder(out / "held", make_shapes(6, size=16, seed=1)[0])
    return out


def test_the_cli_reports_the_bound_and_its_strata_estimate_agrees_with_the_exact_sum(small_run, capsys):
    import json

    from ddpm_lib.cli import main

    args = ["nll", "--ckpt", str(small_run / "run"), "--data", str(small_run / "held"), "--n", "6", "--device", "cpu"]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert f"on 6 {small_run / 'held'} images, KL terms: all T - 1 of T = 40, sigma^2 = beta" in line
    exact = json.loads((small_run / "run" / "checkpoint_nll_n6_t39_beta.json").read_text())
    bpd = exact["bits_per_dim"]
    assert bpd["total"]["mean"] == pytest.approx(bpd["prior"]["mean"] + bpd["kl"]["mean"] + bpd["decoder"]["mean"])
    assert bpd["total"]["mean"] > 0
    estimates = []
    for seed in range(8):
        assert main(args + ["--n-t", "4", "--seed", str(seed)]) == 0
        files = sorted((small_run / "run").glob("checkpoint_nll_n6_t*_beta.json"))
        estimate = json.loads(next(f for f in files if "_t39_" not in f.name).read_text())
        assert estimate["kl_terms"].endswith("(an estimate)")
        estimates.append(estimate["bits_per_dim"]["kl"]["mean"])
    spread = float(np.std(estimates)) / math.sqrt(len(estimates))
    # the exact sum has its own noise (one eps per image and t): compare within both errors
    assert abs(np.mean(estimates) - bpd["kl"]["mean"]) < 5 * (spread + bpd["kl"]["sem"])


def test_the_cli_refuses_bad_input_in_one_line_before_any_work(small_run, capsys):
    from ddpm_lib.cli import main

    run = str(small_run / "run")
    assert main(["nll", "--ckpt", run, "--n-t", "40"]) == 1
    assert "--n-t 40: expected at most T - 1 = 39 KL terms" in capsys.readouterr().err
    assert main(["nll", "--ckpt", run, "--data", str(small_run / "nowhere")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert main(["nll", "--ckpt", str(small_run / "missing")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
