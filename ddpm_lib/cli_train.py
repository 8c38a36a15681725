"""`python -m ddpm_lib train`: its flags (the seed's knobs), resume checks, the run it builds, DDP under torchrun.

Parts before the whole: the knobs' argparse types, the parser, model / schedule / data from the flags, the
flags a resumed run refuses, DDP set-up, then `train` (what the parser runs).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

import torch

from .cli_args import arg_type, device_arg, non_negative_int, positive_int, where
from .schedule import PAPER_SCHEDULE, NoiseSchedule
from .train import TrainConfig
from .unet import PRESETS

SEED_NET = PRESETS["seed"]                                  # the seed's network: the knobs' documented defaults
KNOBS = {"ch_list": "--ch-list", "attention_layer": "--attention-layer", "num_heads": "--heads",
         "temb_dim": "--temb-dim", "dropout": "--dropout",
         "image_size": "--image-size"}  # UNetConfig field -> the train flag that overrides it
TRAIN_OVERRIDES = ("lr", "warmup_steps", "ema_decay", "ema_warmup", "log_every", "sample_every", "checkpoint_every",
                   "cond_drop_prob")  # TrainConfig fields a flag may set, also when resuming


# -- argparse types of the knobs --------------------------------------------------------------------------------
def _int_list(allow_empty: bool):
    """"3,64,128" -> (3, 64, 128) of positive ints; "none" or "" -> () where allowed."""
    def parse(text):
        if allow_empty and text.strip().lower() in ("", "none"):
            return ()
        values = tuple(int(part) for part in text.split(","))
        return values if min(values) >= 1 else None
    return parse


_positive_float = arg_type(where(float, lambda v: 0 < v < math.inf), "a positive number")
_probability = arg_type(where(float, lambda v: 0 <= v < 1), "a number in [0, 1)")
_beta = arg_type(where(float, lambda v: 0 < v < 1), "a number in (0, 1)")
_ch_list = arg_type(_int_list(False), "comma-separated positive channel counts, e.g. 3,64,128,256,512")
_levels = arg_type(_int_list(True), "comma-separated level indices into --ch-list, e.g. 1,2 (or none)")


def _preset(text: str) -> str:
    """--preset: a name in PRESETS."""
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r}; expected one of {sorted(PRESETS)}")
    return text


def _show(value) -> str:
    """A flag's value as it is typed: (3, 64) -> "3,64", () -> "none"."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return str(value)


