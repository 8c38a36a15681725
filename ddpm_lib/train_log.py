"""A run's log in its folder: loss.jsonl (always), and with TrainConfig.logger="tensorboard" TensorBoard event files
or with logger="wandb" a Weights & Biases run, offline unless WANDB_MODE says otherwise (ddpm_lib.train_log_wandb).

loss.jsonl holds one line per step, {"step": s, "loss": v}. The event files (out_dir/tensorboard, written with
torch.utils.tensorboard, the `tensorboard` extra) hold, at every read-back of the losses (TrainConfig.log_every):
the loss of each step, the loss by quarter of t, the learning rate, the gradient norm before clipping and the EMA
decay of each step, the images per second since the last read-back, and the EMA sample grids. On resume both are
cut back to the checkpoint's step: the lines and events that an interrupted run wrote after it are dropped.
With evaluations (TrainConfig.eval_every), eval.jsonl holds one line per evaluation (Trainer.evaluate's result:
FID, KID, validation loss, the extractor, seconds spent), and the event files hold them under eval/.
The W&B run (out_dir/wandb, the `wandb` extra) holds what the event files hold; on resume it continues the same W&B
run, which W&B cannot cut back (train_log_wandb says what it keeps).
"""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import IO, TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from .train_log_wandb import WandbWriter

LOGGERS = ("jsonl", "tensorboard", "wandb")  # TrainConfig.logger; tensorboard and wandb: the package and extra so named
QUARTERS = 4                         # the loss by t is logged for t in [0, T/4), [T/4, T/2), ...


def check_logger(logger: str) -> None:
    """A ValueError for an unknown logger, an ImportError naming the extra when tensorboard or wandb is not
    installed."""
    if logger not in LOGGERS:
        raise ValueError(f"TrainConfig.logger must be one of {LOGGERS}, got {logger!r}")
    if logger != "jsonl":
        try:
            importlib.import_module(logger)  # torch.utils.tensorboard needs the tensorboard package
        except ImportError:
            raise ImportError(f"TrainConfig.logger {logger!r} needs the {logger} package: "
                              f"pip install 'ddpm_lib[{logger}]'") from None


def quarter_of(t: torch.Tensor, T: int) -> torch.Tensor:
    """The quarter of {0, ..., T-1} that each t (B,) falls in: 0 to QUARTERS - 1."""
    return (t * QUARTERS) // T


class TrainLog:
    """Rank 0's log of a run in `out`, continued at `step` (the step the run starts or resumes from)."""

    def __init__(self, out: Path, step: int, logger: str):
        check_logger(logger)
        out.mkdir(parents=True, exist_ok=True)
        self._out, self._step = out, step
        self._jsonl = self._cut(out / "loss.jsonl").open("a")
        self._cut(out / "eval.jsonl")
        self._eval: IO[str] | None = None  # eval.jsonl, opened at the first evaluation
        self._events: SummaryWriter | WandbWriter | None = None  # what the events go to, with either logger
        if logger == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard drops this run's earlier events from step + 1 on, those past the checkpoint
            self._events = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else None)
        elif logger == "wandb":
            from .train_log_wandb import WandbWriter

            self._events = WandbWriter(out, step)

    def _cut(self, path: Path) -> Path:
        """Drop the lines of the jsonl file `path` past the step this log starts at (written after the checkpoint
        that is resumed)."""
        if path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            path.write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= self._step))
        return path

    def read_back(self, logged: list[tuple[int, float]], stats: list[dict] | None = None) -> None:
        """The loss of each (step, loss) in `logged`; with events, also each step's `stats` (lr, grad_norm,
        ema_decay and the loss by quarter of t, None where a quarter drew no t)."""
        self._jsonl.writelines(json.dumps({"step": s, "loss": v}) + "\n" for s, v in logged)
        self._jsonl.flush()
        if self._events is None:
            return
        for (step, loss), values in zip(logged, stats or [{}] * len(logged)):
            self._events.add_scalar("loss", loss, step)
            for name, value in values.items():
                if value is not None and math.isfinite(value):
                    self._events.add_scalar(name, value, step)

    def rate(self, step: int, images_per_s: float) -> None:
        """Training images per second since the last read-back, at `step` (events only)."""
        if self._events is not None:
            self._events.add_scalar("images_per_s", images_per_s, step)

    def grid(self, step: int, x0: torch.Tensor) -> None:
        """EMA samples (n, C, H, W) in [-1, 1] as one image grid at `step` (events only)."""
        if self._events is None:
            return
        from torchvision.utils import make_grid

        nrow = math.ceil(math.sqrt(len(x0)))
        self._events.add_image("samples", make_grid((x0.float().cpu() + 1) / 2, nrow=nrow).clamp(0, 1), step)
        self._events.flush()

    def evaluation(self, result: dict) -> None:
        """One evaluation (Trainer.evaluate's dict, with its "step") as a line of eval.jsonl; with events, its
        FID, KID, validation loss and seconds under eval/."""
        if self._eval is None:
            self._eval = (self._out / "eval.jsonl").open("a")
        self._eval.write(json.dumps(result) + "\n")
        self._eval.flush()
        if self._events is not None:
            for name in ("fid", "kid", "val_loss", "eval_s"):  # those the evaluator gives
                if name in result:
                    self._events.add_scalar(f"eval/{name}", result[name], result["step"])
            self._events.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._eval is not None:
            self._eval.close()
        if self._events is not None:
            self._events.close()
