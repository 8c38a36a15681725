"""Trainer: exact resume, EMA warm-up, precision by device, class-conditional training, non-finite losses,
and real learning on shapes."""
import copy
import dataclasses
import json
import math
import warnings
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import MICRO
from PIL import Image
from torch import nn

import ddpm_lib.runtime
import ddpm_lib.train
from ddpm_lib.checkpoint import load_model, read_checkpoint
from ddpm_lib.record import CONFIG_NAME
from ddpm_lib.data import SHAPE_KINDS, DataInfo, DeviceBatches, make_shapes
from ddpm_lib.guidance import GuidedDenoiser
from ddpm_lib.objective import Denoiser, Objective, diffusion_loss
from ddpm_lib.utils import mix_seed
from ddpm_lib.samplers import ddim_sample
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.tolerance import assert_close
from ddpm_lib.runtime import autocast_dtype, precision_dtype
from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import UNet, UNetConfig, unet_from_preset


def make_trainer(out_dir, train_steps, dropout=0.1, num_classes=None, device="cpu", prediction="eps",
                 weighting="uniform",
                 snr_gamma=5.0, **kw):
    """A MICRO trainer on T = 100 linear betas; prediction, weighting and snr_gamma make its Objective, the rest
    are TrainConfig fields."""
    torch.manual_seed(0)
    kw = {"warmup_steps": 3, "log_every": 2, "sample_every": 0, "checkpoint_every": 0, **kw}
    config = TrainConfig(batch_size=8, train_steps=train_steps, out_dir=None if out_dir is None else str(out_dir),
                         progress=False, **kw)
    model = UNet(replace(MICRO, dropout=dropout, num_classes=num_classes))
    return Trainer(model, NoiseSchedule.linear(100), config, Objective(prediction, weighting, snr_gamma),
                   device=device)


@pytest.fixture(scope="module")
def images():
    return make_shapes(40, size=16, seed=1)[0]


@pytest.fixture(scope="module")
def labelled():
    return make_shapes(40, size=16, seed=1)  # (images, labels = shape kind 0..2)


def assert_same_state(a, b):
    for name, x in a.model.state_dict().items():
        assert torch.equal(x, b.model.state_dict()[name]), name
    for name, x in a.ema.state_dict().items():
        assert torch.equal(x, b.ema.state_dict()[name]), name
    for p, q in zip(a.optimizer.state_dict()["state"].values(), b.optimizer.state_dict()["state"].values()):
        for key in p:
            assert torch.equal(p[key], q[key]), key


def test_config_validates_fields():
    for field, bad in [("lr", 0.0), ("batch_size", 0), ("train_steps", -1), ("grad_clip", -1.0), ("log_every", 0),
                       ("warmup_steps", -5), ("sample_steps", 0), ("ema_decay", 1.0), ("cond_drop_prob", 1.0),
                       ("cond_drop_prob", -0.1)]:
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: bad})
    for field, bad in [("weighting", "min_snr"), ("snr_gamma", 0.0), ("snr_gamma", -5.0), ("snr_gamma", float("inf")),
                       ("snr_gamma", True)]:  # the loss weighting is the objective's now
        with pytest.raises(ValueError, match=f"Objective.{field}"):
            Objective(**{field: bad})
    paper = TrainConfig()
    assert (paper.lr, paper.warmup_steps, paper.batch_size, paper.grad_clip, paper.ema_decay, paper.flip) == (
        2e-4, 5000, 128, 1.0, 0.9999, True)
    trainer = Trainer(UNet(MICRO), NoiseSchedule.linear(10), TrainConfig(out_dir=None, progress=False), device="cpu")
    assert trainer.objective == Objective("eps", "uniform")  # L_simple (Eq. 14)
    for cls, gone in [(TrainConfig, "loss_weighting"), (TrainConfig, "snr_gamma"), (UNetConfig, "prediction")]:
        assert gone not in {f.name for f in dataclasses.fields(cls)}  # one record of the objective, not three
    with pytest.raises(ValueError, match="objective: expected an Objective, got str"):
        Trainer(UNet(MICRO), None, TrainConfig(out_dir=None), "eps", device="cpu")


