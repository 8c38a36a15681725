"""What every notebook sets up: device, smoke mode, data with its offline fallback, runs folder or Drive, a model.

A notebook starts with `setup = setup_notebook()`, which reads the environment the test suite sets
(DDPM_SMOKE, DDPM_DATA_ROOT, DDPM_RUNS), mounts Google Drive in Colab when asked, seeds torch and
prints one line per choice, so a reader of the notebook sees what it ran on. In Colab every notebook is
its own runtime: with use_drive the data and notebook 05's checkpoints live on Google Drive, where the
next notebook's runtime finds them. Notebooks 06-08 show a model from `find_model(setup)`: notebook 05's
checkpoint, else the official DDPM weights, else a tiny network trained briefly here; the description it
returns says which.
"""
from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from . import pretrained
from .checkpoint import load_model, read_checkpoint
from .data import CIFAR10_CLASSES, SHAPE_KINDS, load_cifar10, load_image_folder, make_shapes
from .device import default_device
from .schedule import NoiseSchedule
from .train import TrainConfig, Trainer, enable_tf32
from .unet import PRESETS, UNet, unet_from_preset

COLAB_DRIVE = "/content/drive"  # where Colab mounts Google Drive ($DDPM_COLAB_DRIVE: the Colab emulation's, tests/)
TRAINING_RUNS = "05_training"   # notebook 05 writes runs/05_training/<preset>[-cifar10][-smoke]/checkpoint.pt
BRIEF_RUNS = "brief"            # find_model's own briefly trained tiny model: runs/brief/tiny[-smoke]/
CIFAR10_FOLDER = "cifar-10-batches-py"  # torchvision's CIFAR-10 root holds its batch files in this folder

# The CPU quick win, notebook 05's CPU default (measured by `benchmarks/knobs.py quick`, docs/knobs/quick_win.md):
# the tiny preset on 16x16 procedural shapes: shapes a learner recognises after a few CPU minutes (291 s, 23% pass
# all four shape rules, in that measurement).
QUICK_WIN = {"preset": "tiny", "data": "shapes", "image_size": 16,
             "train": {"steps": 2200, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "ema_decay": 0.995}}


@dataclass(frozen=True)
class NotebookSetup:
    device: torch.device      # where the notebook computes: CUDA, else Apple MPS, else CPU
    smoke: bool               # DDPM_SMOKE=1: CI sizes, CIFAR-10 test fixture, no downloads
    data_root: Path           # CIFAR-10 (its root or an image folder) is read here: $DDPM_DATA_ROOT, Drive, data/
    runs: Path                # checkpoints and loss logs: Drive when asked, else $DDPM_RUNS, else runs/
    in_colab: bool            # running inside Google Colab
    seed: int                 # torch.manual_seed the notebook started from
    drive: Path | None = None  # <drive>/MyDrive/<drive_folder> with use_drive, else None


def _smoke_from_env() -> bool:
    value = os.environ.get("DDPM_SMOKE", "")
    if value not in ("", "0", "1"):
        raise ValueError(f"DDPM_SMOKE: expected 1 (CI sizes) or 0/unset (real sizes), got {value!r}")
    return value == "1"


def _check_writable(folder: Path, what: str) -> None:
    """Create `folder` and write a file in it, so a bad folder fails now, not after an hour of training."""
    probe = folder / f".write-test-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"{what}: cannot write to {folder} ({type(e).__name__}: {e}); "
                              f"pick a folder you can write to") from None


