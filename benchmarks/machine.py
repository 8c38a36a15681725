"""The one line every benchmark writes beside its numbers: the hardware, the threads, torch, the load."""
import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device | str | None = None) -> str:
    """'NVIDIA H100 80GB HBM3 (cuda; torch 2.x, ...)' or 'AMD EPYC, 2 cores, torch threads 2 (cpu; ...)'."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = f"{cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{hw} ({device.type}; torch {torch.__version__}{load})"