def test_default_schedule_is_the_papers():
    trainer = Trainer(UNet(MICRO), None, TrainConfig(out_dir=None, progress=False), device="cpu")
    paper = torch.from_numpy(np.linspace(1e-4, 0.02, 1000))  # Sec. 4: T = 1000, beta_1 = 1e-4 .. beta_T = 0.02
    torch.testing.assert_close(trainer.schedule.state_dict()["betas"], paper, rtol=1e-12, atol=0)


@pytest.mark.parametrize("num_classes, prediction, weighting", [
    (None, "eps", "uniform"), (3, "eps", "uniform"), (None, "v", "min-snr"), (None, "x0", "min-snr")])
def test_resume_is_bit_exact_on_cpu(tmp_path, images, labelled, num_classes, prediction, weighting):
    """6 steps straight == 3 steps, checkpoint, load, 3 more: weights, EMA, Adam state, losses (dropout and,
    for a class-conditional model, label drops on), for every prediction target and weighting. No RNG state is
    stored: every draw comes from the step."""
    data = (images, None) if num_classes is None else labelled
    run = dict(num_classes=num_classes, cond_drop_prob=0.3, prediction=prediction, weighting=weighting,
               snr_gamma=2.5)
    straight = make_trainer(tmp_path / "a", train_steps=6, **run).fit(*data)
    first = make_trainer(tmp_path / "b", train_steps=3, **run).fit(*data)
    objective = Objective(prediction, weighting, 2.5)
    assert "rng" not in read_checkpoint(tmp_path / "b") and read_checkpoint(tmp_path / "b")["objective"] == {
        "prediction": prediction, "weighting": weighting, "snr_gamma": 2.5}
    torch.manual_seed(123)  # the global RNG outside the trainer must not matter
    resumed = Trainer.load(tmp_path / "b", device="cpu", train_steps=6).fit(*data)
    assert resumed.objective == objective and resumed.denoiser.objective == objective  # restored, not the default
    assert resumed.step == straight.step == 6
    assert_same_state(straight, resumed)
    assert straight.history[3:] == resumed.history
    assert straight.history[:3] == first.history
    # the loss log is continued, one line per step
    lines = (tmp_path / "b" / "loss.jsonl").read_text().splitlines()
    assert len(lines) == 6 and lines == (tmp_path / "a" / "loss.jsonl").read_text().splitlines()


@pytest.mark.parametrize("prediction, weighting, num_classes", [("v", "min-snr", None), ("x0", "min-snr", 3),
                                                                ("eps", "uniform", None)])
