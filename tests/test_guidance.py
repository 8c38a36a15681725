"""Classifier-free guidance as a denoiser wrapper: guided(denoiser, y, s) against its two branches computed apart,
for eps, x0 and v networks, in every sampler, on a real conditional UNet, and on two Gaussian classes whose ideal
predictors are known."""
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from helpers import MICRO, check_moments, fake_model, gaussian_eps, gen, perturbed

from ddpm_lib.guidance import GuidedDenoiser, guided
from ddpm_lib.objective import Denoised, Denoiser, Objective
from ddpm_lib.samplers import SAMPLERS, ddpm_sample
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.unet import UNet

SHAPE = (2, 3, 4, 4)
SCHEDULE = NoiseSchedule.linear(20)    # the fake networks' schedule: timesteps below 20


class Labelled:
    """A label-aware fake network (its output is eps, or x0 or v under another objective) that records the labels
    of every call."""

    config = SimpleNamespace(num_classes=3)

    def __init__(self):
        self.calls = []

    def __call__(self, x_t, t, y):
        self.calls.append(y.clone())
        return fake_model(x_t, t) + 0.3 * torch.sin(2.0 * y.to(x_t.dtype) + 1).view(-1, 1, 1, 1)


# ---- the formula, the branches, the calls ------------------------------------------------------

@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0, -0.5])
def test_guided_is_eps_u_plus_s_times_eps_c_minus_eps_u(scale):
    """s = 1: the conditional branch alone, s = 0 the unconditional one (label -1), one call of B rows each;
    any other s: one batched call of 2B rows (the labels, then -1) mixed as eps_u + s (eps_c - eps_u)."""
    net, y = Labelled(), torch.tensor([2, 0])
    x_t, t = torch.randn(SHAPE, generator=gen(1)), torch.tensor([7, 3])
    eps_c, eps_u = net(x_t, t, y), net(x_t, t, torch.full_like(y, -1))
    net.calls.clear()
    out = guided(Denoiser(net, SCHEDULE), y, scale)(x_t, t)
    expected = {0.0: eps_u, 1.0: eps_c}.get(scale, eps_u + scale * (eps_c - eps_u))
    assert isinstance(out, Denoised)
    torch.testing.assert_close(out.eps, expected, rtol=1e-6, atol=1e-6)
    rows = {0.0: torch.tensor([-1, -1]), 1.0: y}.get(scale, torch.tensor([2, 0, -1, -1]))
    assert len(net.calls) == 1 and torch.equal(net.calls[0], rows)


