"""The training log: TensorBoard event files read back with tensorboard's own reader, and cut back on resume."""
import io
import shutil

import pytest
import torch
from PIL import Image

from test_train import make_trainer

from ddpm_lib.train_config import TrainConfig
from ddpm_lib.train_log import QUARTERS, check_logger, quarter_of

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_events(out):
    events = event_accumulator.EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


@pytest.fixture(scope="module")
def images():
    from ddpm_lib.data import make_shapes

    return make_shapes(40, size=16, seed=1)[0]


def test_event_files_hold_every_steps_scalars_and_the_sample_grids(tmp_path, images):
    trainer = make_trainer(tmp_path, train_steps=4, logger="tensorboard", log_every=2, sample_every=2, sample_n=4,
                           sample_steps=2, warmup_steps=3, grad_clip=0.5)
    trainer.fit(images)
    events = read_events(tmp_path)
    scalars = events.Tags()["scalars"]
    expected = {"loss", "lr", "ema_decay", "grad_norm", "images_per_s"} | {f"loss_by_t/q{q + 1}" for q in range(4)}
    assert expected <= set(scalars), scalars
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([v for _, v in trainer.history], rel=1e-6)  # float32 in events
    cfg = trainer.config  # warm-up over 3 steps, then lr; EMA decay (1 + n) / (10 + n) at update n = step - 1
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([cfg.lr * min(1, s / 3) for s in range(1, 5)])
    assert [e.value for e in events.Scalars("ema_decay")] == pytest.approx([s / (9 + s) for s in range(1, 5)])
    assert all(e.value > 0 for e in events.Scalars("grad_norm"))
    assert [e.step for e in events.Scalars("images_per_s")] == [2, 4]
    grids = events.Images("samples")
    assert [g.step for g in grids] == [2, 4]
    with Image.open(io.BytesIO(grids[-1].encoded_image_string)) as grid:
        assert grid.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 2 x 2 samples of 16 pixels, padding 2


def test_the_loss_by_quarter_of_t_is_the_mean_loss_of_those_t(images):
    """One step's statistics: the per-quarter sums and counts add up to the step's loss over its batch."""
    trainer = make_trainer(None, train_steps=1, dropout=0.0)
    loss = trainer.train_step(trainer._batches(images, None).batch(0))
    norm, sums, counts = trainer._stats[0], trainer._stats[1:1 + QUARTERS], trainer._stats[1 + QUARTERS:]
    assert counts.sum() == 8 and torch.isclose(sums.sum() / 8, loss, rtol=1e-6)
    assert norm > 0
    assert quarter_of(torch.tensor([0, 24, 25, 49, 50, 74, 75, 99]), 100).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_resume_drops_the_events_written_after_the_checkpoint(tmp_path, images):
    """A run killed after step 4 whose last checkpoint is step 2: resumed, TensorBoard shows every step once,
    the resumed run's values from step 3 on (purge_step), as loss.jsonl does."""
    make_trainer(tmp_path, train_steps=2, logger="tensorboard", log_every=1).fit(images)
    shutil.copy(tmp_path / "checkpoint.pt", tmp_path / "step2.pt")
    from ddpm_lib.train import Trainer

    Trainer.load(tmp_path, device="cpu", train_steps=4).fit(images)  # writes events for steps 3 and 4
    shutil.copy(tmp_path / "step2.pt", tmp_path / "checkpoint.pt")  # ... but its checkpoint is lost
    resumed = Trainer.load(tmp_path, device="cpu", train_steps=4).fit(images)
    loss = read_events(tmp_path).Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert [e.value for e in loss][2:] == pytest.approx([v for _, v in resumed.history], rel=1e-6)
    lines = (tmp_path / "loss.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_an_unknown_logger_or_a_missing_tensorboard_is_one_line(monkeypatch):
    with pytest.raises(ValueError, match="TrainConfig.logger must be one of"):
        TrainConfig(logger="mlflow")
    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'ddpm_lib\[tensorboard\]'"):
        check_logger("tensorboard")
