"""What the device and the process group decide for training: the autocast dtype, TF32, the rank, dropout's RNG;
DDP's process group under torchrun."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .utils import default_device


def autocast_dtype(device) -> torch.dtype | None:
    """The autocast dtype `device` trains in: bf16 on CUDA compute capability >= 8.0 (Ampere+), fp16 (with a
    GradScaler) on older CUDA cards, None (fp32) on CPU and MPS."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # TrainConfig.precision


def precision_dtype(precision: str, device) -> torch.dtype | None:
    """The autocast dtype that TrainConfig.precision trains in on `device` (None: fp32, no autocast): "auto" is
    autocast_dtype(device); "bf16" is refused on a CUDA card without bfloat16 (before Ampere); "fp16" brings
    the Trainer's GradScaler."""
    if precision not in PRECISIONS:
        raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        return autocast_dtype(device)
    if precision == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        name, (major, minor) = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
        raise ValueError(f"TrainConfig.precision bf16: {name} (compute capability {major}.{minor}) has no "
                         f"bfloat16 (Ampere, 8.0, and later do); use fp16 or auto")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def enable_tf32(device) -> bool:
    """Let fp32 matmuls and convolutions run in TF32 on CUDA compute capability >= 8.0 (Ampere+), as training does;
    True where it did."""
    device = torch.device(device)
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def precision_name(dtype: torch.dtype | None) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def seed_global_rng(seed: int, device: torch.device) -> None:
    """Seed the global RNG that dropout draws from: the CPU's and `device`'s (other GPUs' are left alone)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed's when a process group is up, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device | None) -> torch.device:
    """Under torchrun (WORLD_SIZE > 1): join the process group, NCCL on CUDA, gloo otherwise."""
    device = device if device is not None else default_device()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


@contextmanager
def rank_zero_first():
    """Under DDP, rank 0 downloads / decodes the data first; the other ranks then read its files or cache."""
    rank, world = rank_and_world()
    if rank != 0:
        dist.barrier()
    yield
    if rank == 0 and world > 1:
        dist.barrier()
