"""The objective (what a network predicts, eps, x0 or v, and the loss weighting of each t), the Denoiser that turns a
network's output into (x0, eps), and Algorithm 1 (diffusion_loss): checked against Eq. 4 and Salimans & Ho's v
derived in float64 straight from the betas, against the closed forms of Gaussian data, and against min-SNR's
definition as one weight on x0's error (Hang et al. 2023). Last, a scan of the package: only ddpm_lib/objective.py
knows what a network predicts."""
import ast
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import MU, S, IdealEps, fake_model, gaussian_eps, gaussian_x0

from ddpm_lib.objective import PREDICTIONS, WEIGHTINGS, Denoised, Denoiser, Objective, diffusion_loss
from ddpm_lib.schedule import NoiseSchedule

PACKAGE = Path(__file__).resolve().parents[1] / "ddpm_lib"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _abar(schedule, t):
    """alpha_bar_t in float64 straight from the betas (independent of the schedule's stored coefficients)."""
    return torch.cumprod(1 - schedule.state_dict()["betas"], 0)[t].view(-1, 1, 1, 1)


def _f64(*shape, seed):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


# ---- the Objective record ----------------------------------------------------------------------

def test_the_default_objective_is_the_papers():
    """eps-prediction with every t weighed alike: L_simple (Eq. 14); gamma 5 as Hang et al. recommend."""
    assert Objective() == Objective("eps", "uniform", 5.0)
    assert PREDICTIONS == ("eps", "x0", "v", "flow") and WEIGHTINGS == ("uniform", "min-snr")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Objective().prediction = "x0"  # saved with the network: it must not change under it
    assert len({Objective(), Objective("eps"), Objective("x0")}) == 2  # hashable, equal by value


@pytest.mark.parametrize("field, value", [
    ("prediction", "score"), ("prediction", "epsilon"), ("prediction", None), ("prediction", "EPS"),
    ("weighting", "snr"), ("weighting", "min_snr"), ("weighting", None),
    ("snr_gamma", 0), ("snr_gamma", 0.0), ("snr_gamma", -1.0), ("snr_gamma", float("inf")),
    ("snr_gamma", float("nan")), ("snr_gamma", True), ("snr_gamma", "5"), ("snr_gamma", None),
])
def test_a_bad_objective_field_is_a_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=rf"^Objective\.{field} must be ") as caught:
        Objective(**{field: value})
    assert repr(value) in str(caught.value) and str(caught.value).count("\n") == 0


@pytest.mark.parametrize("objective", [Objective(), Objective("x0", "min-snr", 5.0), Objective("v", "min-snr", 2),
                                       Objective("eps", "uniform", 0.5)])
def test_to_dict_and_from_dict_round_trip(objective, tmp_path):
    """to_dict() holds plain values, as a checkpoint (torch.load weights_only=True) and config.json store them."""
    values = objective.to_dict()
    assert values == {"prediction": objective.prediction, "weighting": objective.weighting,
                      "snr_gamma": objective.snr_gamma}
    assert Objective.from_dict(values) == objective
    assert Objective.from_dict(json.loads(json.dumps(values))) == objective
    torch.save(values, tmp_path / "objective.pt")
    assert Objective.from_dict(torch.load(tmp_path / "objective.pt", weights_only=True)) == objective
    with pytest.raises(ValueError, match=r"objective: weighting, snr_gamma missing \(expected prediction, weighting"):
        Objective.from_dict({"prediction": "eps"})  # a stored record is complete: nothing is silently the paper's


@pytest.mark.parametrize("values, match", [
    ({"prediction": "x0", "loss_weighting": "min-snr"}, r"'loss_weighting' is not a field of Objective \(expected "
                                                         r"prediction, weighting, snr_gamma\)"),
    ({"prediction": "eps", "gamma": 5.0}, "'gamma' is not a field of Objective"),
    ({"prediction": "score", "weighting": "uniform", "snr_gamma": 5.0},
     r"Objective\.prediction must be one of \('eps', 'x0', 'v', 'flow'\), got 'score'"),
    ({"prediction": "eps", "weighting": "snr", "snr_gamma": 5.0}, r"Objective\.weighting must be one of"),
    ({"prediction": "eps", "weighting": "uniform", "snr_gamma": -2.0},
     r"Objective\.snr_gamma must be a number > 0, got -2.0"),
    (["eps", "uniform", 5.0], "objective: expected a dict of .*got list"),
    ("eps", "objective: expected a dict of .*got str"),
    (None, "objective: expected a dict of .*got NoneType"),
])
def test_from_dict_refuses_an_unknown_key_or_a_bad_value(values, match):
    with pytest.raises(ValueError, match=match):
        Objective.from_dict(values)


