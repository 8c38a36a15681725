"""Small helpers every part shares: where to compute and cache, seeded noise, the image ranges, checks of arguments."""
import hashlib
import os
from pathlib import Path
from typing import Optional

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


def mix_seed(*parts) -> int:
    """A 63-bit generator seed from integers such as (seed, step, rank): an independent stream per tuple."""
    digest = hashlib.sha256(":".join(["ddpm_lib", *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def randn(shape, generator: Optional[torch.Generator], device, dtype=torch.float32) -> torch.Tensor:
    """N(0, I) drawn on the generator's device, then moved: a CPU generator gives the same numbers on any device."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the range the model sees)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded and clipped (the way back)."""
    return ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def check_int(value, name: str, low: int = 1, high: Optional[int] = None, high_text: Optional[str] = None,
              noun: str = "integer") -> int:
    """`value` itself when it is an int (not a bool) in [low, high], else a ValueError naming `name` and the range.

    high_text: how the message writes the upper end (e.g. "T-1=999"); default the number itself.
    noun: what the message calls the value in a range ("an integer timestep in [0, T-1=999]").
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        if high is not None:
            expected = f"an {noun} in [{low}, {high_text or high}]"
        else:
            expected = "a positive int" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_timestep(t, T: int, name: str = "t") -> int:
    """t itself when it is an integer timestep in [0, T-1], else a ValueError naming the argument."""
    return check_int(t, name, 0, T - 1, f"T-1={T - 1}", noun="integer timestep")


def check_labels(labels, num_classes: Optional[int] = None, n: Optional[int] = None, *, name: str = "y",
                 low: int = -1) -> torch.Tensor:
    """Class labels as an int64 tensor, else a ValueError naming `name` and what was expected: integers (any
    integer dtype, or a list), shape (n,) (one per row; any length when n is None), in [low, num_classes)
    (num_classes None: no upper end). low=-1 admits -1, "no label" (the null label of classifier-free
    guidance); training labels use low=0. The range check reads the values (one host sync, skipped while
    torch.compile traces, as in UNet.forward)."""
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name}: expected integers, got dtype {labels.dtype}")
    if labels.ndim != 1 or (n is not None and len(labels) != n):
        expected = "a 1-D tensor of integers" if n is None else f"{n} integers, shape ({n},) (one per row)"
        raise ValueError(f"{name}: expected {expected}, got shape {tuple(labels.shape)}")
    if not torch.compiler.is_compiling() and len(labels):
        bad = (labels < low) | (labels >= num_classes) if num_classes is not None else labels < low
        if bad.any():
            null = " (-1: no label)" if low == -1 else ""
            expected = f"labels in [{low}, {num_classes}){null}" if num_classes is not None else f"integers >= {low}"
            spread = f" (minimum {labels.min().item()}, maximum {labels.max().item()})" if len(labels) > 1 else ""
            raise ValueError(f"{name}: expected {expected}; got {labels[bad].unique()[:5].tolist()}{spread}")
    return labels.long()
