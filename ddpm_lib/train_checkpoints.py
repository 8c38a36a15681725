"""A training run's checkpoints: what one holds of a Trainer, written and read back here side by side, and when
Trainer.fit writes one into the run folder. The files themselves are ddpm_lib.checkpoint's (atomic write, safe read,
numbered copies); the run's record in them is ddpm_lib.record's.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import CHECKPOINT_NAME, load_weights, remove_stale_temp_files, write_atomically, write_checkpoint
from .record import CONFIG_NAME, RunRecord
from .runtime import precision_name
from .train_config import TrainConfig


def start_run_folder(out: Path, record: RunRecord) -> None:
    """Ready the run folder `out` for a fit (rank 0): the temporary files of a run killed mid-write go, and the
    run's record is written as config.json (which train --config reads)."""
    remove_stale_temp_files(out / CHECKPOINT_NAME)
    text = json.dumps(record.to_config(), indent=1) + "\n"
    write_atomically(out / CONFIG_NAME, lambda f: f.write(text.encode()))


def checkpoint_due(config: TrainConfig, step: int) -> bool:
    """Whether fit writes the run folder's checkpoint after `step` besides the last one: every checkpoint_every
    steps and at the milestones."""
    return bool((config.checkpoint_every and step % config.checkpoint_every == 0) or step in config.milestones)


def save_trainer(trainer, path: Path) -> None:
    """Write the checkpoint of `trainer` (a ddpm_lib.train.Trainer, untyped here: train imports this module) onto
    `path` from rank 0; every rank checks the weights and, under DDP, waits for the file."""
    record = trainer.record  # checks data_info
    if not torch.stack([torch.isfinite(p).all() for p in trainer.model.parameters()]).all():  # one sync
        raise FloatingPointError(f"non-finite weights at step {trainer.step}; not saving a bad state")
    if trainer.rank == 0:
        write_checkpoint({
            "step": trainer.step, "model": trainer.model.state_dict(), "ema": trainer.ema.state_dict(),
            "optimizer": trainer.optimizer.state_dict(), "scaler": trainer.scaler.state_dict(),
            **record.checkpoint_entries(),  # the schedule as its float64 betas: the one actually used
            "amp_dtype": precision_name(trainer.amp_dtype),
            "evaluation": {"best": trainer.best, "seconds": trainer.eval_seconds},
        }, path)
    if trainer.world_size > 1:  # the file is in place before any rank goes on (and may load it)
        dist.barrier()


def restore_trainer(trainer, ckpt: dict, path, record: RunRecord) -> None:
    """Load what save_trainer wrote (read_checkpoint's dict; `path` names it in errors) into a trainer built from the
    checkpoint's `record`. Warns once when this device trains in another precision than the saved run."""
    load_weights(trainer.model, ckpt["model"], path)
    load_weights(trainer.ema, ckpt["ema"], path)
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt["scaler"]:  # empty when saved without fp16; a fresh scaler then starts at its initial scale
        trainer.scaler.load_state_dict(ckpt["scaler"])
    trainer.step, trainer.data_info = ckpt["step"], record.data
    evaluation = ckpt.get("evaluation", {})  # written by every save; empty in a checkpoint made otherwise
    trainer.best, trainer.eval_seconds = evaluation.get("best"), evaluation.get("seconds", 0.0)
    saved, now = ckpt.get("amp_dtype", "float32"), precision_name(trainer.amp_dtype)
    if saved != now and trainer.rank == 0:  # one line, also under DDP; stacklevel: from_checkpoint's caller
        warnings.warn(f"resuming {path}: precision changed from {saved} to {now} "
                      f"(precision {trainer.config.precision} on {trainer.device})", stacklevel=3)