# ---- eps, x0 and v: the target and the conversions ------------------------------------------------

@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_each_target_converts_back_to_x0_and_eps(prediction):
    schedule = NoiseSchedule.cosine(1000)
    objective = Objective(prediction)
    x0, eps = _f64(8, 3, 4, 4, seed=1), _f64(8, 3, 4, 4, seed=2)
    t = torch.tensor([0, 1, 10, 250, 500, 750, 998, 999])
    x_t = schedule.q_sample(x0, t, eps)
    out = objective.target(schedule, x0, t, eps)
    abar = _abar(schedule, t)
    want = {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[prediction]  # Salimans & Ho
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    # float64 throughout: the round trip is exact to a few ulps times 1 / sqrt(alpha_bar) (about 160 at t = 999)
    x0_back, eps_back = objective.split(schedule, out, x_t, t)
    torch.testing.assert_close(x0_back, x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(eps_back, eps, rtol=0, atol=1e-10)


def test_min_snr_weights_are_one_weight_on_x0s_error_in_every_space():
    """w_p ||target_p - out_p||^2 = min(SNR, gamma) ||x0 - x0(out_p)||^2 for every prediction p (Hang et al.)."""
    schedule = NoiseSchedule.linear()
    t = torch.tensor([0, 3, 40, 200, 600, 999])
    x0, eps = _f64(6, 3, 4, 4, seed=3), _f64(6, 3, 4, 4, seed=4)
    x_t = schedule.q_sample(x0, t, eps)
    snr = (_abar(schedule, t) / (1 - _abar(schedule, t))).flatten()
    for gamma in (1.0, 5.0):
        for prediction in ("eps", "x0", "v"):
            objective = Objective(prediction, "min-snr", gamma)
            target = objective.target(schedule, x0, t, eps)
            out = target + 0.1 * _f64(*x0.shape, seed=5)
            w = objective.weight(schedule, t)
            assert w.dtype == torch.float32 and w.shape == (6,)
            weighted = w.double() * ((target - out) ** 2).flatten(1).mean(1)
            x0_err = ((x0 - objective.split(schedule, out, x_t, t)[0]) ** 2).flatten(1).mean(1)
            # the weights are rounded once to float32: relative error 2^-24
            torch.testing.assert_close(weighted, snr.clamp(max=gamma) * x0_err, rtol=1e-6, atol=0)
        for prediction in ("eps", "x0", "v"):
            uniform = Objective(prediction, "uniform", gamma).weight(schedule, t)
            assert torch.equal(uniform, torch.ones(6)) and uniform.dtype == torch.float32


def test_min_snr_eps_weight_is_min_snr_gamma_over_snr_and_caps_the_clean_end():
    schedule = NoiseSchedule.linear()
    t = torch.arange(1000)
    w = Objective("eps", "min-snr", 5.0).weight(schedule, t)
    snr = schedule.snr(t)
    torch.testing.assert_close(w, torch.minimum(snr, torch.tensor(5.0)) / snr, rtol=1e-6, atol=0)
    assert w[0] < 1e-3 and torch.all(w[snr <= 5] == 1)  # t = 0: SNR about 1e4, weight 5e-4; noisy t: weight 1
    snr64 = (_abar(schedule, t) / (1 - _abar(schedule, t))).flatten()  # x0 and v: min(SNR, gamma) (/ (SNR + 1))
    torch.testing.assert_close(Objective("x0", "min-snr", 5.0).weight(schedule, t), snr64.clamp(max=5).float())
    torch.testing.assert_close(Objective("v", "min-snr", 5.0).weight(schedule, t),
                               (snr64.clamp(max=5) / (snr64 + 1)).float())


# ---- the Denoiser --------------------------------------------------------------------------------

def _ideal(schedule, prediction):
    """The ideal predictor of x0 ~ N(MU, S^2) (alpha_bar in float64 from the betas alone): E[eps | x_t], E[x0 | x_t]
    or E[v | x_t] = sqrt(abar) E[eps | x_t] - sqrt(1 - abar) E[x0 | x_t] (v is linear in eps and x0); a flow
    network's, called with z_s and s T, is helpers.IdealEps's."""
    if prediction == "flow":
        return IdealEps(schedule, "flow")

    def net(x_t, t):
        abar = _abar(schedule, t).to(x_t.dtype)
        eps, x0 = gaussian_eps(abar, x_t, MU, S), gaussian_x0(abar, x_t, MU, S)
        return {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[prediction]
    return net


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_a_denoiser_returns_x0_and_eps_that_satisfy_eq_4(prediction):
    """For any output of any network, the denoiser's (x0, eps) put back into Eq. 4 give x_t again, and the output is
    the prediction's quantity of them (eps, x0 or v): float64, alpha_bar from the betas."""
    schedule = NoiseSchedule.linear()
    t = torch.tensor([0, 1, 10, 250, 500, 750, 998, 999])
    x_t = 1.5 * _f64(8, 3, 4, 4, seed=6)
    denoiser = Denoiser(fake_model, schedule, Objective(prediction))
    out = denoiser(x_t, t)
    assert isinstance(out, Denoised) and out.x0.dtype == out.eps.dtype == torch.float64
    x0, eps = out  # a NamedTuple: unpacks as (x0, eps)
    assert x0 is out.x0 and eps is out.eps
    abar = _abar(schedule, t)
    torch.testing.assert_close(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, x_t, rtol=0, atol=1e-12)  # Eq. 4
    what = {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[prediction]
    torch.testing.assert_close(what, fake_model(x_t, t), rtol=0, atol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_the_ideal_predictor_of_gaussian_data_denoises_alike_whatever_it_predicts(prediction):
    """The ideal eps, x0 and v predictors of Gaussian data are one denoiser: E[x0 | x_t] and E[eps | x_t] in closed
    form, from every prediction."""
    schedule = NoiseSchedule.cosine(200)
    t = torch.tensor([0, 5, 50, 100, 150, 199])
    x_t = _f64(6, 2, 3, 3, seed=7)
    x0, eps = Denoiser(_ideal(schedule, prediction), schedule, Objective(prediction))(x_t, t)
    abar = _abar(schedule, t)
    torch.testing.assert_close(x0, gaussian_x0(abar, x_t, MU, S), rtol=0, atol=1e-10)
    torch.testing.assert_close(eps, gaussian_eps(abar, x_t, MU, S), rtol=0, atol=1e-10)


def test_a_denoiser_passes_labels_and_casts_to_x_ts_dtype():
    schedule = NoiseSchedule.linear(10)
    calls = []

    def net(x_t, t, *y):
        calls.append(y)
        return torch.zeros(x_t.shape, dtype=torch.float32)  # a float32 network under float64 inputs

    denoiser = Denoiser(net, schedule)  # default objective: the paper's eps
    assert denoiser.objective == Objective() and denoiser.net is net and denoiser.schedule is schedule
    x_t, t, y = torch.ones(2, 3, 2, 2, dtype=torch.float64), torch.tensor([0, 9]), torch.tensor([1, -1])
    x0, eps = denoiser(x_t, t)
    assert calls == [()] and x0.dtype == eps.dtype == torch.float64  # unconditional: net(x_t, t)
    torch.testing.assert_close(x0, x_t / _abar(schedule, t).sqrt(), rtol=0, atol=1e-12)  # eps 0: x_t / sqrt(abar)
    denoiser(x_t, t, y)
    assert len(calls) == 2 and calls[1][0] is y  # with labels: net(x_t, t, y)
    with pytest.raises(ValueError, match="schedule: expected a NoiseSchedule, got str"):
        Denoiser(net, "linear")
    with pytest.raises(ValueError, match="objective: expected an Objective, got str"):
        Denoiser(net, schedule, "eps")
    assert "Objective(prediction='eps'" in repr(denoiser)


def test_denoiser_to_moves_the_network_and_the_schedule():
    """`to` gives a denoiser on the device: the network moved in place (an nn.Module), the schedule a moved copy, the
    objective the same. The meta device stands in for an accelerator."""
    schedule, objective = NoiseSchedule.linear(10), Objective("v", "min-snr", 2.0)
    net = torch.nn.Conv2d(3, 3, 1)
    moved = Denoiser(net, schedule, objective).to("meta")
    assert isinstance(moved, Denoiser) and moved.net is net and net.weight.device.type == "meta"
    assert moved.schedule.device == torch.device("meta") and moved.schedule.alphas_cumprod.device.type == "meta"
    assert schedule.device == torch.device("cpu") and schedule.alphas_cumprod.device.type == "cpu"  # a copy moved
    assert moved.objective is objective and moved.schedule.num_timesteps == 10
    plain = Denoiser(fake_model, schedule).to("meta")  # a plain function goes as it is
    assert plain.net is fake_model and plain.schedule.device == torch.device("meta")


# ---- Algorithm 1 ---------------------------------------------------------------------------------

class _OracleEps(torch.nn.Module):
    """Knows that every x0 is the constant c, so it recovers eps exactly from x_t."""

    def __init__(self, schedule, c):
        super().__init__()
        self.schedule, self.c, self.seen_t = schedule, c, []

    def forward(self, x_t, t):
        self.seen_t.append(t)
        abar = torch.cumprod(1 - self.schedule.state_dict()["betas"], 0)[t].view(-1, 1, 1, 1).float()
        return (x_t - abar.sqrt() * self.c) / (1 - abar).sqrt()


def test_diffusion_loss_algorithm_1():
    schedule = NoiseSchedule.linear()
    x0 = torch.full((4096, 1, 2, 2), 0.5)
    oracle = _OracleEps(schedule, 0.5)
    assert diffusion_loss(oracle, schedule, x0, generator=gen(5)).item() < 1e-6   # perfect predictor -> 0
    t = torch.cat(oracle.seen_t)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999
    assert abs(t.double().mean().item() - 499.5) < 5 * 288.7 / math.sqrt(len(t))  # t ~ U{0..T-1}
    zero = lambda x_t, t: torch.zeros_like(x_t)                       # E||eps||^2 = 1 per element
    per_example = diffusion_loss(zero, schedule, x0, generator=gen(6), reduction="none")
    assert per_example.shape == (4096,)
    assert abs(per_example.mean().item() - 1) < 5 * math.sqrt(2 / x0.numel())
    assert diffusion_loss(zero, schedule, x0, generator=gen(6)).item() == pytest.approx(per_example.mean().item())
    assert torch.equal(diffusion_loss(zero, schedule, x0, generator=gen(7), reduction="none"),
                       diffusion_loss(zero, schedule, x0, generator=gen(7), reduction="none"))
    # no objective is the paper's: eps and uniform weights
    assert torch.equal(diffusion_loss(zero, schedule, x0, Objective(), generator=gen(7), reduction="none"),
                       diffusion_loss(zero, schedule, x0, generator=gen(7), reduction="none"))
    noise = torch.ones_like(x0)
    fixed = diffusion_loss(zero, schedule, x0, t=torch.zeros(4096, dtype=torch.long), noise=noise)
    assert fixed.item() == 1.0


def test_diffusion_loss_backpropagates():
    schedule = NoiseSchedule.linear(10)
    model = torch.nn.Conv2d(3, 3, 1)
    loss = diffusion_loss(lambda x_t, t: model(x_t), schedule, torch.zeros(2, 3, 4, 4), generator=gen(8))
    loss.backward()
    assert model.weight.grad is not None and loss.ndim == 0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_diffusion_loss_learns_the_target_of_its_objectives_prediction(prediction):
    """The ideal predictor of constant data x0 = c scores 0 under its own objective (either weighting), not under
    another prediction's."""
    schedule = NoiseSchedule.linear()
    c = 0.5
    ideal_eps = _OracleEps(schedule, c)

    def ideal(x_t, t):
        eps = ideal_eps(x_t, t)
        return Objective(prediction).target(schedule, torch.full_like(x_t, c), t, eps)

    x0 = torch.full((512, 1, 2, 2), c)
    for weighting in ("uniform", "min-snr"):
        assert diffusion_loss(ideal, schedule, x0, Objective(prediction, weighting), generator=gen(5)) < 1e-6
    wrong = "x0" if prediction != "x0" else "eps"
    assert diffusion_loss(ideal, schedule, x0, Objective(wrong), generator=gen(5)) > 1e-2


def test_weighted_loss_is_the_weight_times_the_per_example_error():
    schedule = NoiseSchedule.linear()
    x0, t = torch.randn(16, 3, 4, 4, generator=gen(6)), torch.randint(0, 1000, (16,), generator=gen(7))
    noise = torch.randn(16, 3, 4, 4, generator=gen(8))
    net = lambda x_t, t: 0.3 * x_t
    plain = diffusion_loss(net, schedule, x0, Objective("v"), t=t, noise=noise, reduction="none")
    weighted_objective = Objective("v", "min-snr", 2)
    weighted = diffusion_loss(net, schedule, x0, weighted_objective, t=t, noise=noise, reduction="none")
    torch.testing.assert_close(weighted, plain * weighted_objective.weight(schedule, t), rtol=1e-6, atol=0)
    assert diffusion_loss(net, schedule, x0, weighted_objective, t=t, noise=noise) == \
        pytest.approx(weighted.mean().item(), rel=1e-6)
    # the plain v loss, inline: Salimans & Ho's v against the output at x_t of Eq. 4 (float64 from the betas)
    abar = _abar(schedule, t)
    x_t = abar.sqrt() * x0.double() + (1 - abar).sqrt() * noise.double()
    v = abar.sqrt() * noise.double() - (1 - abar).sqrt() * x0.double()
    torch.testing.assert_close(plain.double(), ((v - 0.3 * x_t) ** 2).flatten(1).mean(1), rtol=1e-5, atol=1e-7)


def test_the_loss_of_the_ideal_predictor_of_gaussian_data_is_the_posterior_variance():
    """For x0 ~ N(MU, S^2) the ideal predictor's squared error per element is the variance of the target given x_t,
    in closed form: Var(eps | x_t) = abar S^2 / D, Var(x0 | x_t) = S^2 (1 - abar) / D, Var(v | x_t) = S^2 / D and
    Var(eps - x0 | x_t) = (sqrt(abar) + sqrt(1 - abar))^2 S^2 / D (given x_t, eps - x0 = -(sqrt(abar) / sqrt(1 -
    abar) + 1) x0 + const), D = abar S^2 + 1 - abar. Under min-SNR the four are one weighted loss, min(SNR, gamma)
    Var(x0 | x_t)."""
    schedule = NoiseSchedule.linear()
    t = torch.tensor([0, 10, 100, 300, 600, 999])
    x0 = MU + S * _f64(6, 3, 64, 64, seed=9)
    noise = _f64(6, 3, 64, 64, seed=10)
    abar = _abar(schedule, t).flatten()
    D = abar * S ** 2 + 1 - abar
    variance = {"eps": abar * S ** 2 / D, "x0": S ** 2 * (1 - abar) / D, "v": S ** 2 / D,
                "flow": (abar.sqrt() + (1 - abar).sqrt()) ** 2 * S ** 2 / D}
    n = x0[0].numel()  # the per-example loss is a mean of n independent variance * chi^2_1: sd variance sqrt(2 / n)
    weighted = {}
    for prediction in PREDICTIONS:
        net = _ideal(schedule, prediction)
        loss = diffusion_loss(net, schedule, x0, Objective(prediction), t=t, noise=noise, reduction="none")
        assert loss.dtype == torch.float64
        torch.testing.assert_close(loss, variance[prediction], rtol=5 * math.sqrt(2 / n), atol=0)
        objective = Objective(prediction, "min-snr", 5.0)
        weighted[prediction] = diffusion_loss(net, schedule, x0, objective, t=t, noise=noise, reduction="none")
    for prediction in ("x0", "v", "flow"):  # the same errors of x0, weighed alike (weights rounded to float32)
        torch.testing.assert_close(weighted[prediction], weighted["eps"], rtol=1e-6, atol=0)
    snr = abar / (1 - abar)
    torch.testing.assert_close(weighted["x0"], snr.clamp(max=5) * variance["x0"], rtol=5 * math.sqrt(2 / n), atol=0)


# ---- bad input -----------------------------------------------------------------------------------

def _refuses_net(x_t, t):
    raise AssertionError("the network was called before the input was checked")


@pytest.mark.parametrize("call, match", [
    (lambda: diffusion_loss(None, NoiseSchedule.linear(10), torch.zeros(2, 3), reduction="sum"), "reduction"),
    (lambda: diffusion_loss(_refuses_net, NoiseSchedule.linear(10), torch.zeros(0, 3)), "non-empty batch"),
    (lambda: diffusion_loss(_refuses_net, NoiseSchedule.linear(10), torch.zeros(2, 3), t=torch.zeros(3).long()),
     r"t must have shape \(2,\), got \(3,\)"),
    (lambda: diffusion_loss(_refuses_net, NoiseSchedule.linear(10), torch.zeros(2, 3), Objective("v", "min-snr"),
                            t=torch.tensor([0.5, 1.0])), "integer timesteps"),
    (lambda: diffusion_loss(_refuses_net, NoiseSchedule.linear(10), torch.zeros(2, 3), noise=torch.zeros(2, 4)),
     "noise must have"),
    (lambda: Objective("eps", "min-snr").weight(NoiseSchedule.linear(10), torch.tensor([0.0, 1.0])),
     "integer timesteps"),
    (lambda: Objective("score"), "prediction must be one"),
    (lambda: Objective("epsilon").split(NoiseSchedule.linear(10), torch.zeros(1, 3), torch.zeros(1, 3), 0),
     "prediction"),
    (lambda: Objective("eps", "snr"), "weighting must be one of"),
    (lambda: Objective("eps", "min-snr", 0), "snr_gamma"),
    (lambda: Objective("v", "min-snr", -1.0), "snr_gamma"),
])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- one place knows what a network predicts -----------------------------------------------------

def _reads_of_prediction(source: str, filename: str) -> list[str]:
    """Where `source` reads what a network predicts off a config: an attribute `prediction` of something named
    config (`config.prediction`, `model.config.prediction`, `unet_config.prediction`, `cfg.prediction`), or a
    getattr / hasattr of "prediction"."""
    def names_a_config(node) -> bool:
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        return name is not None and (name.lower().endswith("config") or name == "cfg")

    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and node.attr == "prediction" and names_a_config(node.value):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and node.args[1].value == "prediction"):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("source, flagged", [
    ("model.config.prediction", True), ("config.prediction", True), ("self.config.prediction == 'x0'", True),
    ("unet_config.prediction", True), ("cfg.prediction", True), ("denoiser.net.config.prediction", True),
    ("getattr(model.config, 'prediction', 'eps')", True), ("getattr(anything, 'prediction')", True),
    ("hasattr(model.config, 'prediction')", True),
    ("objective.prediction", False), ("denoiser.objective.prediction", False), ("config['prediction']", False),
    ("Objective(prediction='x0')", False), ("(objective or Objective()).prediction", False),
    ("getattr(objective, 'weighting')", False), ("config.num_classes", False),
])
def test_the_scan_flags_a_read_of_prediction_off_a_config(source, flagged):
    assert bool(_reads_of_prediction(source, "snippet.py")) is flagged


def test_no_module_but_the_objective_reads_a_configs_prediction():
    """What a network predicts is the Objective's (UNetConfig has no `prediction` any more): no module of the package
    but ddpm_lib/objective.py reads `config.prediction` or getattr(..., "prediction")."""
    files = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "objective.py")
    assert len(files) > 30 and PACKAGE / "nb" / "session.py" in files  # the whole package, ddpm_lib/nb/ too
    found = [hit for p in files for hit in _reads_of_prediction(p.read_text(), str(p.relative_to(PACKAGE.parent)))]
    assert not found, "read what a network predicts from its Objective:\n" + "\n".join(found)
