"""The paper's figures (Figs. 6-8) against Gaussian data, whose ideal noise predictor and posterior
p(x0 | x_t) are known in closed form, and against the library's own Algorithm 2 (`ddpm_sample`)."""
import math

import pytest
import torch
from helpers import MICRO, MU, S, IdealEps, check_moments, gen, perturbed

from ddpm_lib.objective import Denoiser
from ddpm_lib.paper_figures import coarse_to_fine, interpolate, progressive_generation
from ddpm_lib.sampler_steps import Trajectory
from ddpm_lib.samplers import ddim_timesteps, ddpm_sample
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.unet import UNet

SCHEDULE = NoiseSchedule.linear()
IDEAL = IdealEps(SCHEDULE).denoiser()  # the ideal eps network on SCHEDULE, an eps objective


def gaussian_images(shape, seed):
    return MU + S * torch.randn(shape, generator=gen(seed))


def posterior(x_t, t):
    """Mean and sd of p(x0 | x_t) for x0 ~ N(MU, S^2): the Gaussian conditional of Eq. 4's joint."""
    abar = torch.cumprod(1 - SCHEDULE.state_dict()["betas"], 0)[t].item()
    var_t = abar * S ** 2 + 1 - abar                                   # Var[x_t]
    mean = MU + math.sqrt(abar) * S ** 2 / var_t * (x_t - math.sqrt(abar) * MU)
    return mean, math.sqrt(S ** 2 * (1 - abar) / var_t)


