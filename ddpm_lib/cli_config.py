"""train --config FILE: a run folder's config.json (Trainer.run_config) or a hand-written file, checked key by key.

Every section is optional: "network" (UNetConfig fields), "objective" (Objective fields), "schedule"
(NoiseSchedule.config: its kind and parameters), "training" (TrainConfig fields) and "data" (a DataInfo: the images
to reload). An unknown section or
key, or a value of the wrong type, is a ValueError naming it ("training.lr: expected a number, got 'fast'"),
raised before anything is read or trained.
"""
from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CONFIG_NAME
from .data import DataInfo
from .objective import Objective
from .schedule import NoiseSchedule
from .train_config import TrainConfig
from .unet import UNetConfig

SECTIONS = ("network", "objective", "schedule", "training", "data")


@dataclass(frozen=True)
class RunConfig:
    network: dict | None              # UNetConfig fields, type-checked (lists made tuples); None: not given
    objective: dict | None            # Objective fields, type-checked; None: not given
    schedule: NoiseSchedule | None    # the schedule it describes; None: not given
    training: dict                    # TrainConfig fields, type-checked; {} when not given
    data: DataInfo | None             # the images to reload; None: not given


def _expected(hint) -> str:
    """What a value of type `hint` looks like in JSON, for the error."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             tuple: "a list"}
    if typing.get_origin(hint) is tuple:
        return f"a list of {_expected(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return names.get(hint, str(hint))


def _convert(value, hint):
    """`value` as a field of type `hint` (a JSON list becomes a tuple); raises TypeError where it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _convert(value, option)
            except TypeError:
                pass
        raise TypeError
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    if hint is tuple or origin is tuple:
        if not isinstance(value, list):
            raise TypeError
        return tuple(value if hint is tuple else (_convert(v, args[0]) for v in value))
    fits = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), str: lambda v: isinstance(v, str)}
    if hint in fits and fits[hint](value):
        return float(value) if hint is float else value
    raise TypeError


def check_fields(cls, values, section: str) -> dict:
    """The fields of dataclass `cls` in `values` (a JSON object), each checked against its annotation."""
    if not isinstance(values, dict):
        raise ValueError(f"{section}: expected an object of {cls.__name__} fields, got {json.dumps(values)}")
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        if key not in hints:
            raise ValueError(f"{section}.{key}: unknown key; {cls.__name__} has {', '.join(hints)}")
        try:
            checked[key] = _convert(value, hints[key])
        except TypeError:
            raise ValueError(f"{section}.{key}: expected {_expected(hints[key])}, got {json.dumps(value)}") from None
    return checked


def read_config(path) -> RunConfig:
    """The RunConfig of a config.json (or a run folder holding one); a ValueError starting with "--config"."""
    path = Path(path).expanduser()
    path = path / CONFIG_NAME if path.is_dir() else path
    where = f"--config {path}"
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{where}: file not found (expected a config.json or a run folder holding one)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: not a readable JSON file ({str(e).splitlines()[0]})") from None
    try:
        if not isinstance(values, dict):
            raise ValueError(f"expected an object with the sections {', '.join(SECTIONS)}")
        unknown = [key for key in values if key not in SECTIONS]
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown section; expected {', '.join(SECTIONS)}")
        network = check_fields(UNetConfig, values["network"], "network") if "network" in values else None
        if network is not None:
            UNetConfig(**network)  # the network's own checks, before any work
        objective = check_fields(Objective, values["objective"], "objective") if "objective" in values else None
        if objective is not None:
            try:
                Objective(**objective)
            except ValueError as e:
                raise ValueError(f"objective.{str(e).removeprefix('Objective.')}") from None
        schedule = None
        if values.get("schedule") is not None:
            try:
                schedule = NoiseSchedule.from_config(values["schedule"])
            except (TypeError, ValueError) as e:
                raise ValueError(f"schedule.{e}") from None
        training = check_fields(TrainConfig, values.get("training", {}), "training")
        data = None
        if values.get("data") is not None:
            data = DataInfo(**check_fields(DataInfo, values["data"], "data"))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return RunConfig(network, objective, schedule, training, data)