@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0, -0.5])
def test_guided_x0_and_eps_are_the_mixtures_of_both_branches_whatever_the_network_predicts(prediction, scale):
    """For a network predicting x0 or v, the guided denoiser's x0 and eps are each x_u + s (x_c - x_u) of the two
    branches' (x0, eps), which Objective.split makes of the network's outputs by hand here; the mixed pair still
    satisfies Eq. 4 at x_t (x0 is affine in eps at fixed x_t and the weights sum to 1)."""
    net, y, objective = Labelled(), torch.tensor([2, 0]), Objective(prediction=prediction)
    x_t, t = torch.randn(SHAPE, generator=gen(5)), torch.tensor([7, 3])
    x0_c, eps_c = objective.split(SCHEDULE, net(x_t, t, y), x_t, t)
    x0_u, eps_u = objective.split(SCHEDULE, net(x_t, t, torch.full_like(y, -1)), x_t, t)
    net.calls.clear()
    out = guided(Denoiser(net, SCHEDULE, objective), y, scale)(x_t, t)
    mix = lambda c, u: {0.0: u, 1.0: c}.get(scale, u + scale * (c - u))          # s = 0, 1: one branch alone
    assert isinstance(out, Denoised)
    torch.testing.assert_close(out.x0, mix(x0_c, x0_u), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.eps, mix(eps_c, eps_u), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(SCHEDULE.q_sample(out.x0, t, out.eps), x_t, rtol=1e-5, atol=1e-5)
    rows = {0.0: torch.tensor([-1, -1]), 1.0: y}.get(scale, torch.tensor([2, 0, -1, -1]))
    assert len(net.calls) == 1 and torch.equal(net.calls[0], rows)


def test_guided_unet_equals_its_two_branches():
    """A real class-conditional UNet: the batched call of 2B rows gives each branch as a call of its own."""
    model = perturbed(UNet(replace(MICRO, num_classes=3, dropout=0.0)))
    denoiser = Denoiser(model, NoiseSchedule.linear())
    x_t, t, y = torch.randn(2, 3, 16, 16, generator=gen(2)), torch.tensor([900, 10]), torch.tensor([1, -1])
    with torch.no_grad():
        eps_c, eps_u = model(x_t, t, y), model(x_t, t, torch.full_like(y, -1))
        torch.testing.assert_close(guided(denoiser, y, 3.0)(x_t, t).eps, eps_u + 3.0 * (eps_c - eps_u))
        assert torch.equal(guided(denoiser, y, 1.0)(x_t, t).eps, eps_c)
        assert torch.equal(guided(denoiser, y, 0.0)(x_t, t).eps, eps_u)
    guide = guided(denoiser, y, 2.0)
    assert guide.schedule is denoiser.schedule                           # what samplers read of the denoiser
    assert not hasattr(guide, "config")                                  # the network's config is not forwarded


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm-solver"])
@pytest.mark.parametrize("scale", [0.0, 1.0, 3.5, -0.5])
def test_sampling_the_guided_model_is_the_formula_by_hand(name, scale):
    """Every sampler given guided(denoiser, y, s) draws the samples of eps = eps_u + s (eps_c - eps_u) written out
    by hand with two separate calls, and makes one model call per step (half the hand-written calls)."""
    schedule, y = SCHEDULE, torch.tensor([2, 0])
    fn, steps = SAMPLERS[name].fn, {} if name == "ddpm" else {"sample_steps": 7}
    by_hand_net = Labelled()

    def by_hand(x_t, t):
        eps_c, eps_u = by_hand_net(x_t, t, y), by_hand_net(x_t, t, torch.full_like(y, -1))
        return eps_u + scale * (eps_c - eps_u)

    expected = fn(Denoiser(by_hand, schedule), SHAPE, generator=gen(14), **steps)
    net = Labelled()
    out = fn(guided(Denoiser(net, schedule), y, scale), SHAPE, generator=gen(14), **steps)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    rows = {0.0: torch.tensor([-1, -1]), 1.0: y}.get(scale, torch.tensor([2, 0, -1, -1]))
    assert len(net.calls) == len(by_hand_net.calls) // 2 and all(torch.equal(c, rows) for c in net.calls)


def test_rows_guide_a_batch_of_the_labels():
    denoiser, y = Denoiser(Labelled(), SCHEDULE), torch.tensor([0, 1, 2, -1, 1])
    part = guided(denoiser, y, 2.0).rows(1, 3)
    x_t, t = torch.randn(SHAPE, generator=gen(3)), torch.tensor([5, 5])
    torch.testing.assert_close(part(x_t, t), guided(denoiser, y[1:3], 2.0)(x_t, t), rtol=0, atol=0)


# ---- checks, once, where guidance is built ------------------------------------------------------

@pytest.mark.parametrize("y, scale, match", [
    (torch.tensor([0.0, 1.0]), 2.0, "y: expected integers, got dtype torch.float32"),
    (torch.tensor([True, False]), 2.0, "y: expected integers, got dtype torch.bool"),
    (torch.tensor([[0, 1]]), 2.0, r"y: expected a 1-D tensor of integers, got shape \(1, 2\)"),
    (torch.tensor([0, -2]), 2.0, r"y: expected labels in \[-1, 3\) \(-1: no label\); got \[-2\]"),
    (torch.tensor([0, 3, 5]), 2.0, r"y: expected labels in \[-1, 3\) \(-1: no label\); got \[3, 5\]"),
    (None, 2.0, r"guidance \(scale s=2.0\) needs class labels y, got None"),
    (torch.tensor([0, 1]), float("nan"), "the guidance scale s must be a finite number, got nan"),
    (torch.tensor([0, 1]), float("inf"), "the guidance scale s must be a finite number, got inf"),
    (torch.tensor([0, 1]), True, "the guidance scale s must be a finite number, got True"),
    (torch.tensor([0, 1]), "2", "the guidance scale s must be a finite number, got '2'"),
])
def test_bad_labels_and_scales_raise_value_error(y, scale, match):
    net = Labelled()
    with pytest.raises(ValueError, match=match):
        guided(Denoiser(net, SCHEDULE), y, scale)
    assert net.calls == []


def test_labels_may_be_any_integers_and_are_kept_as_int64():
    denoiser = Denoiser(Labelled(), SCHEDULE)
    for y in ([2, -1], torch.tensor([2, -1], dtype=torch.int32)):
        assert guided(denoiser, y, 2.0).y.dtype == torch.int64


def test_a_plain_function_is_guided_with_labels_of_at_least_minus_1():
    """Without a config there is no K to check against: any label >= -1 goes to the function, which may check."""
    def plain(x_t, t, y):
        return fake_model(x_t, t) * (y.to(x_t.dtype) + 2).view(-1, 1, 1, 1)

    denoiser = Denoiser(plain, SCHEDULE)
    x_t, t = torch.randn(SHAPE, generator=gen(4)), torch.tensor([3, 3])
    torch.testing.assert_close(guided(denoiser, [7, -1], 1.0)(x_t, t).eps, plain(x_t, t, torch.tensor([7, -1])))
    with pytest.raises(ValueError, match=r"y: expected integers >= -1; got \[-2\]"):
        guided(denoiser, [0, -2], 2.0)
    assert getattr(guided(denoiser, [0, 1], 2.0), "config", None) is None   # no config: samplers read the schedule


def test_models_that_cannot_be_guided_raise_value_error():
    unconditional = SimpleNamespace(config=SimpleNamespace(num_classes=None))
    with pytest.raises(ValueError, match=r"the network is unconditional \(its config.num_classes is None\)"):
        guided(Denoiser(unconditional, SCHEDULE), torch.tensor([0, 1]), 2.0)
    with pytest.raises(ValueError, match="y: this UNet is unconditional"):   # the UNet says so itself, too
        UNet(MICRO)(torch.zeros(1, 3, 16, 16), torch.tensor([0]), torch.tensor([0]))


def test_only_a_denoiser_can_be_guided():
    """guided wraps a Denoiser (the network with its schedule and objective): a bare network, a plain function or
    an already guided denoiser is refused with a ValueError naming what it got, before any call."""
    net = Labelled()
    guide = guided(Denoiser(net, SCHEDULE), torch.tensor([0, 1]), 2.0)
    for not_a_denoiser, name in ((net, "Labelled"), (fake_model, "function"), (guide, "GuidedDenoiser")):
        with pytest.raises(ValueError, match=rf"denoiser: expected a Denoiser \(ddpm_lib.objective\), got {name}$"):
            guided(not_a_denoiser, torch.tensor([0, 1]), 2.0)
    assert isinstance(guide, GuidedDenoiser) and net.calls == []


def test_a_batch_other_than_the_labels_raises_value_error():
    guide = guided(Denoiser(Labelled(), SCHEDULE), torch.tensor([0, 1, 2]), 2.0)
    with pytest.raises(ValueError, match="x_t has a batch of 2 rows but the guided denoiser holds 3 labels y"):
        guide(torch.zeros(SHAPE), torch.tensor([4, 4]))


# ---- two Gaussian classes: the samples follow the classes or their mixture ---------------------

MODES, SD = (-1.0, 1.0), 0.3           # two classes of 1-D Gaussian data: x0 ~ N(MODES[y], SD^2) per element


class TwoGaussians:
    """The ideal noise predictors of two Gaussian classes: per class the Gaussian's E[eps | x_t, y]; for y = -1
    the mixture's E[eps | x_t] = sum_y P(y | x_t) E[eps | x_t, y] (equal priors, Bayes' rule in closed form)."""

    config = SimpleNamespace(num_classes=2)

    def __init__(self, schedule):
        self.abar = torch.cumprod(1 - schedule.state_dict()["betas"], 0)

    def __call__(self, x_t, t, y):
        abar = self.abar[t].to(x_t.dtype).view(-1, 1, 1, 1)
        eps = [gaussian_eps(abar, x_t, mu, SD) for mu in MODES]
        var = abar * SD ** 2 + 1 - abar                                   # Var[x_t | y]
        log_p = [-(x_t - abar.sqrt() * mu) ** 2 / (2 * var) for mu in MODES]
        p1 = torch.sigmoid(log_p[1] - log_p[0])                          # P(y = 1 | x_t)
        y = y.view(-1, 1, 1, 1)
        return torch.where(y == -1, (1 - p1) * eps[0] + p1 * eps[1], torch.where(y == 0, eps[0], eps[1]))


def test_guidance_scale_1_samples_each_class_and_0_the_mixture():
    schedule = NoiseSchedule.linear()
    y = torch.tensor([0] * 10 + [1] * 10)
    kw = dict(generator=gen(13), clip_denoised=False)
    denoiser = Denoiser(TwoGaussians(schedule), schedule)
    x = ddpm_sample(guided(denoiser, y, 1.0), (20, 1, 10, 10), **kw)
    for label, mu in enumerate(MODES):
        check_moments(x[y == label], 0.0, 0.01, mu=mu, s=SD)              # 1,000 samples per class
    x = ddpm_sample(guided(denoiser, y, 0.0), (20, 1, 10, 10), **kw).flatten()
    share = (x > 0).double().mean().item()                                # the labels are ignored
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / len(x))
    for mu, side in zip(MODES, (x < 0, x > 0)):
        check_moments(x[side], 0.0, 0.01, mu=mu, s=SD)