def _mount_drive(drive_root, in_colab: bool, drive_folder: str) -> Path:
    """<drive>/MyDrive/<drive_folder>, the Drive mounted first in Colab; one clear error when that fails."""
    if drive_root is None and not in_colab:
        raise ValueError("use_drive=True needs Google Colab (or drive_root=the folder where Google Drive "
                         "is mounted); set USE_DRIVE = False to keep runs in a local folder")
    colab = os.environ.get("DDPM_COLAB_DRIVE") or COLAB_DRIVE
    drive = Path(drive_root if drive_root is not None else colab).expanduser()
    if in_colab and drive_root is None and not (drive / "MyDrive").is_dir():
        from google.colab import drive as colab_drive

        try:
            colab_drive.mount(str(drive))
        except Exception as e:  # noqa: BLE001 (Colab raises ValueError, MessageError, TimeoutError, ...)
            folder = drive / "MyDrive" / drive_folder
            raise OSError(f"use_drive: could not mount Google Drive at {drive} for {folder} ({type(e).__name__}: "
                          f"{e}); allow access when Colab asks, or set USE_DRIVE = False") from None
    if not (drive / "MyDrive").is_dir():
        raise FileNotFoundError(f"drive_root: no MyDrive folder in {drive} (is Google Drive mounted there?)")
    return drive / "MyDrive" / drive_folder


def _layout(root: Path) -> str | None:
    """'cifar10' (torchvision's root), 'image folder' (train/ and test/ class folders) or None (neither)."""
    if (root / CIFAR10_FOLDER).is_dir():
        return "cifar10"
    return "image folder" if (root / "train").is_dir() and (root / "test").is_dir() else None


def setup_notebook(use_drive: bool = False, drive_folder: str = "ddpm_lib", seed: int = 0,
                   drive_root: str | os.PathLike | None = None) -> NotebookSetup:
    """Device, smoke mode, data and runs folders for a notebook; prints one line per choice and seeds torch.

    use_drive: keep the data and the runs on Google Drive, in <drive>/MyDrive/<drive_folder>/data and /runs,
    so every later runtime reads CIFAR-10 from there (the first one downloads it) and a re-run after a
    disconnect resumes; $DDPM_DATA_ROOT still names the data. In Colab the Drive is mounted at
    /content/drive; elsewhere pass drive_root, the folder where a Drive is already mounted (or synced).
    On a CUDA GPU with TF32 (compute capability 8+) fp32 matmuls and convolutions run in TF32, as the Trainer's.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    if not drive_folder or Path(drive_folder).is_absolute():
        raise ValueError(f"drive_folder: expected a folder name inside MyDrive, got {drive_folder!r}")
    in_colab = "google.colab" in sys.modules
    smoke = _smoke_from_env()
    device = default_device()
    drive = _mount_drive(drive_root, in_colab, drive_folder) if use_drive else None
    if os.environ.get("DDPM_DATA_ROOT"):
        data_root, data_from = Path(os.environ["DDPM_DATA_ROOT"]).expanduser(), "$DDPM_DATA_ROOT"
    elif drive is not None:
        data_root = drive / "data"
        _check_writable(data_root, "use_drive (data)")
        data_from = ("a copy on Drive" if _layout(data_root) else
                     "Google Drive: CIFAR-10 is downloaded there once, then every notebook reads that copy")
    else:
        data_root, data_from = Path("data"), "local folder"
    if drive is not None:
        runs, runs_from = drive / "runs", "Google Drive"
        _check_writable(runs, "use_drive (runs)")
    else:
        from_env = bool(os.environ.get("DDPM_RUNS"))
        runs = Path(os.environ.get("DDPM_RUNS") or "runs").expanduser()
        runs_from = "$DDPM_RUNS" if from_env else "local folder"
        _check_writable(runs, "DDPM_RUNS" if from_env else "runs")
    torch.manual_seed(seed)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else " (no CUDA GPU found)"
    print(f"device: {device}{gpu}")
    if enable_tf32(device):  # as the Trainer does
        print("tf32: on (torch.backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32 = True, as the Trainer)")
    print(f"smoke: {smoke}" + (" (DDPM_SMOKE=1: CI sizes)" if smoke else " (real sizes)"))
    print(f"data: {data_root} ({data_from})")
    print(f"runs: {runs} ({runs_from})")
    print(f"seed: torch.manual_seed({seed})" + (" | in Colab" if in_colab else ""))
    return NotebookSetup(device=device, smoke=smoke, data_root=data_root, runs=runs, in_colab=in_colab, seed=seed,
                         drive=drive)


def _classes_in_turn(labels: torch.Tensor) -> torch.Tensor:
    """The order that takes one image of each class in turn (the i-th of every class, then the (i+1)-th), so that
    the first n images of a class-sorted folder hold every class about equally, as the first n of CIFAR-10 do."""
    rank = torch.empty_like(labels)  # each image's position within its class
    for k in labels.unique():
        rank[labels == k] = torch.arange(int((labels == k).sum()))
    return torch.argsort(rank * (int(labels.max()) + 1) + labels, stable=True)


def _load_cifar10(setup: NotebookSetup, split: str):
    """(images, labels, class_names, where) of CIFAR-10's split from setup.data_root, in either layout."""
    root, train = setup.data_root, split == "train"
    if _layout(root) == "image folder":
        images, labels, names = load_image_folder(root / split, size=32, with_labels=True)
        if tuple(names) != CIFAR10_CLASSES:
            raise ValueError(f"{root / split}: expected CIFAR-10's class folders {', '.join(CIFAR10_CLASSES)}, "
                             f"found {', '.join(names)}")
        order = _classes_in_turn(labels)  # a folder lists class after class; CIFAR-10's own batches mix them
        return images[order], labels[order], CIFAR10_CLASSES, f"image folder {root}"
    there = _layout(root) == "cifar10"
    images, labels = load_cifar10(root, train=train, download=not setup.smoke, verify_md5=not setup.smoke)
    return images, labels, CIFAR10_CLASSES, str(root) if there else f"downloaded to {root}"


