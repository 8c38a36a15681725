"""ddpm_lib.shipped: the weights that ship with the package, written from a checkpoint and read back offline."""
import dataclasses
import json
import shutil

import pytest
import torch
from helpers import MICRO

from ddpm_lib.recipes import RECIPES, X0_MIN_SNR
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.shipped import SHIPPED_MODEL, card_path, load_shipped_model, read_card, sha256_of, ship_model
from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import UNet


@pytest.fixture
def run(tmp_path, one_thread):
    """A two-step class-conditional run on MICRO with cifar10-cond's objective (x0, min-SNR-5): its trainer."""
    config = TrainConfig(train_steps=2, batch_size=2, warmup_steps=0, out_dir=str(tmp_path / "run"), sample_every=0,
                         progress=False, recipe="cifar10-cond")
    torch.manual_seed(0)
    trainer = Trainer(UNet(dataclasses.replace(MICRO, num_classes=3)), NoiseSchedule.cosine(10), config, X0_MIN_SNR,
                      device="cpu")
    trainer.fit(torch.randint(0, 256, (4, 3, MICRO.image_size, MICRO.image_size), dtype=torch.uint8),
                torch.tensor([0, 1, 2, 0]))
    return trainer


def test_ship_model_keeps_the_ema_in_float16_and_reads_back(run, tmp_path):
    out = ship_model(run.config.out_dir, tmp_path / "m.pt", {"machine": "a test"})
    card = json.loads(card_path(out).read_text())
    assert card == {"step": 2, "recipe": "cifar10-cond", "machine": "a test", "sha256": sha256_of(out)}
    denoiser, read = load_shipped_model(out, device="cpu")
    model, schedule = denoiser.net, denoiser.schedule
    assert read == card and not model.training and model.config == run.model.config
    assert denoiser.objective == run.objective == X0_MIN_SNR
    for name, value in run.ema.state_dict().items():  # each weight rounded once to float16, nothing else
        expected = value.half().float() if value.is_floating_point() else value
        torch.testing.assert_close(model.state_dict()[name], expected, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(schedule.alphas_cumprod, run.schedule.alphas_cumprod, rtol=0, atol=0)
    assert schedule.kind == "cosine"


def test_a_changed_or_missing_shipped_file_fails_clearly(run, tmp_path):
    out = ship_model(run.config.out_dir, tmp_path / "m.pt")
    bad = tmp_path / "bad.pt"
    shutil.copy(card_path(out), card_path(bad))
    bad.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # what a clone without LFS holds
    with pytest.raises(ValueError, match=r"bad.pt: sha256 .* is not its card's .*git-lfs pointer"):
        load_shipped_model(bad)
    with pytest.raises(FileNotFoundError, match="shipped weights not found: .*missing.pt"):
        read_card(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"  # right sha256, wrong contents: a plain tensor file
    torch.save({"a": torch.zeros(1)}, other)
    card_path(other).write_text(json.dumps({"sha256": sha256_of(other)}))
    with pytest.raises(ValueError, match="is not a shipped ddpm_lib model"):
        load_shipped_model(other)
    older = tmp_path / "older.pt"  # right sha256, shipped by a ddpm_lib whose networks said what they predict
    state = torch.load(out, weights_only=True)
    del state["objective"]
    torch.save(state, older)
    card_path(older).write_text(json.dumps({"sha256": sha256_of(older)}))
    with pytest.raises(ValueError, match="older.pt is a shipped ddpm_lib model without objective .*ship_model"):
        load_shipped_model(older)


def test_the_shipped_model_is_its_recipes_network_objective_and_schedule():
    denoiser, card = load_shipped_model(device="cpu")
    model, schedule, recipe = denoiser.net, denoiser.schedule, RECIPES[card["recipe"]]
    assert card["recipe"] == "cifar10-cond" and card["sha256"] == sha256_of(SHIPPED_MODEL)
    assert {"machine", "command", "train_minutes"} <= set(card)
    assert model.config == dataclasses.replace(recipe.network, num_classes=10)
    assert denoiser.objective == recipe.objective == X0_MIN_SNR
    torch.testing.assert_close(schedule.betas, recipe.noise_schedule().betas, rtol=0, atol=0)
    x_t = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the label matters: a trained class-conditional network answers to it
        out = model(x_t, torch.tensor([500, 500]), torch.tensor([0, 1]))
        swapped = model(x_t, torch.tensor([500, 500]), torch.tensor([1, 0]))
    assert (out - swapped).abs().max() > 1e-3
