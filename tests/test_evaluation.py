"""Evaluation while training: the same numbers from one evaluation to the next, each against an inline derivation;
keep-best keeps the best, across a resume; the train flags, their bad input, and the log that names the extractor."""
import json
from dataclasses import replace

import pytest
import torch
from helpers import MICRO, ChannelMeans, perturbed

import ddpm_lib.metrics
from ddpm_lib.checkpoint import BEST_NAME, read_checkpoint
from ddpm_lib.cli import main
from ddpm_lib.data import make_shapes
from ddpm_lib.evaluation import Evaluator
from ddpm_lib.metrics import fid_kid
from ddpm_lib.objective import Denoiser, Objective
from ddpm_lib.samplers import generate_images
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.tolerance import assert_close
from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import UNet
from ddpm_lib.utils import to_model_range

T = 100


@pytest.fixture(scope="module")
def sets():
    """Training images (the reference) and other shapes (held out)."""
    return make_shapes(24, size=16, seed=1)[0], make_shapes(12, size=16, seed=2)[0]


def evaluator(sets, tmp_path, **kw):
    train, held = sets
    return Evaluator(train, held, ChannelMeans(), reference_key="shapes", cache_dir=tmp_path / "cache",
                     held_out_name="shapes test split", sample_steps=5, **kw)


@pytest.mark.parametrize("prediction, weighting", [("eps", "uniform"), ("x0", "min-snr"), ("v", "min-snr")])
def test_an_evaluation_is_fid_kid_of_seeded_samples_and_the_loss_at_fixed_t_and_noise(sets, tmp_path, prediction,
                                                                                       weighting):
    torch.manual_seed(0)
    model = perturbed(UNet(MICRO))
    schedule = NoiseSchedule.linear(T)
    denoiser = Denoiser(model, schedule, Objective(prediction, weighting, 5.0))
    ev = evaluator(sets, tmp_path)
    first, again = ev(denoiser, 6), ev(denoiser, 6)
    assert {k: v for k, v in first.items() if k != "eval_s"} == {k: v for k, v in again.items() if k != "eval_s"}
    assert first["extractor"] == "ChannelMeans" and first["val_on"] == "12 of the shapes test split"
    assert first["eval_s"] > 0 and (first["n"], first["sampler"], first["sample_steps"]) == (6, "dpm-solver", 5)
    # FID and KID: torchmetrics' on the same seeded samples (the cache holds the reference's features)
    samples = generate_images(denoiser, 6, sampler="dpm-solver", sample_steps=5, seed=0)
    direct = fid_kid(sets[0], samples, ChannelMeans())
    assert (first["fid"], first["kid"], first["kid_std"]) == (direct["fid"], direct["kid_mean"], direct["kid_std"])
    # the validation loss, inline: t_i = i T / m, the noise of seed 0, Eq. 4, the target and min-SNR's weight
    # (min(SNR, 5) on x0's error: / SNR for eps, / (SNR + 1) for v)
    x0 = to_model_range(sets[1])
    t = torch.arange(12) * T // 12
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    abar = torch.cumprod(1 - schedule.state_dict()["betas"], 0)[t].view(-1, 1, 1, 1)  # float64 from the betas
    x_t = (abar.sqrt() * x0 + (1 - abar).sqrt() * noise).float()
    with torch.no_grad():
        out = model(x_t, t).double()
    target = {"eps": noise.double(), "x0": x0.double(),
              "v": abar.sqrt() * noise.double() - (1 - abar).sqrt() * x0.double()}[prediction]
    snr = (abar / (1 - abar)).view(-1)
    weight = (snr.clamp(max=5) / {"eps": snr, "x0": 1, "v": snr + 1}[prediction] if weighting == "min-snr"
              else torch.ones(12))
    inline = (((target - out) ** 2).mean((1, 2, 3)) * weight).mean()
    assert_close(torch.tensor(first["val_loss"]), inline.float(), reduction=x0[0].numel(),
                 why="the mean of 3x16x16 squared errors per image, float32 against float64")
    model.train()  # dropout 0.1 in MICRO: the validation loss is taken without it, and the mode comes back
    assert ev.validation_loss(denoiser) == first["val_loss"] and model.training
    # the objective decides the loss: the same network read as another prediction scores otherwise
    other = Denoiser(model, schedule, Objective("x0" if prediction != "x0" else "eps", weighting))
    assert ev.validation_loss(other) != first["val_loss"]


def test_evaluator_checks_its_images(sets):
    with pytest.raises(ValueError, match="reference must be a uint8 tensor"):
        Evaluator(sets[0].float(), sets[1], ChannelMeans())
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        Evaluator(*sets, ChannelMeans())(Denoiser(UNet(MICRO), NoiseSchedule.linear(T)), 1)


class Scripted:
    """An evaluator whose FID at each step is given: what keep-best does with it is the subject. It checks that it
    is given the trainer's denoiser: the EMA network with the run's schedule and objective."""

    def __init__(self, fids):
        self.fids, self.trainer = fids, None

    def __call__(self, denoiser, n):
        trainer = self.trainer
        assert isinstance(denoiser, Denoiser) and denoiser.net is trainer.ema and n == trainer.config.eval_n
        assert denoiser.schedule is trainer.schedule and denoiser.objective == trainer.objective == OBJECTIVE
        return {"fid": self.fids[trainer.step], "eval_s": 0.25}


OBJECTIVE = Objective("x0", "min-snr", 5.0)  # the keep-best runs' (restored on resume)