def load_training_images(setup: NotebookSetup, n: int | None = None, with_labels: bool = False,
                         data: str | None = None, size: int = 32, split: str = "train"):
    """Images of CIFAR-10's `split` ("train" or "test"), uint8 (N, 3, size, size), the first n (offline: the
    procedural shapes set), or data="shapes" / "cifar10" to ask for one. size != 32 makes shapes at that
    size and averages CIFAR-10's pixels down (area interpolation) to it. setup.data_root is torchvision's
    CIFAR-10 root (md5-checked; downloaded when missing) or an image folder with train/ and test/ class folders.

    Returns images, or (images, labels, class_names) with_labels. In smoke mode the CIFAR-10-format
    fixture under setup.data_root must be there (it is the path under test): FileNotFoundError if not.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n: expected a positive int or None (all images), got {n!r}")
    if data not in (None, "shapes", "cifar10"):
        raise ValueError(f"data: expected None (CIFAR-10, else shapes), 'shapes' or 'cifar10', got {data!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 32:
        raise ValueError(f"size: expected an int in [8, 32], got {size!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    err = None
    if data != "shapes":
        try:
            images, labels, class_names, where = _load_cifar10(setup, split)
            images, labels = images[:n], labels[:n]
            if size != 32:  # (N, 3, 32, 32) -> (N, 3, size, size), each pixel the mean of the ones it covers
                images = torch.nn.functional.interpolate(images.float(), size=size, mode="area").round().byte()
            print(f"data: CIFAR-10 {split} ({where}), {len(images):,} images at {size}x{size}")
        except (FileNotFoundError, ValueError) as e:
            if setup.smoke or data == "cifar10":
                hint = (f"smoke mode (DDPM_SMOKE=1) needs the CIFAR-10-format fixture in {setup.data_root}: {e}. "
                        f"The test suite writes it (conftest.py); set DDPM_DATA_ROOT to its folder"
                        if setup.smoke else f"data='cifar10': CIFAR-10 is not available ({e})")
                raise FileNotFoundError(hint) from None
            err = e
    if data == "shapes" or err is not None:
        count = n or (50_000 if split == "train" else 10_000)
        seed = setup.seed + (split == "test")  # the test split: other shapes than the training ones
        print(f"data: {'CIFAR-10 unavailable (' + str(err) + '); using ' if err else ''}{count:,} procedural "
              f"shapes at {size}x{size}" + (" (test split: another seed)" if split == "test" else ""))
        images, labels = make_shapes(count, size=size, seed=seed, with_labels=True)
        class_names = SHAPE_KINDS
    return (images, labels, class_names) if with_labels else images


def training_data_of(model: UNet) -> dict:
    """load_training_images' data= and size= for what `model` learned: at QUICK_WIN's image size it is notebook
    05's CPU quick win (its shapes); at any other size CIFAR-10 (offline: the shapes) at that size."""
    size = model.config.image_size
    return {"data": QUICK_WIN["data"] if size == QUICK_WIN["image_size"] else None, "size": size}


