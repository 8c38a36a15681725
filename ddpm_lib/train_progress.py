"""What Trainer.fit reports as it goes. Each step's loss and statistics stay on the device; every
TrainConfig.log_every steps one sync brings those of the steps since to the host (a sync every step would stall
the GPU's queue of kernels), where a non-finite loss stops the run, and they go to the progress bar, the images per
second and rank 0's TrainLog (ddpm_lib.train_log).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .train_log import QUARTERS, TrainLog


class Progress:
    """The read-backs of one fit, from `step` to `train_steps`: `log` is rank 0's TrainLog (None without a run folder
    and on the other ranks), closed with it; `lr_at` and `ema_decay_at` give the settings of update n for the log."""

    def __init__(self, step: int, train_steps: int, batch_size: int, world_size: int, log: TrainLog | None,
                 show: bool, lr_at: Callable[[int], float], ema_decay_at: Callable[[int], float]):
        self.log = log
        self._batch_size, self._world_size = batch_size, world_size
        self._lr_at, self._ema_decay_at = lr_at, ema_decay_at
        self._bar = tqdm(total=train_steps, initial=step, unit="step", disable=not show)
        self._losses: list[torch.Tensor] = []
        self._stats: list[torch.Tensor] = []
        self._clock, self._since = time.perf_counter(), step  # images/s since the last read-back

    def add(self, loss: torch.Tensor, stats: torch.Tensor) -> None:
        """One step's loss and its [grad norm, loss sum and count per quarter of t], on the device (no sync)."""
        self._losses.append(loss)
        self._stats.append(stats)
        self._bar.update(1)

    def pause(self, seconds: float) -> None:
        """Leave `seconds` spent on something else than training (an evaluation) out of the images per second."""
        self._clock += seconds

    def read(self, step: int) -> list[tuple[int, float]]:
        """Bring the losses and statistics of the steps up to `step` to the host (one sync); stop on a non-finite
        loss; log and show them. Returns each step's (step, loss), the mean over the ranks."""
        rate = (step - self._since) * self._batch_size / (time.perf_counter() - self._clock)
        read = torch.cat([torch.stack(self._losses).float()[:, None], torch.stack(self._stats)], 1)  # (steps, 2 + 2Q)
        if self._world_size > 1:  # every rank sees the global mean, so every rank stops together
            dist.all_reduce(read)
            read[:, :2] /= self._world_size  # the loss and the gradient norm (the same on every rank) as means
        first = step - len(self._losses) + 1
        values = read[:, 0].tolist()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss ({value}) at step {first + i}; training stopped "
                                         f"and the last good checkpoint was kept")
        logged = list(zip(range(first, step + 1), values))  # (step, loss)
        if self.log is not None:  # step s is update s - 1
            rows = read[:, 1:].tolist()
            self.log.read_back(logged, [{"lr": self._lr_at(s - 1), "ema_decay": self._ema_decay_at(s - 1),
                                         "grad_norm": row[0], **_loss_by_quarter(row)}
                                        for (s, _), row in zip(logged, rows)])
            self.log.rate(step, rate)
        self._bar.set_postfix(loss=f"{sum(values) / len(values):.4f}", img_s=f"{rate:.3g}")
        self._losses, self._stats, self._clock, self._since = [], [], time.perf_counter(), step
        return logged

    def close(self) -> None:
        self._bar.close()
        if self.log is not None:
            self.log.close()


def _loss_by_quarter(row: list[float]) -> dict[str, float | None]:
    """The mean loss of each quarter of t from a step's [grad norm, sums, counts] (None where a quarter drew no t)."""
    sums, counts = row[1:1 + QUARTERS], row[1 + QUARTERS:]
    return {f"loss_by_t/q{q + 1}": sums[q] / counts[q] if counts[q] else None for q in range(QUARTERS)}
