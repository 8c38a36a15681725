"""What every notebook sets up: device, smoke mode, runs folder or Drive, and its data with the offline fallback.

A notebook starts with `setup = setup_notebook()`, which reads the environment the test suite sets
(DDPM_SMOKE, DDPM_DATA_ROOT, DDPM_RUNS), mounts Google Drive in Colab when asked, seeds torch and
prints one line per choice, so a reader of the notebook sees what it ran on. In Colab every notebook is
its own runtime: with use_drive the data and notebook 05's checkpoints live on Google Drive, where the
next notebook's runtime finds them (see `ddpm_lib.nb.runs`).
"""
from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..data import CIFAR10_CLASSES, ImageSet, load_dataset
from ..runtime import enable_tf32
from ..utils import check_int, default_device

COLAB_DRIVE = "/content/drive"  # where Colab mounts Google Drive ($DDPM_COLAB_DRIVE: the Colab emulation's, tests/)
CIFAR10_FOLDER = "cifar-10-batches-py"  # torchvision's CIFAR-10 root holds its batch files in this folder


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


def installed_from() -> str:
    """Where pip installed ddpm_lib from, as it recorded it (PEP 610's direct_url.json): a git URL with the ref asked
    for and the commit, a local folder or file; without that record only the version (an index, or a development
    install)."""
    import json
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("ddpm_lib")
    except PackageNotFoundError:
        return "not installed (imported from a checkout)"
    url = json.loads(dist.read_text("direct_url.json") or "{}")
    if not url:
        return f"ddpm_lib {dist.version} (pip recorded no URL: a package index or a development install)"
    if "vcs_info" in url:
        vcs = url["vcs_info"]
        return (f"ddpm_lib {dist.version} from {url['url']}@{vcs.get('requested_revision', '(default branch)')}, "
                f"commit {vcs['commit_id'][:12]}")
    editable = " (editable)" if url.get("dir_info", {}).get("editable") else ""
    return f"ddpm_lib {dist.version} from {url['url']}{editable}"


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
    if in_colab:  # what the install cell installed, as pip recorded it
        print(f"installed: {installed_from()}")
    return NotebookSetup(device=device, smoke=smoke, data_root=data_root, runs=runs, in_colab=in_colab, seed=seed,
                         drive=drive)


def _load_cifar10(setup: NotebookSetup, n: int | None, size: int, split: str) -> tuple[ImageSet, str]:
    """(CIFAR-10's split from setup.data_root in either layout, where it came from)."""
    root = setup.data_root
    if _layout(root) == "image folder":  # its classes in turn (load_image_folder), as CIFAR-10's own batches mix them
        loaded = load_dataset(str(root / split), n=n, size=size)
        if loaded.info.class_names != CIFAR10_CLASSES:
            raise ValueError(f"{root / split}: expected CIFAR-10's class folders {', '.join(CIFAR10_CLASSES)}, "
                             f"found {', '.join(loaded.info.class_names or ['none'])}")
        return loaded, f"image folder {root}"
    there = _layout(root) == "cifar10"
    loaded = load_dataset("cifar10", root=root, n=n, size=size, split=split, download=not setup.smoke,
                          verify_md5=not setup.smoke)
    return loaded, str(root) if there else f"downloaded to {root}"


def load_training_images(setup: NotebookSetup, n: int | None = None, data: str | None = None, size: int = 32,
                         split: str = "train") -> ImageSet:
    """(images, labels, info) of CIFAR-10's `split` ("train" or "test"), uint8 (N, 3, size, size), the first n
    (offline: the procedural shapes set, and info.fallback says why), or data="shapes" / "cifar10" to ask for
    one. size != 32 makes shapes at that size and averages CIFAR-10's pixels down (area interpolation) to it.
    setup.data_root is torchvision's CIFAR-10 root (md5-checked; downloaded when missing) or an image folder
    with train/ and test/ class folders (read by load_dataset as a folder: resized by load_image_folder).
    info, a DataInfo, is what a Trainer saves as its data (`trainer.data_info = loaded.info`).

    In smoke mode the CIFAR-10-format fixture under setup.data_root must be there (it is the path under test):
    FileNotFoundError if not.
    """
    if n is not None:
        check_int(n, "n")
    if data not in (None, "shapes", "cifar10"):
        raise ValueError(f"data: expected None (CIFAR-10, else shapes), 'shapes' or 'cifar10', got {data!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 32:
        raise ValueError(f"size: expected an int in [8, 32], got {size!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    err = None
    if data != "shapes":
        try:
            loaded, where = _load_cifar10(setup, n, size, split)
            n_loaded = len(loaded.images)
            print(f"data: CIFAR-10 {split} ({where}), {n_loaded:,} image{'s' * (n_loaded != 1)} at {size}x{size}")
            return loaded
        except (FileNotFoundError, ValueError) as e:
            if setup.smoke or data == "cifar10":
                hint = (f"smoke mode (DDPM_SMOKE=1) needs the CIFAR-10-format fixture in {setup.data_root}: {e}. "
                        f"The test suite writes it (conftest.py); set DDPM_DATA_ROOT to its folder"
                        if setup.smoke else f"data='cifar10': CIFAR-10 is not available ({e})")
                raise FileNotFoundError(hint) from None
            err = e
    count = n or (50_000 if split == "train" else 10_000)
    print(f"data: {'CIFAR-10 unavailable (' + str(err) + '); using ' if err else ''}{count:,} procedural "
          f"shapes at {size}x{size}" + (" (test split: another seed)" if split == "test" else ""))
    shapes = load_dataset("shapes", n=count, seed=setup.seed, size=size, split=split)  # test split: seed + 1
    if err is not None:  # the record says so too: the name is "shapes", the fallback why
        shapes = shapes._replace(info=replace(shapes.info, fallback=f"CIFAR-10 unavailable ({err})"))
    return shapes