def test_progressive_generation_is_the_predicted_x0_of_ddpm_sample(one_thread):
    """Same generator, same draws: the frames are ddpm_sample's trajectory at the chosen timesteps."""
    frames, timesteps = progressive_generation(IDEAL, 3, 5, image_shape=(1, 4, 4), generator=gen(1))
    collect = Trajectory()
    x0 = ddpm_sample(IDEAL, (3, 1, 4, 4), generator=gen(1), callback=collect)
    trajectory = collect.result(x0)
    assert timesteps == ddim_timesteps(1000, 5) and (timesteps[0], timesteps[-1]) == (999, 0)   # evenly spaced
    assert frames.shape == (5, 3, 1, 4, 4)
    expected = trajectory["x0_pred"][[trajectory["t"].index(t) for t in timesteps]]
    torch.testing.assert_close(frames, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(frames[-1], x0, rtol=0, atol=1e-5)       # the last frame is the sample


def test_progressive_generation_takes_the_image_shape_from_the_unet(one_thread):
    denoiser = Denoiser(perturbed(UNet(MICRO)), NoiseSchedule.linear(10, 1e-3, 0.2))
    frames, timesteps = progressive_generation(denoiser, 2, 3, generator=gen(0))
    assert frames.shape == (3, 2, 3, 16, 16) and (timesteps[0], timesteps[-1]) == (9, 0)
    assert frames.abs().max() <= 1                                     # clipped, as in the official code


def test_coarse_to_fine_shapes_and_default_timesteps(one_thread):
    x0 = gaussian_images((2, 1, 4, 4), 0)
    out = coarse_to_fine(IDEAL, x0, n_continuations=3, generator=gen(1))
    assert out["t"] == [999, 750, 500, 250]
    assert out["x_t"].shape == (4, 2, 1, 4, 4) and out["samples"].shape == (4, 3, 2, 1, 4, 4)


def test_coarse_to_fine_continues_x_t_with_ddpm_sample_from_t(one_thread):
    """After its one eps draw, each t's k continuations are one ddpm_sample call from x_t repeated k times."""
    x0 = gaussian_images((2, 1, 4, 4), 0)
    out = coarse_to_fine(IDEAL, x0, ts=[300, 40], n_continuations=3, generator=gen(1))
    g = gen(1)
    torch.randn(x0.shape, generator=g)                                  # coarse_to_fine's eps
    for i, t in enumerate([300, 40]):
        x_T = out["x_t"][i].repeat(3, 1, 1, 1)                          # (3 B, C, H, W)
        x = ddpm_sample(IDEAL, x_T.shape, generator=g, x_T=x_T, t_start=t)
        assert torch.equal(out["samples"][i], x.reshape(3, 2, 1, 4, 4))


def test_continuing_from_T_minus_1_reproduces_the_data_distribution(one_thread):
    """x_{T-1} has forgotten x0: the continuations are fresh samples of N(MU, S^2), whatever the source."""
    x0 = torch.full((1, 1, 20, 20), -0.9)                              # far from the data's mean
    out = coarse_to_fine(IDEAL, x0, ts=[999], n_continuations=10, generator=gen(2))
    check_moments(out["samples"][0], 0.0, 0.005)


def test_continuing_from_a_small_t_samples_the_posterior_of_x0(one_thread):
    """From x_10 the continuations scatter around E[x0 | x_10] with p(x0 | x_10)'s sd (0.046, S = 0.25):
    they stay close to the source x0, as the fine details of Fig. 7's last rows do."""
    x0 = gaussian_images((1, 1, 20, 20), 3)
    out = coarse_to_fine(IDEAL, x0, ts=[10], n_continuations=10, generator=gen(4))
    mean, sd = posterior(out["x_t"][0], 10)
    err = out["samples"][0] - mean                                     # 4,000 draws of p(x0 | x_t) - its mean
    assert abs(err.mean().item()) < 4 * sd / math.sqrt(err.numel())
    assert abs(err.std().item() / sd - 1) < 0.05                       # measured: 0.983
    assert (out["samples"][0] - x0).pow(2).mean().sqrt() < 2 * sd      # close to the source: S is 5.4 sd


def test_continuations_from_one_x_t_differ_more_at_larger_t(one_thread):
    x0 = gaussian_images((1, 1, 8, 8), 5)
    out = coarse_to_fine(IDEAL, x0, ts=[999, 500, 50], n_continuations=8, generator=gen(6))
    spread = out["samples"].std(dim=1).mean(dim=(1, 2, 3, 4))           # across continuations, per t
    assert spread[0] > spread[1] > spread[2]


def test_interpolation_at_the_ends_returns_the_sources_at_small_t(one_thread):
    x0_a, x0_b = gaussian_images((2, 1, 8, 8), 7), gaussian_images((2, 1, 8, 8), 8)
    out = interpolate(IDEAL, x0_a, x0_b, 5, lambdas=[0.0, 0.5, 1.0], generator=gen(9))
    assert out["lambdas"] == [0.0, 0.5, 1.0]
    assert out["x_t"].shape == out["samples"].shape == (3, 2, 1, 8, 8)
    _, sd = posterior(out["x_t"][0], 5)                                # 0.030: the decoder's own scatter
    rms = lambda a, b: (a - b).pow(2).mean().sqrt().item()
    assert rms(out["samples"][0], x0_a) < 2 * sd and rms(out["samples"][2], x0_b) < 2 * sd
    assert rms(x0_a, x0_b) > 5 * sd                                    # the sources are 12 sd apart


def test_interpolation_shares_eps_and_the_reverse_noise_across_lambdas(one_thread):
    """x_t(lambda) is q_sample of the blended images with one eps; the ideal eps is affine in x_t, so with
    the reverse noise shared (and nothing clipped) the decoded samples are affine in lambda too."""
    x0_a, x0_b = gaussian_images((2, 1, 6, 6), 10).clamp(-0.4, 0.8), gaussian_images((2, 1, 6, 6), 11).clamp(-0.4, 0.8)
    out = interpolate(IDEAL, x0_a, x0_b, 300, lambdas=[0.0, 0.25, 1.0], generator=gen(12))
    eps = torch.randn(x0_a.shape, generator=gen(12))                   # interpolate's first draw
    blend = SCHEDULE.q_sample(0.75 * x0_a + 0.25 * x0_b, torch.full((2,), 300), eps)
    torch.testing.assert_close(out["x_t"][1], blend)
    s0, s25, s1 = out["samples"]
    torch.testing.assert_close(s25, 0.75 * s0 + 0.25 * s1, rtol=0, atol=1e-5)


def test_interpolation_decodes_every_lambda_from_the_same_generator_state(one_thread):
    """Each row is ddpm_sample from x_t(lambda) at t, started from the generator state after the eps draw."""
    x0_a, x0_b = gaussian_images((2, 1, 4, 4), 15), gaussian_images((2, 1, 4, 4), 16)
    out = interpolate(IDEAL, x0_a, x0_b, 60, lambdas=[0.0, 0.5, 1.0], generator=gen(17))
    g = gen(17)
    torch.randn(x0_a.shape, generator=g)                                # interpolate's eps
    state = g.get_state()
    for x_t, sample in zip(out["x_t"], out["samples"]):
        g.set_state(state)
        assert torch.equal(sample, ddpm_sample(IDEAL, x_t.shape, generator=g, x_T=x_t, t_start=60))
    assert not torch.equal(out["samples"][0], out["samples"][2])


def test_interpolation_without_a_generator_still_shares_the_reverse_noise(one_thread):
    """With torch's global generator the rows still get the same z at each step (affine in lambda, as above)."""
    x0_a, x0_b = gaussian_images((1, 1, 6, 6), 18).clamp(-0.4, 0.8), gaussian_images((1, 1, 6, 6), 19).clamp(-0.4, 0.8)
    torch.manual_seed(0)
    s0, s50, s1 = interpolate(IDEAL, x0_a, x0_b, 300, lambdas=[0.0, 0.5, 1.0])["samples"]
    torch.testing.assert_close(s50, 0.5 * (s0 + s1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("figure", ["progressive", "coarse_to_fine", "interpolate"])
def test_figures_are_deterministic_in_the_generator(figure, one_thread):
    x0_a, x0_b = gaussian_images((2, 1, 4, 4), 13), gaussian_images((2, 1, 4, 4), 14)
    run = {
        "progressive": lambda g: progressive_generation(IDEAL, 2, 3, image_shape=(1, 4, 4), generator=g)[0],
        "coarse_to_fine": lambda g: coarse_to_fine(IDEAL, x0_a, ts=[500], n_continuations=2, generator=g)["samples"],
        "interpolate": lambda g: interpolate(IDEAL, x0_a, x0_b, 500, generator=g)["samples"],
    }[figure]
    assert torch.equal(run(gen(0)), run(gen(0)))
    assert not torch.allclose(run(gen(0)), run(gen(1)))


def test_bad_arguments_are_value_errors():
    x0 = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="ts entry"):
        coarse_to_fine(IDEAL, x0, ts=[1000])
    with pytest.raises(ValueError, match="n_continuations"):
        coarse_to_fine(IDEAL, x0, ts=[5], n_continuations=0)
    with pytest.raises(ValueError, match="x0 must be a float tensor"):
        coarse_to_fine(IDEAL, torch.zeros(2, 4, 4), ts=[5])
    with pytest.raises(ValueError, match="same shape"):
        interpolate(IDEAL, x0, torch.zeros(1, 1, 4, 4), 5)
    with pytest.raises(ValueError, match=r"t must be an integer timestep in \[0, T-1=999\]"):
        interpolate(IDEAL, x0, x0, -1)
    with pytest.raises(ValueError, match="image_shape"):
        progressive_generation(IDEAL, 2, 3)
