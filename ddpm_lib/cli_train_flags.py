"""`python -m ddpm_lib train`'s flags: the walkthrough's knobs, the objective, the training settings, and which
field of a run's record each flag sets (cli_train.py builds the run from them).
"""
from __future__ import annotations

import argparse

from .cli_args import beta, ch_list, integer, levels, number, positive_int, probability, step_list, device_arg
from .objective import PREDICTIONS, WEIGHTINGS, Objective
from .recipes import RECIPES, SCHEDULES
from .runtime import PRECISIONS
from .schedule import PAPER_SCHEDULE
from .train_config import TrainConfig
from .train_log import LOGGERS
from .unet import PRESETS

WALKTHROUGH_NET = PRESETS["walkthrough"]  # the walkthrough's network: the knobs' documented defaults
KNOBS = {"ch_list": "--ch-list", "attention_layer": "--attention-layer", "num_heads": "--heads",
         "temb_dim": "--temb-dim", "dropout": "--dropout",
         "image_size": "--image-size"}  # UNetConfig field -> the flag that sets it
# TrainConfig fields a flag may set, also when resuming
TRAIN_OVERRIDES = ("lr", "warmup_steps", "ema_decay", "ema_warmup", "log_every", "sample_every", "checkpoint_every",
                   "cond_drop_prob", "precision", "grad_accum", "logger", "keep_last", "milestones",
                   "checkpoint_activations", "eval_every", "eval_n", "keep_best")
# Objective field -> the flag that sets it (a new run only)
OBJECTIVE = {"prediction": "--prediction", "weighting": "--loss-weighting", "snr_gamma": "--snr-gamma"}
RECIPE_FIELDS = ("preset", "data", "image_size", "train_steps", "batch_size", "lr", "warmup_steps", "ema_decay",
                 "schedule")  # what --recipe fills where no flag is given, with its objective's fields


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