def test_the_step_loss_is_diffusion_loss_of_the_models_target_and_weighting(labelled, prediction, weighting,
                                                                           num_classes):
    """The Trainer's first loss equals diffusion_loss of the trainer's objective (prediction and weighting) with
    the step's own t and eps (drawn from (seed, step)), also for a class-conditional model (labels bound)."""
    images, labels = labelled
    trainer = make_trainer(None, train_steps=1, dropout=0.0, num_classes=num_classes, prediction=prediction,
                           weighting=weighting, snr_gamma=2.0, flip=False, cond_drop_prob=0.0)
    model = copy.deepcopy(trainer.model)
    batches = trainer._batches(images, None if num_classes is None else labels)
    x0, y = batches.batch(0), batches.batch_labels(0)
    g = torch.Generator().manual_seed(mix_seed("noise", trainer.config.seed, 0))
    t = torch.randint(0, 100, (8,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    net = model if y is None else (lambda x_t, t_: model(x_t, t_, y))
    with torch.no_grad():
        expected = diffusion_loss(net, trainer.schedule, x0, Objective(prediction, weighting, 2.0), t=t, noise=eps)
    loss = trainer.train_step(x0, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # the same float32 sums in the same order


def _path_terms(model, pixels: int) -> int:
    """Terms summed along a gradient's longest path: every conv's C_in x k x k on the way in (the forward),
    then the batch's pixels (a weight gradient sums over them)."""
    return pixels + sum(m.weight[0].numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("num_classes", [None, 3])
def test_grad_accum_equals_one_big_batch(images, labelled, num_classes):
    """grad_accum=4: four micro-batches of 2 make one optimizer step equal to one batch of 8 (dropout off):
    the same loss, the same clipped gradient and, after 3 steps, the same weights, to floating-point tolerance;
    label drops and noise are the big batch's rows."""
    data = (images, None) if num_classes is None else labelled
    run = dict(dropout=0.0, num_classes=num_classes, cond_drop_prob=0.5, train_steps=3)
    big, accum = make_trainer(None, **run), make_trainer(None, grad_accum=4, **run)
    batches = big._batches(*data)
    x0, y = batches.batch(0), batches.batch_labels(0)
    losses = [t.train_step(x0, y) for t in (big, accum)]
    terms = _path_terms(big.model, x0[:, 0].numel())
    assert_close(losses[1], losses[0], reduction=terms, why="the loss: the big batch's mean as 4 means of 2")
    for (name, g_big), g_acc in zip(big.model.named_parameters(), (p.grad for p in accum.model.parameters())):
        assert_close(g_acc, g_big.grad, reduction=terms, why=f"{name}: 4 micro-batch gradients summed")
    for t in (big, accum):
        t.fit(*data)
    for (name, w_big), w_acc in zip(big.model.state_dict().items(), accum.model.state_dict().values()):
        torch.testing.assert_close(w_acc, w_big, rtol=1e-4, atol=1e-5, msg=name)  # Adam divides by sqrt(v): as DDP
    assert [s for s, _ in accum.history] == [s for s, _ in big.history]


def test_grad_accum_resumes_bit_exact_and_is_checked(tmp_path, images):
    straight = make_trainer(tmp_path / "a", train_steps=4, grad_accum=2).fit(images)
    make_trainer(tmp_path / "b", train_steps=2, grad_accum=2).fit(images)
    resumed = Trainer.load(tmp_path / "b", device="cpu", train_steps=4).fit(images)
    assert resumed.config.grad_accum == 2
    assert_same_state(straight, resumed)
    with pytest.raises(ValueError, match="TrainConfig.grad_accum must be > 0"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="grad_accum must divide batch_size=8 into equal micro-batches, got 3"):
        TrainConfig(batch_size=8, grad_accum=3)


def test_precision_picks_the_autocast_dtype_and_refuses_bf16_without_it(monkeypatch):
    assert precision_dtype("fp32", "cpu") is None and precision_dtype("auto", "cpu") is autocast_dtype("cpu")
    assert precision_dtype("bf16", "cpu") is torch.bfloat16 and precision_dtype("fp16", "cpu") is torch.float16
    assert make_trainer(None, train_steps=1, precision="bf16").amp_dtype is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert precision_dtype("auto", "cuda") is torch.float16
    with pytest.raises(ValueError) as caught:
        precision_dtype("bf16", "cuda")
    message = str(caught.value)
    assert message.count("\n") == 0 and "Tesla T4 (compute capability 7.5) has no bfloat16" in message
    with pytest.raises(ValueError, match="TrainConfig.precision must be one of"):
        TrainConfig(precision="fp8")


def test_keep_last_and_milestones_keep_numbered_checkpoints(tmp_path, images):
    """checkpoint.pt is the latest; checkpoint-<step>.pt the last keep_last and every milestone, each the run at
    that step (a milestone off the checkpoint_every grid is saved too); resuming from a kept one works."""
    trainer = make_trainer(tmp_path, train_steps=7, checkpoint_every=2, keep_last=2, milestones=(3, 4))
    trainer.fit(images)
    kept = {p.name: read_checkpoint(p)["step"] for p in tmp_path.glob("checkpoint*.pt")}
    assert kept == {"checkpoint.pt": 7, "checkpoint-0000006.pt": 6, "checkpoint-0000007.pt": 7,
                    "checkpoint-0000003.pt": 3, "checkpoint-0000004.pt": 4}
    again = Trainer.load(tmp_path / "checkpoint-0000004.pt", device="cpu", train_steps=7,
                         out_dir=str(tmp_path / "again"))
    assert_same_state(trainer, again.fit(images))  # the kept step-4 state continues to the same run
    with pytest.raises(ValueError, match="TrainConfig.keep_last must be None or an int >= 1, got 0"):
        TrainConfig(keep_last=0)
    with pytest.raises(ValueError, match="TrainConfig.milestones must be a tuple of steps >= 1"):
        TrainConfig(milestones=(0, 5))


def test_fit_leaves_the_callers_rng_alone(images):
    trainer = make_trainer(None, train_steps=2)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    trainer.fit(images)
    assert torch.equal(torch.get_rng_state(), before)


def test_dropout_is_reseeded_from_seed_step_and_rank(images):
    """The global RNG the dropout layers draw from is seeded from mix_seed("dropout", seed, step, rank) at
    every step: nothing to store for resuming, and different masks at every step."""
    trainer = make_trainer(None, train_steps=2, seed=5)
    states = []
    trainer.model.register_forward_pre_hook(lambda module, args: states.append(torch.get_rng_state()))
    trainer.fit(images)
    for step, state in enumerate(states):
        torch.manual_seed(mix_seed("dropout", 5, step, 0))
        assert torch.equal(state, torch.get_rng_state())
    assert not torch.equal(states[0], states[1])


def test_fit_takes_device_batches(images, labelled):
    """A DeviceBatches built once (kept on the device between fit calls) trains exactly like the images."""
    a = make_trainer(None, train_steps=2).fit(images)
    b = make_trainer(None, train_steps=2).fit(DeviceBatches(images, 8, device="cpu", seed=0))
    assert_same_state(a, b)
    with pytest.raises(ValueError, match="pass them to DeviceBatches"):
        make_trainer(None, train_steps=1, num_classes=3).fit(DeviceBatches(labelled[0], 8), labelled[1])


def test_lr_warmup_and_clip_follow_the_recipe(images):
    """One update: lr = lr * 1/warmup; the global grad norm is clipped to grad_clip."""
    trainer = make_trainer(None, train_steps=1, grad_clip=1e-3, dropout=0.0)
    trainer.fit(images)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 / 3)
    # Adam's first step moves every weight by ~lr whatever the gradient scale, so check the clip directly:
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 1e-3 * (1 + 1e-4)


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_follows_the_hand_computed_recurrence(images, warmup):
    """ema_{n+1} = d_n ema_n + (1 - d_n) w_{n+1}, d_n = min(decay, (1 + n) / (10 + n)) with warm-up (n = 0, 1,
    ... the updates done before), d_n = decay without. decay 0.2 is reached at n = 2 (0.25 > 0.2)."""
    trainer = make_trainer(None, train_steps=4, ema_decay=0.2, ema_warmup=warmup, dropout=0.0)
    ema = [p.detach().clone() for p in trainer.model.parameters()]  # the EMA starts as the initial weights
    for n in range(4):
        trainer.fit(images, train_steps=n + 1)
        d = min(0.2, (1 + n) / (10 + n)) if warmup else 0.2
        ema = [d * e + (1 - d) * w.detach() for e, w in zip(ema, trainer.model.parameters())]
        for e, expected in zip(trainer.ema.parameters(), ema):
            torch.testing.assert_close(e, expected)
            assert e.is_leaf and not e.requires_grad and e.grad_fn is None  # the update built no graph


class Toy(nn.Module):
    """A 1x1 convolution as eps-predictor (the trainer's default objective): 500 steps in a second."""
    config = SimpleNamespace(num_classes=None)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x, t):
        return self.conv(x)


def test_ema_warmup_tracks_the_weights_early(one_thread):
    """After 500 steps the paper's constant 0.9999 EMA is still ~95% the initial weights; the warmed-up one
    (decay (1+n)/(10+n) ~ 0.98 by then) is close to the trained weights. Measured: gap 0.96 vs 0.02."""
    images, _ = make_shapes(64, size=8, seed=0)
    gaps = {}
    for warmup in (True, False):
        torch.manual_seed(0)
        config = TrainConfig(lr=1e-2, warmup_steps=0, batch_size=8, train_steps=500, ema_warmup=warmup,
                             log_every=500, out_dir=None, progress=False)
        trainer = Trainer(Toy(), NoiseSchedule.linear(100), config, device="cpu")
        w0 = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        trainer.fit(images)
        w = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        ema = torch.cat([p.flatten() for p in trainer.ema.parameters()])
        gaps[warmup] = ((ema - w).norm() / (w0 - w).norm()).item()  # 0: EMA = weights, 1: EMA = init
    assert gaps[False] > 0.9 and gaps[True] < 0.2 * gaps[False], gaps


@pytest.mark.parametrize("capability, expected", [((7, 0), torch.float16), ((7, 5), torch.float16),
                                                  ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16),
                                                  ((9, 0), torch.bfloat16)])
def test_autocast_dtype_follows_the_cards_compute_capability(monkeypatch, capability, expected):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    assert autocast_dtype("cuda:1") is expected
    assert asked == [torch.device("cuda:1")]  # the capability of THAT card


@pytest.mark.parametrize("capability, on", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_tf32_is_enabled_from_ampere_on_and_never_off_cuda(monkeypatch, capability, on):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32  # process-wide: restored
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        assert ddpm_lib.runtime.enable_tf32("cuda") is on
        assert torch.backends.cuda.matmul.allow_tf32 is on and torch.backends.cudnn.allow_tf32 is on
        assert ddpm_lib.runtime.enable_tf32("cpu") is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_autocast_dtype_is_fp32_off_cuda():
    assert autocast_dtype("cpu") is None and autocast_dtype(torch.device("mps")) is None


def test_fp16_with_grad_scaler_trains(images):
    """The fp16 path (pre-Ampere cards) end to end on the CPU: autocast in float16, loss scaled by the
    GradScaler, gradients unscaled before the clip, finite losses, weights updated."""
    trainer = make_trainer(None, train_steps=3, log_every=1, dropout=0.0, precision="fp16")
    assert trainer.amp_dtype is torch.float16 and trainer.scaler.is_enabled()
    ratios = []
    real_scale = trainer.scaler.scale

    def spy(loss):  # backward runs on the scaled loss
        scaled = real_scale(loss)
        ratios.append((scaled.detach() / loss.detach()).item())
        return scaled

    trainer.scaler.scale = spy
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit(images)
    assert all(math.isfinite(loss) for _, loss in trainer.history) and len(trainer.history) == 3
    assert len(ratios) == 3 and all(r >= 2 ** 8 and math.log2(r).is_integer() for r in ratios), ratios
    assert trainer.scaler.get_scale() <= 65536.0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert make_trainer(None, train_steps=1, precision="fp32").amp_dtype is None


def test_resume_on_another_card_says_the_precision_changed(tmp_path, images, monkeypatch):
    """A checkpoint records its autocast dtype; resuming in another one says so in one line, and the fp16
    GradScaler's scale travels with the checkpoint."""
    monkeypatch.setattr(ddpm_lib.runtime, "autocast_dtype", lambda device: torch.float16)
    make_trainer(tmp_path, train_steps=2).fit(images)
    assert read_checkpoint(tmp_path)["amp_dtype"] == "float16"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = Trainer.load(tmp_path, device="cpu")
    assert not caught and same.scaler.get_scale() == read_checkpoint(tmp_path)["scaler"]["scale"]
    monkeypatch.setattr(ddpm_lib.runtime, "autocast_dtype", lambda device: torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer.load(tmp_path, device="cpu")
    assert [str(w.message).count("\n") for w in caught] == [0]
    assert "precision changed from float16 to bfloat16" in str(caught[0].message)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "auto", "bf16"])
def test_mixed_precision_steps_on_a_gpu(images, precision):
    """Real autocast steps on the GPU: fp16 + GradScaler, the card's own choice (bf16 + TF32 on Ampere and
    later, fp16 + GradScaler before), and bf16 where the card has it (refused in one line where not)."""
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        with pytest.raises(ValueError, match="has no bfloat16"):
            make_trainer(None, train_steps=4, device="cuda", precision="bf16")
        return
    trainer = make_trainer(None, train_steps=4, log_every=1, device="cuda", precision=precision)
    expected = {"fp16": torch.float16, "bf16": torch.bfloat16, "auto": autocast_dtype("cuda")}[precision]
    assert trainer.amp_dtype is expected and trainer.scaler.is_enabled() == (expected is torch.float16)
    trainer.fit(images)
    assert len(trainer.history) == 4 and all(math.isfinite(loss) for _, loss in trainer.history)
    if expected is torch.float16:
        assert trainer.scaler.get_scale() <= 65536.0
    if torch.cuda.get_device_capability() >= (8, 0):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_class_conditional_training_drops_labels(labelled):
    """y = the batch's labels, a fraction cond_drop_prob of them replaced by -1 (no label)."""
    images, labels = labelled
    trainer = make_trainer(None, train_steps=4, num_classes=3, cond_drop_prob=0.5)
    seen = []
    trainer.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["y"].clone()),
                                            with_kwargs=True)
    trainer.fit(images, labels)
    batches = DeviceBatches(images, 8, device="cpu", seed=0, labels=labels)
    dropped = 0
    for step, y in enumerate(seen):
        kept = y != -1
        assert torch.equal(y[kept], batches.batch_labels(step)[kept])
        dropped += int((~kept).sum())
    assert 0.25 < dropped / 32 < 0.75, dropped