# -- the parser -------------------------------------------------------------------------------------------------
def add_train_parser(sub) -> None:
    """The `train` sub-command, added to build_parser()'s sub-parsers."""
    p = sub.add_parser("train", help="train a UNet (Algorithm 1); DDP under torchrun")
    p.add_argument("--preset", type=_preset, help=f"UNet preset: {', '.join(PRESETS)} (needed for a new run)")
    p.add_argument("--image-size", type=positive_int, help="training resolution; data is resized to it (default: "
                                                           "the preset's, 32)")
    p.add_argument("--data", help="cifar10, shapes, or a folder of images (default on --resume: the run's)")
    p.add_argument("--data-root", default="data", help="CIFAR-10 root (downloaded there when missing)")
    p.add_argument("--steps", type=positive_int, required=True,
                   help="total optimizer steps to reach (also on --resume)")
    p.add_argument("--batch-size", type=positive_int, help=f"global batch size, split over DDP ranks "
                                                           f"(default {TrainConfig.batch_size})")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, loss.jsonl, samples/")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt when it exists; flags that "
                   "would change its network, schedule, data or seed are refused")
    p.add_argument("--seed", type=int, help=f"seed of init, data order, noise and dropout (default {TrainConfig.seed})")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", type=device_arg, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--lr", type=_positive_float, help=f"Adam learning rate (default {TrainConfig.lr})")
    p.add_argument("--warmup-steps", type=non_negative_int, help=f"linear warm-up steps, 0 = none "
                                                                 f"(default {TrainConfig.warmup_steps})")
    p.add_argument("--ema-decay", type=float, help=f"EMA decay (default {TrainConfig.ema_decay}, reached after a "
                                                   f"warm-up: min(decay, (1 + n) / (10 + n)) at update n)")
    p.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_const", const=False,
                   help="a constant EMA decay from the first step, as in the paper")
    p.add_argument("--log-every", type=positive_int, help=f"steps between loss read-backs "
                                                          f"(default {TrainConfig.log_every})")
    p.add_argument("--sample-every", type=non_negative_int, help=f"steps between sample grids, 0 = never "
                                                                 f"(default {TrainConfig.sample_every})")
    p.add_argument("--checkpoint-every", type=non_negative_int,
                   help=f"steps between checkpoints, 0 = only at the end (default {TrainConfig.checkpoint_every})")
    p.add_argument("--n-images", type=positive_int, help="shapes: how many to make; else keep the first N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("the seed's knobs (override the preset; recorded in the checkpoint)")
    g.add_argument("--timesteps", type=positive_int, metavar="T",
                   help=f"diffusion steps T (default {PAPER_SCHEDULE.steps})")
    g.add_argument("--schedule", choices=("linear", "cosine"), help="beta schedule (default linear)")
    g.add_argument("--beta-min", type=_beta, metavar="B", help=f"beta_1 of the linear schedule "
                                                               f"(default {PAPER_SCHEDULE.beta_min})")
    g.add_argument("--beta-max", type=_beta, metavar="B", help=f"beta_T of the linear schedule "
                                                               f"(default {PAPER_SCHEDULE.beta_max})")
    g.add_argument("--heads", dest="num_heads", type=positive_int, metavar="H",
                   help=f"attention heads (seed: {SEED_NET.num_heads}; default: the preset's)")
    g.add_argument("--ch-list", type=_ch_list, metavar="C,C,...",
                   help=f"image channels, then each level's (seed: {_show(SEED_NET.ch_list)}; default: the preset's)")
    g.add_argument("--attention-layer", type=_levels, metavar="L,L",
                   help=f"levels with self-attention, indices into --ch-list, or none "
                        f"(seed: {_show(SEED_NET.attention_layer)}; default: the preset's)")
    g.add_argument("--temb-dim", type=positive_int, metavar="D",
                   help=f"size of the sinusoidal time embedding (seed: {SEED_NET.temb_dim}; default: the preset's)")
    g.add_argument("--dropout", type=_probability, help=f"dropout in the res blocks (seed: {SEED_NET.dropout}; "
                                                        f"default: the preset's)")
    g = p.add_argument_group("class conditioning (classifier-free guidance)")
    g.add_argument("--class-cond", action="store_true", help="condition on the data's labels: CIFAR-10 classes, "
                   "shape kinds, or a folder's class sub-folders")
    g.add_argument("--cond-drop-prob", type=_probability, help=f"how often a label is dropped in training "
                                                               f"(default {TrainConfig.cond_drop_prob})")
    p.set_defaults(run=train)


# -- what the flags build ---------------------------------------------------------------------------------------
def _schedule(args) -> NoiseSchedule:
    """The noise schedule of --schedule, --timesteps, --beta-min and --beta-max."""
    T = args.timesteps or PAPER_SCHEDULE.steps
    if args.schedule == "cosine":
        if args.beta_min is not None or args.beta_max is not None:
            raise ValueError("--beta-min/--beta-max set the linear schedule; --schedule cosine has none")
        return NoiseSchedule.cosine(T)
    beta_min = args.beta_min if args.beta_min is not None else PAPER_SCHEDULE.beta_min
    beta_max = args.beta_max if args.beta_max is not None else PAPER_SCHEDULE.beta_max
    if beta_min >= beta_max:
        raise ValueError(f"--beta-min {beta_min} must be < --beta-max {beta_max}")
    return NoiseSchedule.linear(T, beta_min, beta_max)


def _network(args):
    """The UNetConfig of --preset with the knobs given; a bad combination names its flags."""
    given = {name: getattr(args, name) for name in KNOBS if getattr(args, name) is not None}
    try:
        return replace(PRESETS[args.preset], **given)
    except ValueError as e:
        flags = [flag for name, flag in KNOBS.items() if name in given and name in str(e)]
        flags = flags or [KNOBS[name] for name in given]
        raise ValueError(f"{'/'.join(flags)}: {e} (with --preset {args.preset})") from None


def _data_id(data: str) -> str:
    """What --data names: cifar10 or shapes, else the folder's absolute path."""
    return data if data in ("cifar10", "shapes") else str(Path(data).expanduser().resolve())


def _resume_conflicts(args, ckpt: dict, data, path: Path) -> list:
    """The flags given that disagree with the checkpoint being resumed and its DataInfo `data` (None: not
    recorded); flags left out never do."""
    from .checkpoint import config_from_dict
    from .unet import UNetConfig

    net, train_config = config_from_dict(UNetConfig, ckpt["unet_config"], path), ckpt["train_config"]
    sched = NoiseSchedule.from_state_dict(ckpt["schedule"])
    stored = {"--seed": train_config["seed"], "--batch-size": train_config["batch_size"],
              "--timesteps": sched.steps, "--schedule": sched.kind,
              "--beta-min": sched.params.get("beta_min", f"none ({sched.kind} schedule)"),
              "--beta-max": sched.params.get("beta_max", f"none ({sched.kind} schedule)"),
              **{flag: getattr(net, name) for name, flag in KNOBS.items()}}
    given = {"--seed": args.seed, "--batch-size": args.batch_size, "--timesteps": args.timesteps,
             "--schedule": args.schedule, "--beta-min": args.beta_min, "--beta-max": args.beta_max,
             **{flag: getattr(args, name) for name, flag in KNOBS.items()}}
    if data is not None:
        stored.update({"--data": data.name, "--n-images": data.n})
        given.update({"--data": args.data and _data_id(args.data), "--n-images": args.n_images})
    conflicts = [f"{flag} {_show(value)} (the run's: {_show(stored[flag])})" for flag, value in given.items()
                 if value is not None and value != stored[flag]]
    if args.preset is not None:  # the preset's other fields (the knobs given are compared above)
        preset = PRESETS[args.preset]
        differ = [f.name for f in fields(preset) if f.name not in KNOBS and f.name != "num_classes"
                  and getattr(preset, f.name) != getattr(net, f.name)]
        conflicts += [f"--preset {args.preset} (the run's network differs in {', '.join(differ)})"] if differ else []
    if args.class_cond and net.num_classes is None:
        conflicts.append("--class-cond (the run's network is unconditional)")
    return conflicts


# -- DDP --------------------------------------------------------------------------------------------------------
def _init_distributed(device: torch.device | None) -> torch.device:
    """Under torchrun (WORLD_SIZE > 1): join the process group, NCCL on CUDA, gloo otherwise."""
    import torch.distributed as dist

    from .utils import default_device

    device = device if device is not None else default_device()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


@contextmanager
def _rank_zero_first():
    """Under DDP, rank 0 downloads / decodes the data first; the other ranks then read its files or cache."""
    import torch.distributed as dist

    from .runtime import rank_and_world

    rank, world = rank_and_world()
    if rank != 0:
        dist.barrier()
    yield
    if rank == 0 and world > 1:
        dist.barrier()


# -- train ------------------------------------------------------------------------------------------------------
def _fit(args, device: torch.device) -> None:
    """A new run from --preset, --data and the knobs, or --resume of OUT/checkpoint.pt; trained to --steps."""
    from .checkpoint import CHECKPOINT_NAME, data_info_of, read_checkpoint
    from .data import load_dataset, reload_dataset
    from .train import Trainer
    from .unet import UNet

    checkpoint = Path(args.out) / CHECKPOINT_NAME
    if checkpoint.exists() and not args.resume:
        raise ValueError(f"{checkpoint} exists: pass --resume to continue it, or choose another --out")
    overrides = {"steps": args.steps, "out_dir": args.out, "progress": not args.no_progress, "compile": args.compile,
                 **{name: getattr(args, name) for name in TRAIN_OVERRIDES if getattr(args, name) is not None}}
    resuming, recorded = args.resume and checkpoint.exists(), None  # recorded: the resumed run's DataInfo
    if resuming:
        ckpt = read_checkpoint(checkpoint)
        recorded = data_info_of(ckpt, checkpoint)
        conflicts = _resume_conflicts(args, ckpt, recorded, checkpoint)
        if conflicts:
            raise ValueError(f"--resume: {'; '.join(conflicts)}: leave these flags out to continue {checkpoint}, "
                             f"or choose another --out")
        if recorded is None and args.data is None:
            raise ValueError(f"--data: {checkpoint} does not record its training data; pass --data")
        seed = ckpt["train_config"]["seed"]
        class_cond = ckpt["unet_config"].get("num_classes") is not None
        size = ckpt["unet_config"]["image_size"]
    else:
        if args.preset is None or args.data is None:
            raise ValueError("--preset and --data are needed to start a new run")
        seed = args.seed if args.seed is not None else TrainConfig.seed
        config, schedule, class_cond = _network(args), _schedule(args), args.class_cond
        batch = {} if args.batch_size is None else {"batch_size": args.batch_size}
        train_config = TrainConfig(seed=seed, **batch, **overrides)
        size = config.image_size
    if args.cond_drop_prob is not None and not class_cond:
        raise ValueError("--cond-drop-prob: the network is unconditional (train with --class-cond)")

    with _rank_zero_first():  # a resumed run's own images by its record, else the ones --data names
        loaded = (reload_dataset(recorded, root=args.data_root) if recorded is not None else
                  load_dataset(args.data, root=args.data_root, n=args.n_images, seed=seed, size=size))
    if class_cond and loaded.labels is None:
        raise ValueError(f"--class-cond: {loaded.info.name} has no classes (an image folder needs its images in "
                         f"class sub-folders, none directly in it)")
    if resuming:
        trainer = Trainer.load(checkpoint, device=device, **overrides)
        if trainer.rank == 0:
            print(f"resuming {checkpoint} at step {trainer.step} of {args.steps}", file=sys.stderr)
    else:
        torch.manual_seed(seed)  # weight init (DDP broadcasts rank 0's anyway)
        model = UNet(replace(config, num_classes=len(loaded.info.class_names)) if class_cond else config)
        trainer = Trainer(model, schedule, train_config, device=device)
    trainer.data_info = loaded.info  # resumed: the record itself
    trainer.fit(loaded.images, loaded.labels if class_cond else None)
    if trainer.rank == 0:
        print(f"step {trainer.step}: wrote {checkpoint}", file=sys.stderr)


def train(args) -> None:
    """The `train` command: _fit inside a DDP process group when torchrun started us."""
    import torch.distributed as dist

    device = _init_distributed(args.device)
    try:
        _fit(args, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
