"""Weights that ship with the package, in ddpm_lib/weights/: each a .pt file with a JSON card beside it.

The card says what the file holds and how it was made (command, recipe, steps, training minutes, machine) and
its sha256, which every read checks: a truncated download or a git-lfs pointer fails with one clear line.
`SHIPPED_MODEL` is the CPU's CIFAR-10 model (the `cifar10-cond` recipe's run): its EMA weights in float16 with
the records that rebuild it (UNetConfig, Objective, the schedule's state, DataInfo, TrainConfig), read offline by
`load_shipped_model`; notebooks 06-08 show it when the reader has no model of their own (ddpm_lib.nb.find_model).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .checkpoint import denoiser_of, read_checkpoint, write_atomically
from .objective import Denoiser
from .utils import default_device

WEIGHTS = Path(__file__).parent / "weights"      # the package's folder of shipped weights
SHIPPED_MODEL = WEIGHTS / "cifar10_cond.pt"        # the CPU-trained class-conditional CIFAR-10 model
SHIPPED_FORMAT = "ddpm_lib.shipped"
SHIPPED_KEYS = ("unet_config", "objective", "schedule", "data", "train_config", "step", "ema")


def sha256_of(path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def card_path(path) -> Path:
    """The JSON card beside a shipped .pt file: NAME.json."""
    return Path(path).with_suffix(".json")


def read_card(path) -> dict:
    """The card of the shipped file `path`, after checking that the file is there and its sha256 is the card's."""
    path, card_file = Path(path), card_path(path)
    for p in (path, card_file):
        if not p.is_file():
            raise FileNotFoundError(f"shipped weights not found: {p} (a ddpm_lib install without its weights/ "
                                    f"folder; reinstall the package)")
    card = json.loads(card_file.read_text())
    actual = sha256_of(path)
    if actual != card.get("sha256"):
        raise ValueError(f"{path}: sha256 {actual[:12]}... is not its card's {str(card.get('sha256'))[:12]}... (a "
                         f"truncated copy or a git-lfs pointer? fetch the real file)")
    return card


def ship_model(checkpoint, out=SHIPPED_MODEL, card: dict | None = None) -> Path:
    """Write the EMA weights of a ddpm_lib checkpoint (file or run folder) in float16, with its records, to `out`,
    and its card (`card`'s entries, the step, recipe and sha256) beside it. Returns `out`."""
    ckpt = read_checkpoint(checkpoint)
    state = {"format": SHIPPED_FORMAT, **{k: ckpt[k] for k in SHIPPED_KEYS if k != "ema"},
             "ema": {k: v.half() if v.is_floating_point() else v for k, v in ckpt["ema"].items()}}
    write_atomically(out, lambda f: torch.save(state, f))
    meta = {"step": ckpt["step"], "recipe": ckpt["train_config"].get("recipe"), **(card or {}),
            "sha256": sha256_of(out)}
    write_atomically(card_path(out), lambda f: f.write((json.dumps(meta, indent=1) + "\n").encode()))
    return Path(out)


def load_shipped_model(path=SHIPPED_MODEL, device=None) -> tuple[Denoiser, dict]:
    """(the denoiser of the shipped EMA weights in float32, its UNet in eval mode, on `device`; its card)."""
    card = read_card(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != SHIPPED_FORMAT:
        raise ValueError(f"{path} is not a shipped ddpm_lib model (no format={SHIPPED_FORMAT!r} entry)")
    missing = [k for k in SHIPPED_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is a shipped ddpm_lib model without {', '.join(missing)} (written by another "
                         f"ddpm_lib: ship its checkpoint again with ship_model)")
    device = torch.device(device) if device is not None else default_device()
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state["ema"].items()}
    return denoiser_of(state, weights, path, device), card
