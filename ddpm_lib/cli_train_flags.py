"""`python -m ddpm_lib train`'s parser. The flags of TrainConfig's, UNetConfig's and Objective's fields come from the
fields' metadata (cli_args.flag: the flag, its type and help, whether a resumed run may change it); the others are
written out here: the run's own (--config, --out, --resume, ...) and the ones that set the recipe's name, the
schedule and the data, whose records carry no flags (WRITTEN). Every flag that sets a record's field stores its
value under the field's name (argparse's `dest`), None where it is not given; cli_train.py builds the run from them.
"""
from __future__ import annotations

import argparse
from dataclasses import fields

from .cli_args import beta, device_arg, flags, positive_int, show
from .objective import Objective
from .recipes import RECIPES, SCHEDULES
from .schedule import PAPER_SCHEDULE
from .train_config import TrainConfig
from .unet import PRESETS, UNetConfig

NETWORK, OBJECTIVE, TRAINING = flags(UNetConfig), flags(Objective), flags(TrainConfig)  # {field: Flag}
# the record's fields that the flags written out below set ("section.field" of config.json -> the flag, whose value
# is argparse's dest: the flag without "--", "_" for "-"); a resumed run keeps every one
WRITTEN = {"training.recipe": "--recipe", "schedule.kind": "--schedule", "schedule.num_timesteps": "--num-timesteps",
           "schedule.beta_min": "--beta-min", "schedule.beta_max": "--beta-max", "data.name": "--data",
           "data.n": "--n-images"}
# every flag that sets a field a resumed run keeps: "section.field" -> (its value's name in the args, the flag)
KEPT = {f"{section}.{name}": (name, flag.name)
        for section, record in (("network", NETWORK), ("objective", OBJECTIVE), ("training", TRAINING))
        for name, flag in record.items() if not flag.resume}
KEPT.update({key: (flag.removeprefix("--").replace("-", "_"), flag) for key, flag in WRITTEN.items()})


def preset_name(text: str) -> str:
    """--preset: a name in PRESETS."""
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r}; expected one of {sorted(PRESETS)}")
    return text


def recipe_name(text: str) -> str:
    """--recipe: a name in RECIPES."""
    if text not in RECIPES:
        raise argparse.ArgumentTypeError(f"unknown recipe {text!r}; expected one of {sorted(RECIPES)}")
    return text


def add_flags(group, record, note: str = "") -> None:
    """The flags of dataclass `record`'s fields (cli_args.flag), in field order, each storing under the field's name
    (None where not given: the record's default, or the resumed run's value, stands); `note` ends every help text.
    "{default}" in a help text or the note is the field's default."""
    defaults = {f.name: f.default for f in fields(record)}
    for name, flag in flags(record).items():
        text = (flag.help + note).replace("{default}", show(defaults[name]))
        if flag.const is not None:  # a switch
            group.add_argument(flag.name, dest=name, action="store_const", const=flag.const, help=text)
        else:
            group.add_argument(flag.name, dest=name, type=flag.type, choices=flag.choices, metavar=flag.metavar,
                               help=text)


# -- the parser -------------------------------------------------------------------------------------------------
def add_train_parser(sub) -> argparse.ArgumentParser:
    """The `train` sub-command, added to build_parser()'s sub-parsers (which sets what it runs)."""
    p = sub.add_parser("train", help="train a UNet (Algorithm 1); DDP under torchrun")
    p.add_argument("--recipe", type=recipe_name, help=f"a named recipe ({', '.join(RECIPES)}): its preset, data, image "
                   f"size, training steps and settings; flags given override its fields (ddpm_lib.recipes)")
    p.add_argument("--config", metavar="FILE", help="start from a config.json (a run folder's, or hand-written): its "
                   "network, objective, schedule, training and data; flags given override it, and it overrides "
                   "--recipe")
    p.add_argument("--preset", type=preset_name, help=f"UNet preset: {', '.join(PRESETS)} (a new run needs it or "
                   f"--recipe)")
    p.add_argument("--data", help="cifar10, shapes, or a folder of images (default on --resume: the run's)")
    p.add_argument("--data-root", default="data", help="CIFAR-10 root (downloaded there when missing)")
    p.add_argument("--n-images", type=positive_int, help="shapes: how many to make; else keep the first N")
    p.add_argument("--class-cond", action="store_true", help="condition on the data's labels: CIFAR-10 classes, "
                   "shape kinds, or a folder's class sub-folders")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, loss.jsonl, samples/")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt when it exists; flags that "
                   "would change its recipe, network, objective, schedule, data, seed or batch size are refused")
    p.add_argument("--device", type=device_arg, help="cpu, cuda, mps (default: the best available)")
    # this run's own, not its record's: given or not, on --resume too
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    kept = ", ".join(flag.name for flag in TRAINING.values() if not flag.resume)
    add_flags(p.add_argument_group(f"training (recorded in the checkpoint; --resume may change each but {kept})"),
              TrainConfig)
    g = p.add_argument_group("the walkthrough's knobs (override the preset; recorded in the checkpoint)")
    g.add_argument("--num-timesteps", type=positive_int, metavar="T",
                   help=f"diffusion timesteps T (default {PAPER_SCHEDULE.num_timesteps})")
    g.add_argument("--schedule", choices=SCHEDULES, help="beta schedule; flow: flow matching's evenly spaced times "
                   "(default: the recipe's, else linear)")
    g.add_argument("--beta-min", type=beta, metavar="B", help=f"beta_1 of the linear schedule "
                                                               f"(default {PAPER_SCHEDULE.beta_min})")
    g.add_argument("--beta-max", type=beta, metavar="B", help=f"beta_T of the linear schedule "
                                                               f"(default {PAPER_SCHEDULE.beta_max})")
    add_flags(g, UNetConfig, note=" (walkthrough: {default}; default: the preset's)")  # the defaults: walkthrough's
    add_flags(p.add_argument_group("the objective: what the network predicts and how the loss weighs each t"),
              Objective)
    return p
