"""The named recipes: their checks, the network and schedule they build, and the CPU defaults against the measured
winners of the benchmarks (docs/recipes/recipes.json, docs/knobs/quick_win.json)."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ddpm_lib.objective import Objective, diffusion_loss
from ddpm_lib.recipes import QUICK_CIFAR10, QUICK_WIN, RECIPES, X0_MIN_SNR, Recipe
from ddpm_lib.schedule import NoiseSchedule, cosine_betas, linear_betas
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import PRESETS, UNet

from helpers import MICRO

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("field, value, message", [
    ("preset", "huge", "Recipe.preset: expected one of"),
    ("data", "mnist", "Recipe.data: expected 'cifar10' or 'shapes'"),
    ("objective", "x0", "Recipe.objective: expected an Objective, got 'x0'"),
    ("objective", {"prediction": "x0", "weighting": "min-snr", "snr_gamma": 5.0}, "Recipe.objective: expected an "
                                                                                   "Objective, got {'prediction'"),
    ("schedule", "sigmoid", "Recipe.schedule: expected one of ('linear', 'cosine', 'flow'), got 'sigmoid'"),
    ("train_steps", 0, "TrainConfig.train_steps must be > 0"),
])
def test_a_bad_recipe_field_is_one_clear_error(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        replace(QUICK_WIN, **{field: value})


def test_a_recipes_objective_is_one_field():
    """What the network predicts and the loss weighting are one Objective (checked where it is made), not three
    fields of the recipe; the quick recipes share the benchmark's winner, x0 with min-SNR-5."""
    for field, value in [("prediction", "x0"), ("loss_weighting", "min-snr"), ("snr_gamma", 5.0)]:
        with pytest.raises(TypeError, match=field):
            replace(QUICK_WIN, **{field: value})
    with pytest.raises(ValueError, match="Objective.prediction must be one of"):
        replace(QUICK_WIN, objective=Objective("score"))
    assert X0_MIN_SNR == Objective("x0", "min-snr", 5.0) and QUICK_WIN.objective == X0_MIN_SNR
    assert replace(QUICK_WIN, objective=Objective("v")).objective == Objective("v")
    assert Recipe("tiny", "shapes", 16, train_steps=1, batch_size=1, lr=1e-3, warmup_steps=0).objective == Objective()
    assert all(isinstance(recipe.objective, Objective) for recipe in RECIPES.values())


def test_every_recipe_is_recorded_by_its_name():
    assert set(RECIPES) == {"quick-win", "quick-cifar10", "cifar10-cond", "fast", "walkthrough", "paper"}
    assert all(recipe.name == name and recipe.train.recipe == name for name, recipe in RECIPES.items())


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_recipe_builds_its_network_and_schedule(name):
    recipe = RECIPES[name]
    assert recipe.network == replace(PRESETS[recipe.preset], image_size=recipe.image_size)
    assert recipe.train == TrainConfig(train_steps=recipe.train_steps, batch_size=recipe.batch_size, lr=recipe.lr,
                                       warmup_steps=recipe.warmup_steps, ema_decay=recipe.ema_decay, recipe=name)
    schedule = recipe.noise_schedule()
    betas = (linear_betas(1000, 1e-4, 0.02) if recipe.schedule == "linear" else cosine_betas(1000)).double()
    assert schedule.kind == recipe.schedule and torch.equal(schedule.state_dict()["betas"], betas)


def test_a_shorter_linear_schedule_keeps_the_papers_end_point():
    """noise_schedule(T) for T < 1000: the paper's betas scaled by 1000 / T (NoiseSchedule.paper)."""
    short = replace(QUICK_WIN, schedule="linear").noise_schedule(100)
    assert short.state_dict()["betas"].equal(NoiseSchedule.paper(100).state_dict()["betas"])
    assert replace(QUICK_WIN, schedule="cosine").noise_schedule(100).kind == "cosine"


def test_the_papers_recipe_trains_l_simple():
    """What the paper recipe's network, schedule and objective train is Eq. 14 written out with the paper's betas
    (1e-4 to 0.02 over T = 1000): the mean of (eps - eps_theta(x_t, t))^2, every t weighed alike (float64)."""
    paper = RECIPES["paper"]
    assert paper.objective == Objective("eps", "uniform")
    torch.manual_seed(0)
    net = UNet(replace(MICRO, image_size=8)).double().eval()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps                                     # Eq. 4
    with torch.no_grad():
        inline = ((eps - net(x_t, t)) ** 2).mean()                                       # Eq. 14
        loss = diffusion_loss(net, paper.noise_schedule(), x0, paper.objective, t=t, noise=eps)
    torch.testing.assert_close(loss, inline)


def _objective(recipe) -> tuple:
    return recipe.objective.prediction, recipe.objective.weighting, recipe.schedule


def test_quick_cifar10_is_the_recipe_benchmarks_winner():
    """The recipe with the lowest mean FID after the full budget in docs/recipes/recipes.json (ddpm_lib's runs),
    on the optimiser settings that benchmark trained with (the quick win's)."""
    saved = json.loads((DOCS / "recipes" / "recipes.json").read_text())
    assert not saved["quick"]  # the full benchmark, not its first look
    fids = {}
    for result in saved["results"].values():
        run = result["run"]
        if not run["peer"]:
            fids.setdefault((run["prediction"], run["weighting"], run["schedule"]), []).append(
                result["scores"]["1.0"]["DPM-Solver++"]["fid"])
    best = min(fids, key=lambda objective: sum(fids[objective]) / len(fids[objective]))
    assert _objective(QUICK_CIFAR10) == best
    assert (QUICK_CIFAR10.preset, QUICK_CIFAR10.batch_size, QUICK_CIFAR10.lr, QUICK_CIFAR10.ema_decay) == (
        "tiny", QUICK_WIN.batch_size, QUICK_WIN.lr, QUICK_WIN.ema_decay)


def test_the_shipped_cpu_model_trains_the_benchmarks_winner_with_labels():
    """cifar10-cond: quick-cifar10's network and objective (the recipe benchmark's winner), class-conditional; the
    only recipe that conditions on labels."""
    cond = RECIPES["cifar10-cond"]
    assert _objective(cond) == _objective(QUICK_CIFAR10) and cond.preset == QUICK_CIFAR10.preset
    assert [name for name, recipe in RECIPES.items() if recipe.class_cond] == ["cifar10-cond"]


def test_the_quick_win_is_what_its_benchmark_measured():
    """docs/knobs/quick_win.json trained the quick win's recipe beside the paper's objective on the same settings."""
    saved = json.loads((DOCS / "knobs" / "quick_win.json").read_text())
    runs = {row["run"]["name"]: row["run"] for row in saved["runs"]}
    quick = runs["quick win"]
    assert (quick["prediction"], quick["loss_weighting"], quick["schedule"]) == _objective(QUICK_WIN)
    assert (runs["paper objective"]["prediction"], runs["paper objective"]["loss_weighting"],
            runs["paper objective"]["schedule"]) == ("eps", "uniform", "linear")
    for run in runs.values():
        assert (run["image_size"], run["train_steps"], run["batch_size"], run["lr"], run["warmup_steps"],
                run["ema_decay"]) == (QUICK_WIN.image_size, QUICK_WIN.train_steps, QUICK_WIN.batch_size, QUICK_WIN.lr,
                                      QUICK_WIN.warmup_steps, QUICK_WIN.ema_decay)
