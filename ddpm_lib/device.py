"""Where things run and rest: the device and the cache folder, shared by the library, the CLI and the notebooks."""
import os
from pathlib import Path

import torch


def default_device() -> torch.device:
    """CUDA if present, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cache_dir(*parts: str) -> Path:
    """$DDPM_LIB_CACHE, else $XDG_CACHE_HOME/ddpm_lib, else ~/.cache/ddpm_lib; joined with `parts`."""
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = os.environ.get("DDPM_LIB_CACHE") or xdg / "ddpm_lib"
    return Path(root).expanduser().joinpath(*parts)