def test_labels_must_fit_the_model(images, labelled):
    with pytest.raises(ValueError, match="unconditional"):
        make_trainer(None, train_steps=1).fit(*labelled)
    conditional = make_trainer(None, train_steps=1, num_classes=3)
    with pytest.raises(ValueError, match="class-conditional"):
        conditional.fit(images)
    with pytest.raises(ValueError, match=r"labels \(UNetConfig.num_classes=3\): expected labels in \[0, 3\); "
                                         r"got \[3\]"):
        conditional.fit(labelled[0], (labelled[1] + 1).tolist())  # kinds 1..3, as a list


def test_conditional_sample_grids_use_balanced_labels(tmp_path, labelled, monkeypatch):
    calls = []
    monkeypatch.setattr(ddpm_lib.train, "ddim_sample",
                        lambda denoiser, *args, **kwargs: calls.append(denoiser) or ddim_sample(denoiser, *args,
                                                                                                **kwargs))
    trainer = make_trainer(tmp_path, train_steps=1, num_classes=3, sample_every=1, sample_n=5, sample_steps=2,
                           prediction="v")
    trainer.fit(*labelled)
    grid = calls[0]  # guided(the EMA's denoiser, y): the conditional model
    assert isinstance(grid, GuidedDenoiser) and grid.y.tolist() == [0, 1, 2, 0, 1] and grid.scale == 1
    assert grid.denoiser.net is trainer.ema and grid.denoiser.objective == Objective("v")
    assert (tmp_path / "samples" / "step_0000001.png").is_file()


