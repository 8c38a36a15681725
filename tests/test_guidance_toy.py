"""ddpm_lib.nb.guidance_toy: the exact toy predictor against autograd and Bayes."""
import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from ddpm_lib.guidance import guided
from ddpm_lib.nb.guidance_toy import GaussianClasses
from ddpm_lib.objective import Denoiser, Objective
from ddpm_lib.samplers import ddpm_sample
from ddpm_lib.schedule import NoiseSchedule

MEANS = [[-0.6, -0.3], [0.6, -0.3], [-0.3, 0.6], [0.3, 0.6]]
STDS = [0.25, 0.3, 0.15, 0.2]
CLASSES = [0, 1, 2, 2]
WEIGHTS = [0.3, 0.3, 0.25, 0.15]


@pytest.fixture
def toy():
    return GaussianClasses(MEANS, STDS, CLASSES, WEIGHTS)


def marginal(alpha_bar: float, components: list) -> MixtureSameFamily:
    """q(x_t | components) by torch.distributions: each N(mu_k, s_k^2 I) pushed through Eq. 4."""
    a = math.sqrt(alpha_bar)
    means = torch.tensor(MEANS, dtype=torch.float64)[components] * a
    scales = (alpha_bar * torch.tensor(STDS, dtype=torch.float64)[components] ** 2 + 1 - alpha_bar).sqrt()
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)[components]
    return MixtureSameFamily(Categorical(probs=weights / weights.sum()),
                             Independent(Normal(means, scales[:, None].expand(-1, 2)), 1))


@pytest.mark.parametrize("alpha_bar", [0.999, 0.5, 0.02])
@pytest.mark.parametrize("y", [-1, 0, 2])
def test_eps_is_minus_sqrt_one_minus_alpha_bar_times_the_score(toy, alpha_bar, y):
    # Tweedie: E[eps | x_t, y] = -sqrt(1 - alpha_bar) grad log q(x_t | y), the score by autograd
    x = (torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.8).requires_grad_()
    components = [k for k, c in enumerate(CLASSES) if y in (-1, c)]
    score, = torch.autograd.grad(marginal(alpha_bar, components).log_prob(x).sum(), x)
    eps = toy.eps(x.detach(), torch.full((64,), alpha_bar, dtype=torch.float64), torch.full((64,), y))
    torch.testing.assert_close(eps, -math.sqrt(1 - alpha_bar) * score, rtol=1e-9, atol=1e-12)


def test_class_probs_is_bayes_rule(toy):
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha_bar = 0.3
    prior = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    joint = torch.stack([marginal(alpha_bar, [k for k, c in enumerate(CLASSES) if c == y]).log_prob(x).exp() * prior[y]
                         for y in range(3)], 1)  # p(x_t | y) p(y), (32, 3)
    probs = toy.class_probs(x, torch.full((32,), alpha_bar, dtype=torch.float64))
    torch.testing.assert_close(probs, joint / joint.sum(1, keepdim=True), rtol=1e-9, atol=1e-12)


def test_sample_has_the_class_moments(toy):
    y = torch.tensor([0] * 4000 + [2] * 4000)
    x = toy.sample(y, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(x[:4000].mean(0), torch.tensor(MEANS[0]), atol=0.02, rtol=0)  # 4 sd of the mean
    torch.testing.assert_close(x[:4000].std(0), torch.tensor([STDS[0]] * 2), atol=0.015, rtol=0)
    # class 2 mixes components 2 and 3 with weights 0.25 : 0.15
    right = (x[4000:, 0] > 0).float().mean().item()
    assert abs(right - 0.15 / 0.4) < 0.03, right


def test_ddpm_sampling_with_the_ideal_predictor_draws_p_x0_given_y(toy):
    """Algorithm 2 driven by the exact eps_c reproduces p(x0 | y); with s = 0 (eps_u) the class shares of p(x0)."""
    schedule = NoiseSchedule.linear(200, 1e-4 * 5, 0.02 * 5)
    n = 3000
    y = torch.zeros(n, dtype=torch.long)
    x0 = ddpm_sample(guided(toy.denoiser(schedule), y), (n, 2, 1, 1), generator=torch.Generator().manual_seed(3),
                     clip_denoised=False).reshape(n, 2)
    torch.testing.assert_close(x0.mean(0), torch.tensor(MEANS[0]), atol=0.03, rtol=0)
    torch.testing.assert_close(x0.std(0), torch.tensor([STDS[0]] * 2), atol=0.03, rtol=0)
    x0 = ddpm_sample(guided(toy.denoiser(schedule), y, 0.0), (n, 2, 1, 1),
                     generator=torch.Generator().manual_seed(4), clip_denoised=False).reshape(n, 2)
    shares = toy.class_probs(x0, torch.ones(n)).argmax(1).bincount(minlength=3).float() / n
    expected = torch.tensor([0.3, 0.3, 0.4])  # the most likely class roughly follows the priors (classes overlap)
    torch.testing.assert_close(shares, expected, atol=0.06, rtol=0)


def test_denoiser_takes_sampler_shapes_and_no_label_rows(toy):
    """toy.denoiser(schedule) is the ideal eps network on the schedule with an eps objective: its eps is toy.eps
    (row by row, -1: no label) and its x0 is Eq. 4 solved for x0 from that eps."""
    schedule = NoiseSchedule.linear(10, 1e-3, 0.2)
    x = torch.randn(4, 2, 1, 1, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([0, 3, 6, 9])
    y = torch.tensor([0, -1, 2, -1])
    denoiser = toy.denoiser(schedule)
    assert isinstance(denoiser, Denoiser) and denoiser.schedule is schedule and denoiser.objective == Objective("eps")
    x0, out = denoiser(x, t, y)
    assert out.shape == x0.shape == (4, 2, 1, 1) and out.dtype == x0.dtype == torch.float32
    torch.testing.assert_close(x0, schedule.predict_x0(x, t, out))
    alpha_bar = schedule.alphas_cumprod[t]
    torch.testing.assert_close(out[[1, 3]].reshape(2, 2), toy.eps(x[[1, 3]].reshape(2, 2), alpha_bar[[1, 3]]))
    torch.testing.assert_close(out[[0, 2]].reshape(2, 2),
                               toy.eps(x[[0, 2]].reshape(2, 2), alpha_bar[[0, 2]], torch.tensor([0, 2])))


@pytest.mark.parametrize("kwargs, match", [
    (dict(means=[[0.0, 0.0, 0.0]], stds=[1.0], classes=[0]), "means"),
    (dict(means=[[0.0, 0.0]], stds=[0.0], classes=[0]), "stds"),
    (dict(means=[[0.0, 0.0]] * 2, stds=[1.0], classes=[0, 1]), "stds"),
    (dict(means=[[0.0, 0.0]] * 2, stds=[1.0] * 2, classes=[0, 2]), "classes"),
    (dict(means=[[0.0, 0.0]] * 2, stds=[1.0] * 2, classes=[0, 1], weights=[0.5, 0.6]), "weights"),
])
def test_bad_toy_definitions_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianClasses(**kwargs)


def test_labels_out_of_range_are_refused(toy):
    with pytest.raises(ValueError, match=r"y: expected labels in \[-1, 3\) \(-1: no label\); got \[3\]"):
        toy.eps(torch.zeros(2, 2), torch.ones(2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="y: expected integers, got dtype torch.float32"):
        toy.sample(torch.tensor([0.5]))
