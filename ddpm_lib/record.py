"""One record of a run: its network, objective, schedule, training settings and data, in the one place that writes
them (the run folder's config.json, the checkpoint's entries) and reads them back.

A checkpoint holds the record as "unet_config", "objective", "schedule" (the float64 betas with their kind and
parameters), "train_config" and "data"; config.json as the sections "network", "objective", "schedule" (its kind
and parameters), "training" and "data". A config.json may also be written by hand with any of its sections
(`train --config FILE`): `read_config` checks it key by key, and a bad key or value is a ValueError naming it
("training.lr: expected a number, got 'fast'"), raised before anything is read or trained.
"""
from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .data import DataInfo
from .objective import Objective
from .schedule import NoiseSchedule
from .train_config import TrainConfig
from .unet import UNetConfig

CONFIG_NAME = "config.json"  # beside a run's checkpoint: the run's record, human-readable
SECTIONS = ("network", "objective", "schedule", "training", "data")  # config.json's, in this order
CHECKPOINT_ENTRIES = ("unet_config", "objective", "schedule", "train_config", "data")  # the record's, in a checkpoint


def config_from_dict(cls, values: dict, path):
    """Rebuild dataclass `cls` from a stored asdict; unknown stored fields are ignored, bad values named."""
    if not isinstance(values, dict):
        raise ValueError(f"{path}: stored {cls.__name__} is not a dict (got {type(values).__name__})")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in values.items() if k in names})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: stored {cls.__name__} is invalid ({e})") from None


def objective_of(ckpt: dict, path) -> Objective:
    """The Objective of a checkpoint's (or shipped file's) "objective" entry; a ValueError naming the entry."""
    try:
        return Objective.from_dict(ckpt["objective"])
    except ValueError as e:
        raise ValueError(f"{path}: checkpoint entry 'objective' is not a valid Objective ({e})") from None


def data_info_of(ckpt: dict, path) -> DataInfo | None:
    """The DataInfo of a checkpoint's "data" entry (None: the run did not record its data); a ValueError naming
    the entry when it is not one."""
    if ckpt["data"] is None:
        return None
    try:
        return DataInfo.from_dict(ckpt["data"])
    except ValueError as e:
        raise ValueError(f"{path}: checkpoint entry 'data' is not a valid DataInfo ({e})") from None


@dataclass(frozen=True)
class RunRecord:
    network: UNetConfig        # the U-Net it trains
    objective: Objective       # what the network predicts and how the loss weighs each t
    schedule: NoiseSchedule    # the noise schedule, its betas as used
    training: TrainConfig      # the training settings (with the recipe's name)
    data: DataInfo | None      # what the training images are; None: not recorded

    def checkpoint_entries(self) -> dict:
        """The record as a checkpoint's entries (plain values and the betas' tensor)."""
        return {"unet_config": asdict(self.network), "objective": self.objective.to_dict(),
                "schedule": self.schedule.state_dict(), "train_config": asdict(self.training),
                "data": None if self.data is None else self.data.to_dict()}

    def to_config(self) -> dict:
        """The record as config.json holds it (the schedule by its kind and parameters, NoiseSchedule.config)."""
        return {"network": asdict(self.network), "objective": self.objective.to_dict(),
                "schedule": self.schedule.config(), "training": asdict(self.training),
                "data": None if self.data is None else self.data.to_dict()}

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path) -> "RunRecord":
        """The record of a checkpoint (read_checkpoint's dict); a ValueError naming the entry that is not valid."""
        try:
            schedule = NoiseSchedule.from_state_dict(ckpt["schedule"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: checkpoint entry 'schedule' is not a valid NoiseSchedule ({e})") from None
        return cls(config_from_dict(UNetConfig, ckpt["unet_config"], path), objective_of(ckpt, path), schedule,
                   config_from_dict(TrainConfig, ckpt["train_config"], path), data_info_of(ckpt, path))



def record_differences(a: dict, b: dict) -> dict:
    """{"section.field": (a's value, b's value)} for every field where two records in config.json's form differ
    (RunRecord.to_config; a section may be None: no fields), in config.json's order of sections."""
    out = {}
    for section in SECTIONS:
        x, y = a.get(section) or {}, b.get(section) or {}
        for key in list(x) + [k for k in y if k not in x]:
            if x.get(key) != y.get(key):
                out[f"{section}.{key}"] = (x.get(key), y.get(key))
    return out


# -- config.json written by hand ---------------------------------------------------------------------------------
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