def test_the_trainers_denoiser_is_the_ema_with_the_runs_schedule_and_objective(tmp_path, images, monkeypatch):
    """trainer.denoiser: what sample grids and evaluations use; an unconditional grid samples it as it is."""
    calls = []
    monkeypatch.setattr(ddpm_lib.train, "ddim_sample",
                        lambda denoiser, *args, **kwargs: calls.append(denoiser) or ddim_sample(denoiser, *args,
                                                                                                **kwargs))
    trainer = make_trainer(tmp_path, train_steps=1, sample_every=1, sample_n=4, sample_steps=2, prediction="x0",
                           weighting="min-snr", snr_gamma=3.0)
    denoiser = trainer.denoiser
    assert isinstance(denoiser, Denoiser) and denoiser.net is trainer.ema and denoiser.schedule is trainer.schedule
    assert denoiser.objective is trainer.objective == Objective("x0", "min-snr", 3.0)
    trainer.fit(images)
    assert len(calls) == 1 and isinstance(calls[0], Denoiser) and calls[0].net is trainer.ema
    assert calls[0].objective == trainer.objective


def test_the_objective_is_in_the_checkpoint_and_in_config_json(tmp_path, images):
    """The run's objective as Objective.to_dict() in the checkpoint (its own entry; not in the UNetConfig or the
    TrainConfig) and in config.json's "objective" section, beside the network, schedule, training and data."""
    trainer = make_trainer(tmp_path, train_steps=1, prediction="v", weighting="min-snr", snr_gamma=2.0)
    trainer.fit(images)
    ckpt = read_checkpoint(tmp_path)
    assert ckpt["version"] == 6 and ckpt["objective"] == {"prediction": "v", "weighting": "min-snr", "snr_gamma": 2.0}
    assert "prediction" not in ckpt["unet_config"]
    assert not {"loss_weighting", "snr_gamma", "prediction"} & set(ckpt["train_config"])
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert list(config) == ["network", "objective", "schedule", "training", "data"]
    assert config == json.loads(json.dumps(trainer.record.to_config()))  # tuples come back as lists
    assert Objective.from_dict(config["objective"]) == trainer.objective
    assert "prediction" not in config["network"] and "loss_weighting" not in config["training"]
    assert load_model(tmp_path, device="cpu").objective == trainer.objective


