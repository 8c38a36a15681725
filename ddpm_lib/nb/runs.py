"""Which model a notebook shows: notebook 05's run folders, and `find_model`'s fallbacks when 05 has not run.

In Colab every notebook is its own runtime: with use_drive, notebook 05's checkpoints live on Google Drive,
where the next notebook's runtime finds them. Notebooks 06-08 show a model from `find_model(setup)`: notebook
05's checkpoint, else the official DDPM weights, else a tiny network trained briefly here; the description it
returns says which.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import interop
from ..checkpoint import data_info_of, load_model, read_checkpoint
from ..data import CIFAR10_CLASSES, DataInfo
from ..recipes import QUICK_WIN
from ..schedule import NoiseSchedule
from ..train import Trainer
from ..train_config import TrainConfig
from ..unet import PRESETS, UNet, unet_from_preset
from .session import NotebookSetup, load_training_images

TRAINING_RUNS = "05_training"   # notebook 05 writes runs/05_training/<preset>[-cifar10][-smoke]/checkpoint.pt
BRIEF_RUNS = "brief"            # find_model's own briefly trained tiny model: runs/brief/tiny[-smoke]/

def training_data_of(model: UNet) -> dict:
    """load_training_images' data= and size= for what `model` learned: at QUICK_WIN's image size it is notebook
    05's CPU quick win (its shapes); at any other size CIFAR-10 (offline: the shapes) at that size."""
    size = model.config.image_size
    return {"data": QUICK_WIN.data if size == QUICK_WIN.image_size else None, "size": size}


def training_run(setup: NotebookSetup, preset: str, data: str | None = None) -> Path:
    """The folder notebook 05 trains `preset` in (and find_model looks in): runs/05_training/<preset>[-smoke],
    or with data="cifar10" runs/05_training/<preset>-cifar10[-smoke] (05's labelled CIFAR-10 run on a CPU)."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    if data not in (None, "cifar10"):
        raise ValueError(f"data: expected None or 'cifar10', got {data!r}")
    return setup.runs / TRAINING_RUNS / (preset + ("-cifar10" if data else "") + ("-smoke" if setup.smoke else ""))


def is_cifar10(info: DataInfo | None) -> bool:
    """Whether a run's recorded data (its checkpoint's DataInfo) is CIFAR-10: by name, or a folder of CIFAR-10's
    classes (its JPEG copy)."""
    return info is not None and (info.name == "cifar10" or info.class_names == CIFAR10_CLASSES)


def _preset_of(folder: Path) -> str:
    """The preset in a run folder's name: <preset>[-cifar10][-smoke] (the preset "ddpm-cifar10" ends so itself)."""
    name = folder.name.removesuffix("-smoke")
    return name if name in PRESETS else name.removesuffix("-cifar10")


def _describe(path: Path, ema: bool, origin: str) -> str:
    ckpt = read_checkpoint(path)
    info = data_info_of(ckpt, path)
    data = "CIFAR-10" if is_cifar10(info) else (info.name if info is not None else "data not recorded")
    return (f"{origin}: preset {_preset_of(path.parent)}, {data}, step {ckpt['step']}, "
            f"{'EMA' if ema else 'raw'} weights ({path})")


def _train_brief(setup: NotebookSetup, folder: Path) -> None:
    """The tiny network, a few hundred steps (30 in smoke mode): enough for every later cell to run."""
    T = 100 if setup.smoke else 1000
    schedule = NoiseSchedule.paper(T)  # the paper's betas, scaled by 1000 / T for the smoke run's T = 100
    loaded = load_training_images(setup, n=None if setup.smoke else 10_000)
    config = TrainConfig(steps=30 if setup.smoke else 500, batch_size=8 if setup.smoke else 64, lr=5e-4,
                         warmup_steps=10, seed=setup.seed, out_dir=str(folder), sample_every=0, progress=False)
    torch.manual_seed(setup.seed)  # the initial weights
    trainer = Trainer(unet_from_preset("tiny"), schedule, config, device=setup.device)
    trainer.data_info = loaded.info
    trainer.fit(loaded.images)


def find_model(setup: NotebookSetup, preset: str | None = None, ema: bool = True,
               data: str | None = None) -> tuple[UNet, NoiseSchedule, str]:
    """(model in eval mode on setup.device, its schedule, a description: path, preset and step of a checkpoint).

    In this order: notebook 05's newest checkpoint under setup.runs (Drive with use_drive; of `preset` if
    given; smoke runs only in smoke mode; data=None: its main runs first, training_run(setup, preset);
    data="cifar10": only checkpoints whose recorded data is CIFAR-10);
    the official DDPM CIFAR-10 weights (google/ddpm-cifar10-32, downloaded; never in smoke mode); a tiny
    network trained briefly here and kept under setup.runs/brief/. Without a checkpoint of 05 it prints why
    and what it shows instead. ema=False gives the raw weights of a checkpoint instead of their moving average.
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    if data not in (None, "cifar10"):
        raise ValueError(f"data: expected None (any) or 'cifar10', got {data!r}")
    candidates = [p for p in (setup.runs / TRAINING_RUNS).glob("*/checkpoint.pt")  # this mode's runs only
                  if p.is_file() and p.parent.name.endswith("-smoke") == setup.smoke
                  and (preset is None or _preset_of(p.parent) == preset)]
    candidates = [p for p in candidates if data is None or is_cifar10(data_info_of(read_checkpoint(p), p))]
    main = [p for p in candidates if p.parent == training_run(setup, _preset_of(p.parent))]
    if data is None and main:  # 05's main run (on a CPU the quick win) before its side runs (the CIFAR-10 one)
        candidates = main
    if candidates:
        found = max(candidates, key=lambda p: p.stat().st_mtime)
        model, schedule = load_model(found, ema=ema, device=setup.device)
        return model, schedule, _describe(found, ema, "notebook 05's checkpoint")
    which = " ".join(filter(None, [preset, "CIFAR-10" if data else None, "smoke" if setup.smoke else None]))
    where = f"on Google Drive ({setup.drive}) yet" if setup.drive is not None else f"under {setup.runs / TRAINING_RUNS}"
    reason = f"no {which + ' ' if which else ''}checkpoint from notebook 05 {where}"
    if not setup.smoke:
        try:
            model = interop.load_ddpm_cifar10().to(setup.device).eval()
            description = f"official DDPM CIFAR-10 weights ({interop.REPO_ID})"
            print(f"{reason}: showing the {description} instead")
            return model, NoiseSchedule.linear(1000).to(setup.device), description
        except (FileNotFoundError, ImportError, OSError) as err:
            reason += f"; official weights unavailable ({type(err).__name__}: {str(err).splitlines()[0]})"
    brief = setup.runs / BRIEF_RUNS / ("tiny-smoke" if setup.smoke else "tiny") / "checkpoint.pt"
    if brief.is_file():
        print(f"{reason}: using the tiny network trained briefly before ({brief.parent})")
    else:
        print(f"{reason}: training the tiny network briefly into {brief.parent} (run notebook 05 for a real model)")
        _train_brief(setup, brief.parent)
    model, schedule = load_model(brief, ema=ema, device=setup.device)
    return model, schedule, _describe(brief, ema, "tiny network trained briefly by find_model")
