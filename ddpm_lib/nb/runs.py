"""Which model a notebook shows: notebook 05's run folders, the shipped CPU model, the official weights.

In Colab every notebook is its own runtime: with use_drive, notebook 05's checkpoints live on Google Drive,
where the next notebook's runtime finds them. Notebooks 06-08 show the model `find_model(setup, MODEL)` picks:
with MODEL = "auto" the reader's own CIFAR-10 model from 05, else the CPU-trained CIFAR-10 model that ships
with the package, else the official DDPM weights; the description it returns says which.
"""
from __future__ import annotations

from pathlib import Path

from .. import interop
from ..checkpoint import load_model, read_checkpoint, resolve_checkpoint
from ..data import CIFAR10_CLASSES, DataInfo
from ..objective import Denoiser
from ..record import data_info_of
from ..recipes import QUICK_WIN
from ..schedule import NoiseSchedule
from ..shipped import SHIPPED_MODEL, card_path, load_shipped_model
from ..unet import PRESETS, UNet
from .session import NotebookSetup

TRAINING_RUNS = "05_training"   # notebook 05 writes runs/05_training/<preset>[-cifar10][-smoke]/checkpoint.pt
MODEL_CHOICES = ("auto", "own", "shipped", "official")  # find_model's model= (or a checkpoint file or run folder)


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


def _describe(path: Path, ema: bool) -> str:
    ckpt = read_checkpoint(path)
    info = data_info_of(ckpt, path)
    data = "CIFAR-10" if is_cifar10(info) else (info.name if info is not None else "data not recorded")
    cond = ", class-conditional" if ckpt["unet_config"].get("num_classes") is not None else ""
    return (f"preset {_preset_of(path.parent)}, {data}{cond}, step {ckpt['step']}, "
            f"{'EMA' if ema else 'raw'} weights ({path})")


def own_checkpoints(setup: NotebookSetup, class_cond: bool = False) -> list[Path]:
    """Notebook 05's CIFAR-10 checkpoints under setup.runs (Drive with use_drive) in this mode (smoke runs only in
    smoke mode), class-conditional ones only with class_cond; newest first."""
    found = []
    for p in (setup.runs / TRAINING_RUNS).glob("*/checkpoint.pt"):
        if not p.is_file() or p.parent.name.endswith("-smoke") != setup.smoke:
            continue
        ckpt = read_checkpoint(p)
        if is_cifar10(data_info_of(ckpt, p)) and (not class_cond or ckpt["unet_config"].get("num_classes")):
            found.append(p)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _shipped(setup: NotebookSetup, path: Path = SHIPPED_MODEL) -> tuple[Denoiser, str]:
    """A model in ship_model's form (float16 EMA weights and a card): the package's own CPU model by default."""
    denoiser, card = load_shipped_model(path, device=setup.device)
    minutes = f", {card['train_minutes']:.0f} min on {card['machine']}" if "train_minutes" in card else ""
    cond = ", class-conditional" if denoiser.net.config.num_classes is not None else ""
    if path == SHIPPED_MODEL:
        return denoiser, (f"the shipped CPU model: recipe {card.get('recipe')}, CIFAR-10{cond}, step "
                          f"{card.get('step')}{minutes}, EMA weights ({path.name})")
    return denoiser, (f"float16 EMA weights: recipe {card.get('recipe')}{cond}, step {card.get('step')}"
                      f"{minutes} ({path})")


def _official(class_cond: bool) -> tuple[Denoiser, str]:
    if class_cond:
        raise ValueError("model='official': the official DDPM CIFAR-10 weights are unconditional; this notebook needs "
                         "a class-conditional model ('own' from notebook 05 with labels, or 'shipped')")
    denoiser = Denoiser(interop.load_ddpm_cifar10().eval(), NoiseSchedule.linear(1000))  # eps, the paper's
    return denoiser, f"the official DDPM CIFAR-10 weights ({interop.REPO_ID})"


def find_model(setup: NotebookSetup, model: str = "auto", *, class_cond: bool = False,
               ema: bool = True) -> tuple[Denoiser, str]:
    """(the denoiser of a UNet in eval mode on setup.device, a description of which model it is), by `model`:

    "own"       your model from notebook 05: its newest CIFAR-10 checkpoint (own_checkpoints; on Drive in Colab);
    "shipped"   the CPU-trained class-conditional CIFAR-10 model that ships with the package (ddpm_lib.shipped);
    "official"  the official DDPM CIFAR-10 weights (google/ddpm-cifar10-32, downloaded; never in smoke mode);
    "auto"      the first of these that is there, in that order; it prints which, and why not the ones before;
    a path      a checkpoint file or run folder, or weights that `ddpm_lib.shipped.ship_model` wrote (their card
                beside them), such as the GPU check's.
    class_cond: only class-conditional models (notebook 08's guidance). ema=False: a checkpoint's raw weights.
    """
    if model not in MODEL_CHOICES and not Path(model).expanduser().exists():
        raise ValueError(f"model: expected one of {MODEL_CHOICES} or a checkpoint file or run folder, got {model!r}")
    if model not in MODEL_CHOICES and card_path(Path(model).expanduser()).is_file():
        found, description = _shipped(setup, Path(model).expanduser())
        if class_cond and found.net.config.num_classes is None:
            raise ValueError(f"model: {model} is unconditional; this notebook needs a class-conditional model")
        return found, description
    if model not in MODEL_CHOICES:
        path = resolve_checkpoint(model)
        found = load_model(path, ema=ema, device=setup.device)
        if class_cond and found.net.config.num_classes is None:
            raise ValueError(f"model: {path} is unconditional; this notebook needs a class-conditional model")
        return found, "checkpoint " + _describe(path, ema)
    if model in ("auto", "own"):
        own = own_checkpoints(setup, class_cond)
        if own:
            return load_model(own[0], ema=ema, device=setup.device), "your model from notebook 05: " + _describe(
                own[0], ema)
        where = f"on Google Drive ({setup.drive})" if setup.drive is not None else f"under {setup.runs / TRAINING_RUNS}"
        reason = (f"no {'class-conditional ' if class_cond else ''}CIFAR-10 {'smoke ' if setup.smoke else ''}"
                  f"checkpoint from notebook 05 {where}")
        if model == "own":
            raise FileNotFoundError(f"model='own': {reason}; run notebook 05 first, or choose 'shipped'")
        print(f"{reason}: showing the shipped CPU model")
    if not ema:
        raise ValueError("ema=False: the shipped and official models have only their EMA weights")
    if model in ("auto", "shipped"):
        try:
            return _shipped(setup)
        except (FileNotFoundError, ValueError) as err:
            if model == "shipped" or setup.smoke:
                raise
            print(f"the shipped CPU model is unavailable ({err}): trying the official weights")
    if setup.smoke:
        raise ValueError("model='official': smoke mode never downloads; choose 'own' or 'shipped'")
    found, description = _official(class_cond)
    return found.to(setup.device), description
