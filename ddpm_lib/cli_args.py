"""The argparse types of `python -m ddpm_lib` (cli.py, cli_train.py), each error one line naming what it expected;
and the flag a record's field carries in its metadata (`flag`: TrainConfig, UNetConfig and Objective), from which
cli_train_flags.py builds `train`'s parser.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

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
channel_counts = arg_type(int_list(False), "comma-separated positive channel counts, e.g. 3,64,128,256,512")
level_indices = arg_type(int_list(True), "comma-separated level indices into --ch-list, e.g. 1,2 (or none)")
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


def show(value) -> str:
    """A flag's value as it is typed: (3, 64) -> "3,64", () -> "none"."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return str(value)


# -- the flag of a record's field -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flag:
    """The `train` flag that sets a record's field, in the field's metadata (`flag`)."""

    name: str                                 # the option, e.g. "--lr"; its value is stored under the field's name
    type: Callable[[str], Any] | None         # reads the value given (a type above); None: `choices` or a switch
    help: str                                 # the --help text; "{default}" in it is the field's default, as typed
    choices: tuple | None = None              # the values it takes
    metavar: str | None = None                # the value's name in --help (None: argparse's, the flag in capitals)
    const: bool | None = None                 # a switch (no value): what it stores, True, or False for a --no-...
    resume: bool = False                      # a resumed run may change the field (else it keeps the run's)


def flag(name: str, type: Callable[[str], Any] | None = None, help: str = "", **options) -> dict:
    """The metadata of a field that a `train` flag sets: field(default=..., metadata=flag("--lr", number, ...))."""
    return {"flag": Flag(name, type, help, **options)}


def flags(record) -> dict[str, Flag]:
    """{field name: Flag} of the fields of dataclass `record` that a flag sets, in field order."""
    return {f.name: f.metadata["flag"] for f in fields(record) if "flag" in f.metadata}


class FieldError(ValueError):
    """A record's bad value: "Record.field problem", with the field's name as `field` and, where the value conflicts
    with others (UNetConfig's num_heads against the attention levels' channels), all the fields it concerns as
    `fields`, its own first (the CLI names their flags)."""

    def __init__(self, record: str, field: str, problem: str, others: tuple = ()):
        super().__init__(f"{record}.{field} {problem}")
        self.field, self.fields = field, (field, *others)