def show(value) -> str:
    """A flag's value as it is typed: (3, 64) -> "3,64", () -> "none"."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return str(value)


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
    p.add_argument("--image-size", type=positive_int, help="training resolution; data is resized to it (default: "
                                                           "the preset's, 32)")
    p.add_argument("--data", help="cifar10, shapes, or a folder of images (default on --resume: the run's)")
    p.add_argument("--data-root", default="data", help="CIFAR-10 root (downloaded there when missing)")
    p.add_argument("--train-steps", type=integer, help="optimizer steps to reach in all (also on --resume; "
                                                            "default: the recipe's)")
    p.add_argument("--batch-size", type=integer, help=f"global batch size, split over DDP ranks "
                                                           f"(default {TrainConfig.batch_size})")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, loss.jsonl, samples/")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt when it exists; flags that "
                   "would change its network, schedule, data or seed are refused")
    p.add_argument("--seed", type=int, help=f"seed of init, data order, noise and dropout (default {TrainConfig.seed})")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--precision", choices=PRECISIONS, help="autocast dtype: auto (bf16 on Ampere and later, fp16 with "
                   "a GradScaler before, fp32 off CUDA), fp32, bf16 or fp16 (default auto)")
    p.add_argument("--checkpoint-activations", action="store_const", const=True, help="recompute the res blocks' "
                   "activations in the backward pass (torch.utils.checkpoint): less memory, about a third more compute")
    p.add_argument("--grad-accum", type=integer, metavar="K", help="micro-batches per optimizer step: the same "
                   "gradient as one --batch-size batch in 1/K of the activation memory (default 1)")
    p.add_argument("--device", type=device_arg, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--lr", type=number, help=f"Adam learning rate (default {TrainConfig.lr})")
    p.add_argument("--warmup-steps", type=integer, help=f"linear warm-up steps, 0 = none "
                                                                 f"(default {TrainConfig.warmup_steps})")
    p.add_argument("--ema-decay", type=number, help=f"EMA decay (default {TrainConfig.ema_decay}, reached after a "
                                                   f"warm-up: min(decay, (1 + n) / (10 + n)) at update n)")
    p.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_const", const=False,
                   help="a constant EMA decay from the first step, as in the paper")
    p.add_argument("--logger", choices=LOGGERS, help="jsonl: OUT/loss.jsonl (default); tensorboard: also event files "
                   "in OUT/tensorboard: loss, loss by quarter of t, lr, gradient norm, EMA decay, images/s, sample "
                   "grids (the tensorboard extra); wandb: the same as a W&B run in OUT/wandb, offline unless "
                   "WANDB_MODE says otherwise (the wandb extra)")
    p.add_argument("--log-every", type=integer, help=f"steps between loss read-backs "
                                                          f"(default {TrainConfig.log_every})")
    p.add_argument("--sample-every", type=integer, help=f"steps between sample grids, 0 = never "
                                                                 f"(default {TrainConfig.sample_every})")
    p.add_argument("--checkpoint-every", type=integer,
                   help=f"steps between checkpoints, 0 = only at the end (default {TrainConfig.checkpoint_every})")
    p.add_argument("--keep-last", type=integer, metavar="N", help="also keep the last N checkpoints as "
                   "OUT/checkpoint-<step>.pt (default: only the latest, OUT/checkpoint.pt)")
    p.add_argument("--milestones", type=step_list, metavar="S,S,...", help="steps whose checkpoint is kept for good "
                   "as OUT/checkpoint-<step>.pt (saved at those steps whatever --checkpoint-every)")
    p.add_argument("--eval-every", type=integer, metavar="N", help="evaluate the EMA model every N steps into "
                   "OUT/eval.jsonl: FID and KID of --eval-n DPM-Solver++ samples (20 sample steps) against Inception "
                   "features of the training images (cached), and the loss on held-out images at fixed t and noise "
                   "(CIFAR-10's test split, other shapes; a folder: its first images) (default 0: never)")
    p.add_argument("--eval-n", type=integer, metavar="K", help=f"samples per evaluation (default {TrainConfig.eval_n})")
    p.add_argument("--keep-best", action="store_const", const=True, help="also keep OUT/checkpoint-best.pt, the run "
                   "at its evaluation of lowest FID (needs --eval-every)")
    p.add_argument("--n-images", type=positive_int, help="shapes: how many to make; else keep the first N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("the walkthrough's knobs (override the preset; recorded in the checkpoint)")
    g.add_argument("--num-timesteps", type=positive_int, metavar="T",
                   help=f"diffusion timesteps T (default {PAPER_SCHEDULE.num_timesteps})")
    g.add_argument("--schedule", choices=SCHEDULES, help="beta schedule (default: the recipe's, else linear)")
    g.add_argument("--beta-min", type=beta, metavar="B", help=f"beta_1 of the linear schedule "
                                                               f"(default {PAPER_SCHEDULE.beta_min})")
    g.add_argument("--beta-max", type=beta, metavar="B", help=f"beta_T of the linear schedule "
                                                               f"(default {PAPER_SCHEDULE.beta_max})")
    g.add_argument("--heads", dest="num_heads", type=positive_int, metavar="H",
                   help=f"attention heads (walkthrough: {WALKTHROUGH_NET.num_heads}; default: the preset's)")
    g.add_argument("--ch-list", type=ch_list, metavar="C,C,...",
                   help=f"image channels, then each level's (walkthrough: {show(WALKTHROUGH_NET.ch_list)}; "
                        f"default: the preset's)")
    g.add_argument("--attention-layer", type=levels, metavar="L,L",
                   help=f"levels with self-attention, indices into --ch-list, or none "
                        f"(walkthrough: {show(WALKTHROUGH_NET.attention_layer)}; default: the preset's)")
    g.add_argument("--temb-dim", type=positive_int, metavar="D",
                   help=f"size of the sinusoidal time embedding (walkthrough: {WALKTHROUGH_NET.temb_dim}; default: the "
                        f"preset's)")
    g.add_argument("--dropout", type=probability, help=f"dropout in the res blocks (walkthrough: "
                                                        f"{WALKTHROUGH_NET.dropout}; default: the preset's)")
    g = p.add_argument_group("the objective: what the network predicts and how the loss weighs each t")
    g.add_argument("--prediction", choices=PREDICTIONS, help="eps (the paper), x0, or v = sqrt(alpha_bar) eps - "
                   "sqrt(1 - alpha_bar) x0 (default: the recipe's, else eps)")
    g.add_argument("--loss-weighting", dest="weighting", choices=WEIGHTINGS, help="uniform (with eps the paper's "
                   "L_simple) or min-snr (min-SNR-gamma, Hang et al. 2023) (default: the recipe's, else uniform)")
    g.add_argument("--snr-gamma", type=number, help=f"gamma of min-snr (default {Objective.snr_gamma})")
    g = p.add_argument_group("class conditioning (classifier-free guidance)")
    g.add_argument("--class-cond", action="store_true", help="condition on the data's labels: CIFAR-10 classes, "
                   "shape kinds, or a folder's class sub-folders")
    g.add_argument("--cond-drop-prob", type=number, help=f"how often a label is dropped in training "
                                                               f"(default {TrainConfig.cond_drop_prob})")
    return p


# the flag that sets each field of a run's record (config.json's "section.field"), for a resumed run's conflicts
RECORD_FLAGS = {**{f"network.{name}": flag for name, flag in KNOBS.items()},
                **{f"objective.{name}": flag for name, flag in OBJECTIVE.items()},
                "schedule.kind": "--schedule", "schedule.num_timesteps": "--num-timesteps",
                "schedule.beta_min": "--beta-min", "schedule.beta_max": "--beta-max", "training.seed": "--seed",
                "training.batch_size": "--batch-size", "training.recipe": "--recipe", "data.name": "--data",
                "data.n": "--n-images"}
