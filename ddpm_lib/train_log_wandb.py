"""TrainConfig.logger="wandb": a run's log as a Weights & Biases run in out_dir/wandb (the `wandb` extra).

TrainLog writes to a WandbWriter as to TensorBoard's SummaryWriter, so the W&B run holds the same scalars at the
same steps, the sample grids (wandb.Image, the pixels of the run's samples/ PNGs) and the evaluations under eval/;
its config is the run folder's config.json (the run's record, which Trainer.fit writes before it opens its log).
No account is needed: the run is offline unless WANDB_MODE says otherwise (`wandb sync out_dir/wandb/offline-run-*`
uploads it later); its project is WANDB_PROJECT, else "ddpm_lib", its name WANDB_NAME, else the run folder's name.
W&B's console output is off, and closing the writer stops W&B's service process unless another W&B run is open.

A resumed run continues the same W&B run (its id is kept in out_dir/wandb/run-id; resume="allow"), but W&B has no
purge like TensorBoard's: offline, each session writes its own offline-run-* folder, the resumed one from the
checkpoint's step + 1 on, and the interrupted one keeps what it logged past the checkpoint. Online, W&B continues
the run after its last logged step and ignores, with a warning, the steps at or below it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .record import CONFIG_NAME

RUN_ID = "run-id"  # in out_dir/wandb: the W&B run's id, which a resumed run continues


class WandbWriter:
    """The W&B run of the run folder `out`, continued at `step` (a new W&B run at step 0)."""

    def __init__(self, out: Path, step: int):
        import wandb

        self._wandb = wandb
        id_file = out / "wandb" / RUN_ID
        run_id = id_file.read_text().strip() if step and id_file.exists() else None  # None: W&B draws one
        self._run = wandb.init(
            dir=out, id=run_id, resume="allow", reinit="create_new",  # create_new: leave other W&B runs be
            mode=None if "WANDB_MODE" in os.environ else "offline",  # None: W&B reads WANDB_MODE
            project=os.environ.get("WANDB_PROJECT", "ddpm_lib"), name=os.environ.get("WANDB_NAME", out.name),
            config=json.loads((out / CONFIG_NAME).read_text()), settings=wandb.Settings(silent=True, console="off"))
        id_file.write_text(self._run.id + "\n")

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._run.log({tag: value}, step=step)

    def add_image(self, tag: str, grid: torch.Tensor, step: int) -> None:
        """An image grid (C, H, W) in [0, 1], rounded to 8 bits as torchvision's save_image rounds it."""
        pixels = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        self._run.log({tag: self._wandb.Image(pixels)}, step=step)

    def flush(self) -> None:
        """Nothing to do: W&B's service writes what it is sent."""

    def close(self) -> None:
        self._run.finish()
        if self._wandb.run is None:  # no W&B run of the caller's is open: stop W&B's service process
            self._wandb.teardown()