def test_data_info_travels_with_the_checkpoint(tmp_path, images):
    trainer = make_trainer(tmp_path, train_steps=1)
    info = DataInfo("shapes", 40, 16, "train", seed=1, class_names=SHAPE_KINDS)
    trainer.data_info = info
    trainer.fit(images)
    assert read_checkpoint(tmp_path)["data"] == info.to_dict()  # plain values in the file
    assert Trainer.load(tmp_path, device="cpu").data_info == info
    trainer.data_info = {"name": "shapes", "n": 40, "seed": 1}  # a dict is not a record
    with pytest.raises(ValueError, match="Trainer.data_info must be a DataInfo or None, got dict"):
        trainer.save()
    with pytest.raises(ValueError, match="overrides: lr_max, stepz not TrainConfig fields"):
        Trainer.load(tmp_path, device="cpu", stepz=3, lr_max=1.0)


def test_fit_removes_stale_temp_files_of_a_killed_write(tmp_path, images):
    stale = tmp_path / ".checkpoint.pt.tmp999999999"  # a writer SIGKILLed mid-write
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".notes.txt.tmp1"  # not ours: stays
    other.write_text("keep")
    make_trainer(tmp_path, train_steps=1).fit(images)
    assert not stale.exists() and other.exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, images):
    trainer = make_trainer(tmp_path, train_steps=2).fit(images)
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 3"):
        trainer.fit(images, train_steps=4)
    assert read_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2


