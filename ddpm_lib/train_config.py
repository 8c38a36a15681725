"""TrainConfig: the training run's settings, the paper's CIFAR-10 recipe as defaults, each checked where it enters."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .runtime import PRECISIONS
from .timesteps import DDIM_STEPS
from .train_log import LOGGERS


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 2e-4                 # Adam learning rate (paper, CIFAR-10)
    warmup_steps: int = 5000         # linear learning-rate warm-up from 0 over this many steps (0: none)
    batch_size: int = 128            # global batch, split evenly over DDP ranks
    grad_clip: float = 1.0           # clip the global gradient norm to this (0: no clipping)
    ema_decay: float = 0.9999        # EMA of the weights, used for sampling and evaluation
    ema_warmup: bool = True          # EMA decay min(ema_decay, (1+n)/(10+n)) at update n (False: constant, paper)
    train_steps: int = 800_000       # optimizer steps (updates) to reach in all, also when resuming
    flip: bool = True                # random horizontal flips of the training images
    cond_drop_prob: float = 0.1      # class-conditional models only: a label is replaced by -1 (no label) this often
    seed: int = 0                    # seeds data order, noise (t, eps), label drops, dropout and sample grids
    recipe: str | None = None        # the named recipe (ddpm_lib.recipes.RECIPES) the run started from; None: by hand
    precision: str = "auto"          # autocast dtype: auto (bf16 on Ampere+, fp16 + GradScaler before, fp32 off
                                     # CUDA), fp32 (TF32 on Ampere+), bf16 or fp16 (runtime.precision_dtype)
    grad_accum: int = 1              # micro-batches per optimizer step, each batch_size / (ranks x grad_accum)
                                     # images: the gradient of one batch of batch_size, in less memory
    channels_last: bool = True       # CUDA only: NHWC memory format for the convolutions
    checkpoint_activations: bool = False  # recompute the res blocks' activations in the backward: less memory
    compile: bool = False            # torch.compile the model
    log_every: int = 100             # read losses back to the host, log them and update the bar
    logger: str = "jsonl"            # out_dir/loss.jsonl; "tensorboard", "wandb": also events (ddpm_lib.train_log)
    sample_every: int = 10_000       # save a PNG grid of EMA samples every this many steps (0: never)
    checkpoint_every: int = 10_000   # save out_dir/checkpoint.pt every this many steps (0: only at the end)
    keep_last: int | None = None     # also keep the last N checkpoints as checkpoint-<step>.pt (None: only the latest)
    milestones: tuple[int, ...] = ()  # steps whose checkpoint is kept for good as checkpoint-<step>.pt
    eval_every: int = 0              # evaluate the EMA model (Trainer.evaluator) every this many steps (0: never)
    eval_n: int = 1000               # samples per evaluation, scored by FID and KID (at least 2)
    keep_best: bool = False          # keep checkpoint-best.pt: the run at its evaluation of lowest FID
    sample_n: int = 64               # images in each sample grid
    sample_steps: int = DDIM_STEPS   # DDIM's model evaluations for each sample grid (DDIM's default)
    out_dir: str | None = "runs/ddpm"  # where the loss log, grids and checkpoint go (None: write nothing)
    progress: bool = True            # show a tqdm progress bar

    def __post_init__(self):
        positive = ("lr", "batch_size", "train_steps", "log_every", "sample_n", "sample_steps", "grad_accum")
        non_negative = ("warmup_steps", "grad_clip", "sample_every", "checkpoint_every", "eval_every", "eval_n")
        for name in positive + non_negative:
            value = getattr(self, name)
            kind = float if name in ("lr", "grad_clip") else int
            if isinstance(value, bool) or not isinstance(value, (kind, int)) or not math.isfinite(value):
                expected = "a number" if kind is float else "an int"
                raise ValueError(f"TrainConfig.{name} must be {expected}, got {value!r}")
            if value < 0 or (value == 0 and name in positive):
                raise ValueError(f"TrainConfig.{name} must be {'> 0' if name in positive else '>= 0'}, got {value!r}")
        for name in ("ema_decay", "cond_drop_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1), got {value!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"TrainConfig.grad_accum must divide batch_size={self.batch_size} into equal "
                             f"micro-batches, got {self.grad_accum}")
        if self.keep_last is not None and (isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int)
                                           or self.keep_last < 1):
            raise ValueError(f"TrainConfig.keep_last must be None or an int >= 1, got {self.keep_last!r}")
        if not isinstance(self.milestones, tuple) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in self.milestones):
            raise ValueError(f"TrainConfig.milestones must be a tuple of steps >= 1, got {self.milestones!r}")
        if self.eval_every and self.eval_n < 2:
            raise ValueError(f"TrainConfig.eval_n must be >= 2 with eval_every={self.eval_every} (FID needs two "
                             f"samples), got {self.eval_n!r}")
        if self.keep_best is not False and (self.keep_best is not True or not self.eval_every):
            raise ValueError(f"TrainConfig.keep_best needs eval_every > 0 (the best is the evaluation of lowest FID), "
                             f"got keep_best={self.keep_best!r} with eval_every={self.eval_every!r}")
        if self.logger not in LOGGERS:
            raise ValueError(f"TrainConfig.logger must be one of {LOGGERS}, got {self.logger!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