def training_run(setup: NotebookSetup, preset: str, data: str | None = None) -> Path:
    """The folder notebook 05 trains `preset` in (and find_model looks in): runs/05_training/<preset>[-smoke],
    or with data="cifar10" runs/05_training/<preset>-cifar10[-smoke] (05's labelled CIFAR-10 run on a CPU)."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    if data not in (None, "cifar10"):
        raise ValueError(f"data: expected None or 'cifar10', got {data!r}")
    return setup.runs / TRAINING_RUNS / (preset + ("-cifar10" if data else "") + ("-smoke" if setup.smoke else ""))


def is_cifar10(ckpt: dict) -> bool:
    """Whether a checkpoint's recorded data (its "data" entry) is CIFAR-10: notebook 05 records
    {"name": "CIFAR-10", ...}, `python -m ddpm_lib train` {"data": "cifar10" or a folder, "class_names": ...}."""
    info = ckpt.get("data") or {}
    return (info.get("name") == "CIFAR-10" or info.get("data") == "cifar10"
            or tuple(info.get("class_names") or ()) == CIFAR10_CLASSES)


def _preset_of(folder: Path) -> str:
    """The preset in a run folder's name: <preset>[-cifar10][-smoke] (the preset "ddpm-cifar10" ends so itself)."""
    name = folder.name.removesuffix("-smoke")
    return name if name in PRESETS else name.removesuffix("-cifar10")


def _describe(path: Path, ema: bool, origin: str) -> str:
    ckpt = read_checkpoint(path)
    data = "CIFAR-10" if is_cifar10(ckpt) else ((ckpt.get("data") or {}).get("name") or "data not recorded")
    return (f"{origin}: preset {_preset_of(path.parent)}, {data}, step {ckpt['step']}, "
            f"{'EMA' if ema else 'raw'} weights ({path})")


def _train_brief(setup: NotebookSetup, folder: Path) -> None:
    """The tiny network, a few hundred steps (30 in smoke mode): enough for every later cell to run."""
    T = 100 if setup.smoke else 1000
    schedule = NoiseSchedule.paper(T)  # the paper's betas, scaled by 1000 / T for the smoke run's T = 100
    images = load_training_images(setup, n=None if setup.smoke else 10_000)
    config = TrainConfig(steps=30 if setup.smoke else 500, batch_size=8 if setup.smoke else 64, lr=5e-4,
                         warmup_steps=10, seed=setup.seed, out_dir=str(folder), sample_every=0, progress=False)
    torch.manual_seed(setup.seed)  # the initial weights
    Trainer(unet_from_preset("tiny"), schedule, config, device=setup.device).fit(images)


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
    candidates = [p for p in candidates if data is None or is_cifar10(read_checkpoint(p))]
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
            model = pretrained.load_ddpm_cifar10().to(setup.device).eval()
            description = f"official DDPM CIFAR-10 weights ({pretrained.REPO_ID})"
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