def test_sample_grids_and_checkpoints_on_schedule(tmp_path, images):
    make_trainer(tmp_path, train_steps=4, sample_every=2, sample_n=4, sample_steps=2, checkpoint_every=3).fit(images)
    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["step_0000002.png", "step_0000004.png"]
    assert Image.open(tmp_path / "samples" / grids[0]).size == (2 * 16 + 3 * 2,) * 2  # 2x2 grid, padding 2
    assert read_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4  # every 3 steps, and at the end


def neighbour_difference(x):
    """Mean |difference| between neighbouring pixels: ~0.05 for flat shapes on plain backgrounds, ~0.8 for noise."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()).item() / 2


@pytest.mark.slow
def test_tiny_preset_learns_shapes(tmp_path):
    """Honest learning (200 CPU steps): the loss falls far below its start, and the EMA model's samples are
    piecewise flat like the data, not speckled like noise. Measured here: loss 0.94 -> 0.057 (mean of the last
    50 steps); neighbour difference 0.049 data, 0.156 samples, 0.82 noise. (A joint colour histogram does not
    separate samples from noise this early: L1 distance 1.24 vs 1.28 with 3 bins per channel.)"""
    size = 16
    torch.manual_seed(0)
    config = TrainConfig(lr=2e-3, warmup_steps=20, batch_size=32, train_steps=200, ema_decay=0.95, log_every=25,
                         sample_every=0, checkpoint_every=0, out_dir=str(tmp_path), progress=False)
    trainer = Trainer(unet_from_preset("tiny", image_size=size), None, config, device="cpu")
    trainer.fit(make_shapes(512, size=size, seed=0)[0])
    losses = [loss for _, loss in trainer.history]
    start, end = sum(losses[:10]) / 10, sum(losses[-50:]) / 50
    assert end < 0.25 * start, (start, end)

    denoiser = load_model(tmp_path, device="cpu")
    assert denoiser.objective == Objective()  # the trainer's default: the paper's
    gen = torch.Generator().manual_seed(1)
    samples = ddim_sample(denoiser, (64, 3, size, size), sample_steps=20, generator=gen)
    noise = torch.randn(64, 3, size, size, generator=gen).clamp(-1, 1)
    real = neighbour_difference(make_shapes(512, size=size, seed=99)[0].float() / 127.5 - 1)
    d_samples, d_noise = abs(neighbour_difference(samples) - real), abs(neighbour_difference(noise) - real)
    assert d_samples < 0.3 * d_noise, (d_samples, d_noise)