def run(tmp_path, steps, fids, **kw):
    torch.manual_seed(0)
    config = TrainConfig(batch_size=4, train_steps=steps, warmup_steps=0, log_every=1, sample_every=0,
                         checkpoint_every=0,
                         eval_every=2, eval_n=4, keep_best=True, milestones=(2, 4, 6, 8), out_dir=str(tmp_path),
                         progress=False, **kw)
    trainer = Trainer(UNet(MICRO), NoiseSchedule.linear(T), config, OBJECTIVE, device="cpu")
    return attach(trainer, fids)


def attach(trainer, fids):
    trainer.evaluator = Scripted(fids)
    trainer.evaluator.trainer = trainer
    return trainer


def assert_best_is(tmp_path, step):
    best, numbered = (read_checkpoint(tmp_path / name) for name in (BEST_NAME, f"checkpoint-{step:07d}.pt"))
    assert best["step"] == step and best["evaluation"]["best"]["step"] == step
    assert all(torch.equal(best["ema"][k], v) for k, v in numbered["ema"].items())


def test_keep_best_keeps_the_checkpoint_of_the_lowest_fid_also_across_a_resume(tmp_path, sets):
    images = sets[0]
    trainer = run(tmp_path, 6, {2: 5.0, 4: 3.0, 6: 4.0}).fit(images)
    assert_best_is(tmp_path, 4)
    lines = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["fid"], e["best_step"]) for e in lines] == [(2, 5.0, 2), (4, 3.0, 4), (6, 4.0, 4)]
    assert [e["eval_s_total"] for e in lines] == [0.25, 0.5, 0.75] and trainer.eval_seconds == 0.75
    resumed = attach(Trainer.load(tmp_path, device="cpu", train_steps=8), {8: 3.5})
    assert resumed.best == {"step": 4, "fid": 3.0} and resumed.eval_seconds == 0.75
    resumed.fit(images)
    assert_best_is(tmp_path, 4)  # 3.5 is not below 3.0
    resumed = attach(Trainer.load(tmp_path, device="cpu", train_steps=10), {10: 2.0})
    resumed.config = replace(resumed.config, milestones=(10,))
    resumed.fit(images)
    assert_best_is(tmp_path, 10)


def test_evaluation_needs_an_evaluator_and_samples():
    with pytest.raises(ValueError, match="TrainConfig.eval_n must be >= 2 with eval_every=5"):
        TrainConfig(eval_every=5, eval_n=1)
    with pytest.raises(ValueError, match="TrainConfig.keep_best needs eval_every > 0"):
        TrainConfig(keep_best=True)
    trainer = Trainer(UNet(MICRO), NoiseSchedule.linear(T), TrainConfig(eval_every=1, train_steps=1, out_dir=None))
    with pytest.raises(ValueError, match="needs Trainer.evaluator"):
        trainer.fit(make_shapes(4, size=16)[0])


def test_train_evaluates_with_the_extractor_it_names(tmp_path, monkeypatch, capsys, one_thread):
    """--eval-every on shapes, Inception stood in for: eval.jsonl at the evaluation steps, held-out shapes, the
    best checkpoint kept; the log says which extractor."""
    monkeypatch.setattr(ddpm_lib.metrics, "inception_extractor", lambda *args, **kwargs: ChannelMeans())
    monkeypatch.setenv("DDPM_LIB_CACHE", str(tmp_path / "cache"))
    rc = main(["train", "--preset", "tiny", "--data", "shapes", "--n-images", "8", "--image-size", "16",
               "--train-steps", "4", "--batch-size", "4", "--eval-every", "2", "--eval-n", "4", "--keep-best",
               "--num-timesteps", "50", "--device", "cpu", "--no-progress", "--sample-every", "0",
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "FID/KID with ChannelMeans features against 8 training images; loss on 256 images of the shapes test" in err
    lines = [json.loads(line) for line in (tmp_path / "r" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [2, 4] and {e["extractor"] for e in lines} == {"ChannelMeans"}
    assert all(e["val_on"] == "256 of the shapes test split" and e["n"] == 4 for e in lines)
    best = min(lines, key=lambda e: e["fid"])
    assert read_checkpoint(tmp_path / "r" / BEST_NAME)["step"] == best["step"]


def test_train_without_the_inception_weights_is_one_line_before_any_data(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise FileNotFoundError("could not download the Inception weights for FID/KID (no network)")

    monkeypatch.setattr(ddpm_lib.metrics, "inception_extractor", offline)
    rc = main(["train", "--preset", "tiny", "--data", str(tmp_path / "no_such_folder"), "--train-steps", "2",
               "--eval-every", "1", "--device", "cpu", "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert rc != 0 and err.count("\n") == 1 and "--eval-every: could not download the Inception weights" in err
    assert not (tmp_path / "r").exists()


def test_evaluations_reach_tensorboard_and_a_resume_drops_those_after_its_checkpoint(tmp_path, sets):
    """Events under eval/ at the evaluation steps; a run resumed from step 2 after one that evaluated at 4 holds
    each evaluation once, in eval.jsonl and in the events."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    import shutil

    run(tmp_path, 4, {2: 5.0, 4: 3.0}, logger="tensorboard").fit(sets[0])
    shutil.copy(tmp_path / "checkpoint-0000002.pt", tmp_path / "checkpoint.pt")  # as if killed before step 4's
    attach(Trainer.load(tmp_path, device="cpu", train_steps=4), {4: 2.5}).fit(sets[0])
    lines = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e["fid"]) for e in lines] == [(2, 5.0), (4, 2.5)]
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/fid")] == [(2, 5.0), (4, 2.5)]
    assert [e.value for e in events.Scalars("eval/eval_s")] == [0.25, 0.25]
