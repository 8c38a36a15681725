"""The argparse types of `python -m ddpm_lib` (cli.py, cli_train.py): each error one line naming what it expected."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def arg_type(parse, expected: str):
    """An argparse type: parse(text), or one line saying what was expected where parse returns None or raises."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return convert


def where(kind, ok):
    """kind(text) where ok(value), else None."""
    def parse(text):
        value = kind(text)
        return value if ok(value) else None
    return parse


integer = arg_type(int, "an integer")  # a TrainConfig field: TrainConfig checks its range
number = arg_type(where(float, math.isfinite), "a number")
positive_int = arg_type(where(int, lambda v: v >= 1), "a positive integer")
non_negative_float = arg_type(where(float, lambda v: 0 <= v < math.inf), "a number >= 0")


def device_arg(text: str) -> torch.device:
    """--device: a torch device that exists here."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu, cuda, cuda:1 or mps, "
                                         f"got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} requested but CUDA is not available here")
    return device


def int_list(allow_empty: bool):
    """"3,64,128" -> (3, 64, 128) of positive ints; "none" or "" -> () where allowed."""
    def parse(text):
        if allow_empty and text.strip().lower() in ("", "none"):
            return ()
        values = tuple(int(part) for part in text.split(","))
        return values if min(values) >= 1 else None
    return parse


probability = arg_type(where(float, lambda v: 0 <= v < 1), "a number in [0, 1)")
beta = arg_type(where(float, lambda v: 0 < v < 1), "a number in (0, 1)")
ch_list = arg_type(int_list(False), "comma-separated positive channel counts, e.g. 3,64,128,256,512")
levels = arg_type(int_list(True), "comma-separated level indices into --ch-list, e.g. 1,2 (or none)")
step_list = arg_type(int_list(False), "comma-separated steps >= 1, e.g. 1000,5000,10000")


def image_file(text: str) -> str:
    """--out of sample: a file name whose extension names an image format that PIL writes (.png, .jpg, ...),
    checked before any sampling."""
    from PIL import Image

    writable = sorted(ext for ext, kind in Image.registered_extensions().items() if kind in Image.SAVE)
    suffix = Path(text).suffix.lower()
    if suffix not in writable:
        common = [ext for ext in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".gif") if ext in writable]
        raise argparse.ArgumentTypeError(f"{text!r}: expected an image file ending in {', '.join(common)} or another "
                                         f"extension PIL writes; got {suffix or 'no extension'!r}")
    return text
