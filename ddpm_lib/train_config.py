"""TrainConfig: the training run's settings, the paper's CIFAR-10 recipe as defaults, each checked where it enters."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .cli_args import FieldError, flag, integer, number, step_list
from .runtime import PRECISIONS
from .timesteps import DDIM_STEPS
from .train_log import LOGGERS


@dataclass(frozen=True)
class TrainConfig:
    """A run's training settings. A field with a flag (cli_args.flag) is what that `python -m ddpm_lib train` flag
    sets, with its --help text, and whether a resumed run may change it (resume=True)."""

    lr: float = field(  # Adam learning rate (paper, CIFAR-10)
        default=2e-4, metadata=flag("--lr", number, "Adam learning rate (default {default})", resume=True))
    warmup_steps: int = field(  # linear learning-rate warm-up from 0 over this many steps (0: none)
        default=5000, metadata=flag("--warmup-steps", integer, "linear warm-up steps, 0 = none (default {default})",
                                    resume=True))
    batch_size: int = field(  # global batch, split evenly over DDP ranks
        default=128, metadata=flag("--batch-size", integer, "global batch size, split over DDP ranks (default "
                                   "{default})"))
    grad_clip: float = 1.0           # clip the global gradient norm to this (0: no clipping)
    ema_decay: float = field(  # EMA of the weights, used for sampling and evaluation
        default=0.9999, metadata=flag("--ema-decay", number, "EMA decay (default {default}, reached after a warm-up: "
                                      "min(decay, (1 + n) / (10 + n)) at update n)", resume=True))
    ema_warmup: bool = field(  # EMA decay min(ema_decay, (1+n)/(10+n)) at update n (False: constant, paper)
        default=True, metadata=flag("--no-ema-warmup", help="a constant EMA decay from the first step, as in the "
                                    "paper", const=False, resume=True))
    train_steps: int = field(  # optimizer steps (updates) to reach in all, also when resuming
        default=800_000, metadata=flag("--train-steps", integer, "optimizer steps to reach in all (also on --resume; "
                                       "default: the recipe's)", resume=True))
    flip: bool = True                # random horizontal flips of the training images
    memory_budget: float | None = field(  # GB of decoded uint8 images that may rest on the training device; a folder
        # of more streams from its files (ddpm_lib.stream), the same batches; None: a quarter of the device's memory
        default=None, metadata=flag("--memory-budget", number, "GB of decoded images that may rest on the training "
                                    "device; a folder of more streams from its files through DataLoader workers, in "
                                    "the same batches (default: a quarter of the device's memory)", metavar="GB",
                                    resume=True))
    workers: int = field(  # DataLoader workers that decode a streamed folder's batches (0: in the training process)
        default=4, metadata=flag("--workers", integer, "DataLoader workers decoding a streamed folder's batches, 0 = "
                                 "in the training process (default {default})", metavar="K", resume=True))
    cond_drop_prob: float = field(  # class-conditional models only: a label is replaced by -1 (no label) this often
        default=0.1, metadata=flag("--cond-drop-prob", number, "how often a label is dropped in training, for "
                                   "classifier-free guidance (--class-cond) (default {default})", resume=True))
    seed: int = field(  # seeds data order, noise (t, eps), label drops, dropout and sample grids
        default=0, metadata=flag("--seed", integer, "seed of init, data order, noise and dropout (default "
                                 "{default})"))
    recipe: str | None = None        # the named recipe (ddpm_lib.recipes.RECIPES) the run started from; None: by hand
    precision: str = field(  # autocast dtype: auto (bf16 on Ampere+, fp16 + GradScaler before, fp32 off CUDA), fp32
        # (TF32 on Ampere+), bf16 or fp16 (runtime.precision_dtype)
        default="auto", metadata=flag("--precision", help="autocast dtype: auto (bf16 on Ampere and later, fp16 with "
                                      "a GradScaler before, fp32 off CUDA), fp32, bf16 or fp16 (default {default})",
                                      choices=PRECISIONS, resume=True))
    grad_accum: int = field(  # micro-batches per optimizer step, each batch_size / (ranks x grad_accum) images: the
        # gradient of one batch of batch_size, in less memory
        default=1, metadata=flag("--grad-accum", integer, "micro-batches per optimizer step: the same gradient as one "
                                 "--batch-size batch in 1/K of the activation memory (default {default})",
                                 metavar="K", resume=True))
    channels_last: bool = True       # CUDA only: NHWC memory format for the convolutions
    checkpoint_activations: bool = field(  # recompute the res blocks' activations in the backward: less memory
        default=False, metadata=flag("--checkpoint-activations", help="recompute the res blocks' activations in the "
                                     "backward pass (torch.utils.checkpoint): less memory, about a third more "
                                     "compute", const=True, resume=True))
    compile: bool = False            # torch.compile the model
    log_every: int = field(  # read losses back to the host, log them and update the bar
        default=100, metadata=flag("--log-every", integer, "steps between loss read-backs (default {default})",
                                   resume=True))
    logger: str = field(  # out_dir/loss.jsonl; "tensorboard", "wandb": also events (ddpm_lib.train_log)
        default="jsonl", metadata=flag("--logger", help="jsonl: OUT/loss.jsonl (default); tensorboard: also event "
                                       "files in OUT/tensorboard: loss, loss by quarter of t, lr, gradient norm, EMA "
                                       "decay, images/s, sample grids (the tensorboard extra); wandb: the same as a "
                                       "W&B run in OUT/wandb, offline unless WANDB_MODE says otherwise (the wandb "
                                       "extra)", choices=LOGGERS, resume=True))
    sample_every: int = field(  # save a PNG grid of EMA samples every this many steps (0: never)
        default=10_000, metadata=flag("--sample-every", integer, "steps between sample grids, 0 = never (default "
                                      "{default})", resume=True))
    checkpoint_every: int = field(  # save out_dir/checkpoint.pt every this many steps (0: only at the end)
        default=10_000, metadata=flag("--checkpoint-every", integer, "steps between checkpoints, 0 = only at the end "
                                      "(default {default})", resume=True))
    keep_last: int | None = field(  # also keep the last N checkpoints as checkpoint-<step>.pt (None: only the latest)
        default=None, metadata=flag("--keep-last", integer, "also keep the last N checkpoints as "
                                    "OUT/checkpoint-<step>.pt (default: only the latest, OUT/checkpoint.pt)",
                                    metavar="N", resume=True))
    milestones: tuple[int, ...] = field(  # steps whose checkpoint is kept for good as checkpoint-<step>.pt
        default=(), metadata=flag("--milestones", step_list, "steps whose checkpoint is kept for good as "
                                  "OUT/checkpoint-<step>.pt (saved at those steps whatever --checkpoint-every)",
                                  metavar="S,S,...", resume=True))
    eval_every: int = field(  # evaluate the EMA model (Trainer.evaluator) every this many steps (0: never)
        default=0, metadata=flag("--eval-every", integer, "evaluate the EMA model every N steps into OUT/eval.jsonl: "
                                 "FID and KID of --eval-n DPM-Solver++ samples (20 sample steps) against Inception "
                                 "features of the training images (cached), and the loss on held-out images at "
                                 "fixed t and noise (CIFAR-10's test split, other shapes; a folder: its first "
                                 "images) (default {default}: never)", metavar="N", resume=True))
    eval_n: int = field(  # samples per evaluation, scored by FID and KID (at least 2)
        default=1000, metadata=flag("--eval-n", integer, "samples per evaluation (default {default})", metavar="K",
                                    resume=True))
    keep_best: bool = field(  # keep checkpoint-best.pt: the run at its evaluation of lowest FID
        default=False, metadata=flag("--keep-best", help="also keep OUT/checkpoint-best.pt, the run at its "
                                     "evaluation of lowest FID (needs --eval-every)", const=True, resume=True))
    sample_n: int = 64               # images in each sample grid
    sample_steps: int = DDIM_STEPS   # DDIM's model evaluations for each sample grid (DDIM's default)
    out_dir: str | None = "runs/ddpm"  # where the loss log, grids and checkpoint go (None: write nothing)
    progress: bool = True            # show a tqdm progress bar

    def __post_init__(self):
        positive = ("lr", "batch_size", "train_steps", "log_every", "sample_n", "sample_steps", "grad_accum")
        non_negative = ("warmup_steps", "grad_clip", "sample_every", "checkpoint_every", "eval_every", "eval_n",
                        "workers")
        for name in positive + non_negative:
            value = getattr(self, name)
            kind = float if name in ("lr", "grad_clip") else int
            if isinstance(value, bool) or not isinstance(value, (kind, int)) or not math.isfinite(value):
                expected = "a number" if kind is float else "an int"
                raise FieldError("TrainConfig", name, f"must be {expected}, got {value!r}")
            if value < 0 or (value == 0 and name in positive):
                raise FieldError("TrainConfig", name, f"must be {'> 0' if name in positive else '>= 0'}, got {value!r}")
        if self.memory_budget is not None and (isinstance(self.memory_budget, bool) or not isinstance(
                self.memory_budget, (int, float)) or not 0 < self.memory_budget < math.inf):
            raise FieldError("TrainConfig", "memory_budget", f"must be None or a number of GB > 0, got "
                                                             f"{self.memory_budget!r}")
        for name in ("ema_decay", "cond_drop_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise FieldError("TrainConfig", name, f"must be in [0, 1), got {value!r}")
        if self.batch_size % self.grad_accum:
            raise FieldError("TrainConfig", "grad_accum", f"must divide batch_size={self.batch_size} into equal "
                                                          f"micro-batches, got {self.grad_accum}")
        if self.keep_last is not None and (isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int)
                                           or self.keep_last < 1):
            raise FieldError("TrainConfig", "keep_last", f"must be None or an int >= 1, got {self.keep_last!r}")
        if not isinstance(self.milestones, tuple) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in self.milestones):
            raise FieldError("TrainConfig", "milestones", f"must be a tuple of steps >= 1, got {self.milestones!r}")
        if self.eval_every and self.eval_n < 2:
            raise FieldError("TrainConfig", "eval_n", f"must be >= 2 with eval_every={self.eval_every} (FID needs two "
                                                      f"samples), got {self.eval_n!r}")
        if self.keep_best is not False and (self.keep_best is not True or not self.eval_every):
            raise FieldError("TrainConfig", "keep_best", f"needs eval_every > 0 (the best is the evaluation of lowest "
                             f"FID), got keep_best={self.keep_best!r} with eval_every={self.eval_every!r}")
        if self.logger not in LOGGERS:
            raise FieldError("TrainConfig", "logger", f"must be one of {LOGGERS}, got {self.logger!r}")
        if self.precision not in PRECISIONS:
            raise FieldError("TrainConfig", "precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
