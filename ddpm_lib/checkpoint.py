"""One-file checkpoints: atomic write, safe read (torch.load weights_only=True), load_model, run folders.

A checkpoint is a dict of tensors and plain values (no pickled objects): "format", "version", "step",
"model", "ema", "optimizer", "scaler", "train_config", "unet_config", "objective" (an Objective's to_dict()),
"schedule" (betas, kind, parameters), "amp_dtype", "data" (a DataInfo's to_dict(), or None: not recorded).
A run folder holds it as folder/checkpoint.pt.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from .utils import default_device
from .objective import Denoiser
from .record import CHECKPOINT_ENTRIES, RunRecord
from .unet import UNet

CHECKPOINT_FORMAT = "ddpm_lib.checkpoint"
CHECKPOINT_VERSION = 6  # 5: "objective" holds what the network predicts and the loss weighting (before:
                        # UNetConfig.prediction and TrainConfig's weighting fields); 6: T is the schedule's
                        # "num_timesteps" and the training's length "train_steps" (both "steps" before)
CHECKPOINT_NAME = "checkpoint.pt"  # the file inside a run folder
BEST_NAME = "checkpoint-best.pt"   # beside it with TrainConfig.keep_best: the run at its evaluation of lowest FID
REQUIRED_KEYS = ("step", "model", "ema", "optimizer", "scaler", *CHECKPOINT_ENTRIES)  # the run's record's entries too


def resolve_checkpoint(path) -> Path:
    """A checkpoint file as given, or a run folder meaning folder/checkpoint.pt."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / CHECKPOINT_NAME).is_file():
            raise FileNotFoundError(f"checkpoint not found: run folder {path} has no {CHECKPOINT_NAME}")
        return path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (expected a checkpoint file or a run folder)")
    return path


def _temp_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp{pid}")


def remove_stale_temp_files(path) -> list[Path]:
    """Delete `.NAME.tmp<pid>` files next to `path` (a checkpoint, config.json) left by writers killed mid-write.

    Any pid but ours counts as stale: one process writes a run's checkpoint, and a pid says nothing
    about liveness when the folder is shared between machines (Google Drive) or pids are reused.
    """
    path = Path(path)
    ours = _temp_name(path, os.getpid()).name
    stale = [p for p in path.parent.glob(f".{path.name}.tmp*")
             if p.name != ours and p.name[len(f".{path.name}.tmp"):].isdigit()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_atomically(path, write: Callable[[BinaryIO], object]) -> Path:
    """write(f) into a temp file next to `path`, fsync, then os.replace it onto `path`: readers (and a writer
    killed midway) see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    tmp = _temp_name(path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def numbered(path: Path, step: int) -> Path:
    """checkpoint-<step>.pt beside checkpoint `path`: a kept copy of the run at that step."""
    return path.with_name(f"{path.stem}-{step:07d}{path.suffix}")


def keep_numbered(path, step: int, keep_last: int | None, milestones: tuple[int, ...]) -> list[Path]:
    """Keep checkpoint `path` (just written at `step`) as numbered(path, step) too when `step` is a milestone or
    `keep_last` is set (a hard link, else an atomic copy); then delete the numbered checkpoints that are not
    milestones, all but the newest `keep_last`. Returns the files deleted."""
    path = Path(path)
    if step in milestones or keep_last:
        target = numbered(path, step)
        try:  # a hard link costs no space; os.replace keeps it atomic
            tmp = _temp_name(target, os.getpid())
            tmp.unlink(missing_ok=True)
            os.link(path, tmp)
            os.replace(tmp, target)
        except OSError:  # a file system without hard links (a mounted Drive): a copy
            write_atomically(target, lambda f: f.write(path.read_bytes()))
    kept = sorted((int(p.stem.rsplit("-", 1)[1]), p) for p in path.parent.glob(f"{path.stem}-*{path.suffix}")
                  if p.stem.rsplit("-", 1)[1].isdigit())
    rolling = [p for s, p in kept if s not in milestones]
    stale = rolling[:-keep_last] if keep_last else rolling
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_checkpoint(state: dict, path) -> Path:
    """torch.save `state` (plus format and version) onto `path`, atomically."""
    return write_atomically(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                                                        **state}, f))


def read_checkpoint(path) -> dict:
    """torch.load(weights_only=True) a ddpm_lib checkpoint file or run folder; clear errors for anything else."""
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # refused pickle globals, truncated zip, random bytes, ...
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(
            ("Weights only load failed", "Please file an issue", "Check the documentation"))]
        detail = lines[0] if lines else type(e).__name__
        if "GLOBAL" in detail:
            raise ValueError(f"{path} is not a ddpm_lib checkpoint: it holds pickled objects that "
                             f"torch.load(weights_only=True) refuses to run ({detail})") from None
        raise ValueError(f"{path} is not a readable checkpoint ({detail})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a ddpm_lib checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    version = ckpt.get("version")
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is a version {version!r} ddpm_lib checkpoint; this ddpm_lib reads version "
                         f"{CHECKPOINT_VERSION} (another ddpm_lib wrote it: load it with that one)")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is an incomplete ddpm_lib checkpoint (missing {', '.join(missing)})")
    return ckpt


def load_weights(module: torch.nn.Module, state: dict, path) -> None:
    """module.load_state_dict(state), with a one-line ValueError when the shapes or names do not fit."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the stored UNetConfig "
                         f"({str(e).strip().splitlines()[0]})") from None


def denoiser_of(ckpt: dict, weights: dict, path, device) -> Denoiser:
    """The Denoiser of a checkpoint's record (its network, schedule and objective) with `weights`, in eval mode."""
    record = RunRecord.from_checkpoint(ckpt, path)
    model = UNet(record.network)
    load_weights(model, weights, path)
    return Denoiser(model.eval(), record.schedule, record.objective).to(device)


def load_model(path, ema: bool = True, device=None) -> Denoiser:
    """The denoiser of a checkpoint file or run folder: its UNet (EMA weights by default) in eval mode, its schedule
    and its objective, on `device`."""
    ckpt = read_checkpoint(path)
    device = torch.device(device) if device is not None else default_device()
    return denoiser_of(ckpt, ckpt["ema" if ema else "model"], path, device)
