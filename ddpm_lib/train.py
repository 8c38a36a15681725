"""Training: Algorithm 1 with the paper's CIFAR-10 recipe (or another objective), EMA, mixed precision
(ddpm_lib.runtime), resume, DDP.

Every random draw of step k comes from seeds mixed from (seed, k, rank): the data order and flips
(data.BatchOrder's, for DeviceBatches and StreamBatches alike), t, eps and label drops (one generator per step),
dropout (the global RNG, reseeded every step). So resuming needs only the step, and K ranks see the noise one
process would.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
import math
from contextlib import nullcontext
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import BEST_NAME, CHECKPOINT_NAME, read_checkpoint, keep_numbered
from .data import DataInfo, DeviceBatches
from .folders import FolderImages
from .stream import StreamBatches
from .utils import check_int, check_labels, default_device, mix_seed
from .guidance import guided
from .samplers import ddim_sample
from .objective import Denoiser, Objective, diffusion_loss
from .record import RunRecord
from .schedule import NoiseSchedule
from .train_config import TrainConfig
from .train_checkpoints import checkpoint_due, restore_trainer, save_trainer, start_run_folder
from .train_log import QUARTERS, TrainLog, check_logger, quarter_of
from .train_progress import Progress
from .runtime import enable_tf32, precision_dtype, rank_and_world, seed_global_rng
from .unet import UNet


class Trainer:
    """Trains a UNet with Algorithm 1 for an objective (what it predicts, eps, x0 or v, and the loss weighting;
    default the paper's); `fit` runs until `config.train_steps`."""

    def __init__(self, model, schedule: NoiseSchedule | None = None, config: TrainConfig | None = None,
                 objective: Objective | None = None, device=None):
        self.config = config = config if config is not None else TrainConfig()
        self.objective = objective if objective is not None else Objective()
        if not isinstance(self.objective, Objective):
            raise ValueError(f"objective: expected an Objective, got {type(self.objective).__name__}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.rank, self.world_size = rank_and_world()
        if config.batch_size % (self.world_size * config.grad_accum):
            raise ValueError(f"TrainConfig.batch_size={config.batch_size} must divide evenly over "
                             f"{self.world_size} ranks x grad_accum={config.grad_accum} micro-batches")
        cuda = self.device.type == "cuda"
        self.model = model.to(self.device)
        self.model.checkpointing = config.checkpoint_activations  # only where gradients are computed
        if cuda and config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.schedule = (schedule if schedule is not None else NoiseSchedule.paper()).to(self.device)
        self.step = 0
        self.history: list[tuple[int, float]] = []  # (step, loss) read back every log_every steps
        self.data_info: DataInfo | None = None      # what the training data is (a loader's); saved as ckpt["data"]
        # with config.eval_every, called on rank 0: (denoiser, n) -> a dict with "fid" and "eval_s"
        # (ddpm_lib.evaluation.Evaluator)
        self.evaluator: Callable[..., dict] | None = None
        self.best: dict | None = None  # the evaluation of lowest FID so far, {"step", "fid"} (saved, resumed)
        self.eval_seconds = 0.0        # time spent evaluating over the whole run (saved, resumed)

        enable_tf32(self.device)
        self.amp_dtype = precision_dtype(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, fused=cuda or None)

        # The net the loss calls: DDP all-reduces gradients; rank 0's weights are broadcast here.
        self.net = self.model
        self._ddp = None  # the DDP wrapper: its no_sync() skips the all-reduce of all but the last micro-batch
        if self.world_size > 1:
            self.net = self._ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)  # fp32 like the model
        self._params = list(self.model.parameters())
        self._ema_params = list(self.ema.parameters())
        if config.compile:
            self.net = torch.compile(self.net)
        self._noise_gen = torch.Generator(self.device)
        self._stats = torch.zeros(0)  # the last step's [grad norm, loss sum and count per quarter of t] (Progress)
        if config.out_dir is not None:
            check_logger(config.logger)  # tensorboard or wandb installed, before any step

    def lr_at(self, step: int) -> float:
        """The learning rate of update `step` (0, 1, ...): linear warm-up from 0 over warmup_steps, then lr."""
        cfg = self.config
        return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr

    def ema_decay_at(self, step: int) -> float:
        """The EMA decay of update `step`: min(decay, (1 + n) / (10 + n)) with the warm-up (TF's
        ExponentialMovingAverage with num_updates, diffusers' EMAModel), else the constant decay."""
        cfg = self.config
        return min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay

    # -- one step ---------------------------------------------------------------------------------
    def train_step(self, x0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """One update on this rank's share x0 (b,C,H,W) in [-1,1] (labels y (b,) for a class-conditional
        model); returns the loss on the device (no sync)."""
        cfg, b = self.config, x0.shape[0]
        # t, eps (and label drops) for the whole global batch from (seed, step); this rank takes the rows of
        # its images, so K ranks see exactly the noise one process would (and every rank different noise).
        self._noise_gen.manual_seed(mix_seed("noise", cfg.seed, self.step))
        n = b * self.world_size
        t = torch.randint(0, self.schedule.num_timesteps, (n,), generator=self._noise_gen, device=self.device)
        eps = torch.randn((n, *x0.shape[1:]), generator=self._noise_gen, device=self.device)
        share = slice(self.rank * b, (self.rank + 1) * b)
        t, eps = t[share], eps[share]
        if y is not None:  # classifier-free guidance training: some rows learn the unconditional eps
            drop = torch.rand(n, generator=self._noise_gen, device=self.device)[share] < cfg.cond_drop_prob
            y = torch.where(drop, -1, y)
        if self.device.type == "cuda" and cfg.channels_last:
            x0, eps = (x.contiguous(memory_format=torch.channels_last) for x in (x0, eps))
        seed_global_rng(mix_seed("dropout", cfg.seed, self.step, self.rank), self.device)  # fit restores it

        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        K, losses = cfg.grad_accum, []
        quarter = quarter_of(t, self.schedule.num_timesteps)
        sums = torch.zeros(QUARTERS, device=self.device)  # this step's loss summed by quarter of t, for the log
        for k in range(K):  # K equal micro-batches, as views of the batch (b divides by K: TrainConfig checks)
            rows = slice(k * b // K, (k + 1) * b // K)
            net = self.net if y is None else partial(self.net, y=y[rows])
            last = k == K - 1
            with (self._ddp.no_sync() if self._ddp is not None and not last else nullcontext()):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    per_example = diffusion_loss(net, self.schedule, x0[rows], self.objective, t=t[rows],
                                                 noise=eps[rows], reduction="none")
                    loss = per_example.mean()  # Algorithm 1, lines 2-5
                # the mean over the batch is the mean of the K micro-batch means: each adds 1/K of its gradient
                self.scaler.scale(loss / K).backward()  # the scaler is a no-op unless fp16
            losses.append(loss.detach())
            sums.index_add_(0, quarter[rows], per_example.detach().float())
        loss = torch.stack(losses).mean() if K > 1 else losses[0]
        self.scaler.unscale_(self.optimizer)
        norm = (torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip) if cfg.grad_clip  # before clipping
                else torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None]))
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        decay = self.ema_decay_at(self.step)
        with torch.no_grad():  # the EMA is not part of the graph: its tensors stay leaves without grad
            torch._foreach_lerp_(self._ema_params, self._params, 1.0 - decay)  # ema += (1 - decay)(w - ema)
        counts = torch.bincount(quarter, minlength=QUARTERS).float()
        self._stats = torch.cat([norm.float().reshape(1), sums, counts])
        self.step += 1
        return loss

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, images, labels: torch.Tensor | None = None, train_steps: int | None = None) -> "Trainer":
        """Train on uint8 images (N,C,H,W) (with int64 labels (N,) for a class-conditional model), on a folder's files
        (FolderImages: streamed, StreamBatches with config.workers), or on a DeviceBatches or StreamBatches, until
        `train_steps` (default config.train_steps) is reached. The caller's global RNG is left as it was."""
        cfg = self.config
        train_steps = cfg.train_steps if train_steps is None else train_steps
        check_int(train_steps, "train_steps")  # the total to reach
        if cfg.eval_every and self.evaluator is None:
            raise ValueError(f"TrainConfig.eval_every={cfg.eval_every} needs Trainer.evaluator (a "
                             f"ddpm_lib.evaluation.Evaluator)")
        batches = self._batches(images, labels)
        out = Path(cfg.out_dir) if cfg.out_dir is not None else None
        if out is not None and self.rank == 0:
            start_run_folder(out, self.record)
        log = TrainLog(out, self.step, cfg.logger) if out is not None and self.rank == 0 else None
        progress = Progress(self.step, train_steps, cfg.batch_size, self.world_size, log,
                            cfg.progress and self.rank == 0, self.lr_at, self.ema_decay_at)
        accelerator = [self.device] if self.device.type in ("cuda", "mps") else []
        try:  # train_step reseeds the global RNG every step; the caller's comes back afterwards
            with torch.random.fork_rng(devices=accelerator, device_type=self.device.type):
                while self.step < train_steps:
                    loss = self.train_step(batches.batch(self.step), batches.batch_labels(self.step))
                    progress.add(loss, self._stats)  # the statistics of the step just made
                    done = self.step == train_steps
                    save = out is not None and (done or checkpoint_due(cfg, self.step))
                    if done or save or self.step % cfg.log_every == 0:
                        self.history.extend(progress.read(self.step))
                    if out is not None and log is not None and cfg.sample_every and self.step % cfg.sample_every == 0:
                        log.grid(self.step, self.save_samples(out / "samples" / f"step_{self.step:07d}.png"))
                    if cfg.eval_every and self.step % cfg.eval_every == 0:
                        result = self.evaluate()
                        progress.pause(result["eval_s"])  # images/s counts training time only
                        if log is not None:
                            log.evaluation(result)
                        if out is not None and cfg.keep_best and result["best_step"] == self.step:
                            self.save(out / BEST_NAME)
                    if out is not None and save:  # save implies out; said again for the type checker
                        self.save(out / CHECKPOINT_NAME)
                        if self.rank == 0:  # numbered copies: the milestones and the last keep_last
                            keep_numbered(out / CHECKPOINT_NAME, self.step, cfg.keep_last, cfg.milestones)
        finally:
            progress.close()
        return self

    def evaluate(self) -> dict:
        """The evaluator's result for the EMA model at this step (computed on rank 0, given to every rank), with
        the step, the run's evaluation time so far and whether it is the best (lowest FID) so far."""
        cfg, result = self.config, None
        if self.evaluator is None:
            raise ValueError("Trainer.evaluator: expected an evaluator (ddpm_lib.evaluation.Evaluator), got None")
        if self.rank == 0:
            result = self.evaluator(self.denoiser, cfg.eval_n)
        if self.world_size > 1:
            box = [result]
            dist.broadcast_object_list(box, src=0)
            result = box[0]
        assert result is not None
        self.eval_seconds += result["eval_s"]
        if self.best is None or result["fid"] < self.best["fid"]:
            self.best = {"step": self.step, "fid": result["fid"]}
        return {"step": self.step, **result, "eval_s_total": self.eval_seconds, "best_step": self.best["step"]}

    @property
    def denoiser(self) -> Denoiser:
        """The EMA network with the run's schedule and objective: what samples and evaluations use."""
        return Denoiser(self.ema, self.schedule, self.objective)

    @property
    def record(self) -> RunRecord:
        """The run's record: its network, objective, schedule, training settings and data (saved with every
        checkpoint and as the run folder's config.json)."""
        if self.data_info is not None and not isinstance(self.data_info, DataInfo):
            raise ValueError(f"Trainer.data_info must be a DataInfo or None, got {type(self.data_info).__name__}")
        return RunRecord(self.model.config, self.objective, self.schedule, self.config, self.data_info)

    def _batches(self, images, labels) -> DeviceBatches | StreamBatches:
        """A DeviceBatches of images (and labels) on the device, or a StreamBatches of a folder's files; labels must
        match the model's num_classes."""
        cfg, K = self.config, self.model.config.num_classes
        batches: DeviceBatches | StreamBatches
        if isinstance(images, (DeviceBatches, StreamBatches)):
            if labels is not None:
                raise ValueError(f"labels: pass them to {type(images).__name__}(labels=...) along with the images")
            batches = images
        elif isinstance(images, FolderImages):
            batches = StreamBatches(images, cfg.batch_size, device=self.device, flip=cfg.flip, seed=cfg.seed,
                                    rank=self.rank, world_size=self.world_size, labels=labels, workers=cfg.workers)
        else:
            batches = DeviceBatches(images, cfg.batch_size, device=self.device, flip=cfg.flip, seed=cfg.seed,
                                    rank=self.rank, world_size=self.world_size, labels=labels)
        has_labels = batches.labels is not None
        if K is None and has_labels:
            raise ValueError("labels were given but the model is unconditional (UNetConfig.num_classes is None)")
        if K is not None and not has_labels:
            raise ValueError(f"labels: the model is class-conditional (UNetConfig.num_classes={K}); "
                             f"pass int64 labels (N,) in [0, {K})")
        if has_labels:  # integers >= 0, one per image (DeviceBatches checked); here: below the model's K
            check_labels(batches.labels, K, name=f"labels (UNetConfig.num_classes={K})", low=0)
        return batches

    @torch.no_grad()
    def save_samples(self, path, n: int | None = None) -> torch.Tensor:
        """DDIM samples of the EMA model (fixed x_T per seed; labels i % num_classes for a class-conditional
        model) as a PNG grid; returns them in [-1, 1]."""
        cfg, K = self.config, self.model.config.num_classes
        C, size = self.model.config.ch_list[0], self.model.config.image_size  # image channels and side
        n = n or cfg.sample_n
        gen = torch.Generator(self.device).manual_seed(cfg.seed)
        denoiser = self.denoiser if K is None else guided(self.denoiser, torch.arange(n, device=self.device) % K)
        x0 = ddim_sample(denoiser, (n, C, size, size), sample_steps=min(cfg.sample_steps, self.schedule.num_timesteps),
                         generator=gen, device=self.device)
        from torchvision.utils import save_image  # the PNG grid: torchvision only when one is written

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_image((x0.float().cpu() + 1) / 2, path, nrow=math.ceil(math.sqrt(n)))
        return x0

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, path=None) -> Path:
        """Write one checkpoint file atomically (ddpm_lib.train_checkpoints says what it holds). Under DDP call on
        every rank."""
        if path is None and self.config.out_dir is None:
            raise ValueError("path: expected a file to write, since TrainConfig.out_dir is None")
        path = Path(path) if path is not None else Path(str(self.config.out_dir)) / CHECKPOINT_NAME
        save_trainer(self, path)
        return path

    @classmethod
    def load(cls, path, device=None, **overrides) -> "Trainer":
        """Rebuild a Trainer from a checkpoint file or run folder; `overrides` replace TrainConfig fields
        (e.g. train_steps, out_dir). Warns once when this device trains in another precision than the saved run."""
        return cls.from_checkpoint(read_checkpoint(path), path, device, **overrides)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path, device=None, **overrides) -> "Trainer":
        """`load` of a checkpoint already read (read_checkpoint's dict; `path` names it in errors)."""
        unknown = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise ValueError(f"overrides: {', '.join(unknown)} not TrainConfig fields")
        record = RunRecord.from_checkpoint(ckpt, path)
        config = replace(record.training, **overrides)
        trainer = cls(UNet(record.network), record.schedule, config, record.objective,
                      device=device if device is not None else default_device())
        restore_trainer(trainer, ckpt, path, record)
        return trainer
