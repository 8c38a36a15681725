"""Training: Algorithm 1 with the paper's CIFAR-10 recipe, EMA, mixed precision, checkpoints, resume, DDP."""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torchvision.utils import save_image
from tqdm.auto import tqdm

from .data import DeviceBatches
from .device import default_device
from .samplers import ddim_sample
from .schedule import NoiseSchedule, diffusion_loss
from .unet import UNet, UNetConfig

CHECKPOINT_FORMAT = "ddpm_lib.checkpoint"


@dataclass
class TrainConfig:
    lr: float = 2e-4                 # Adam learning rate (paper, CIFAR-10)
    warmup_steps: int = 5000         # linear learning-rate warm-up from 0 over this many steps (0: none)
    batch_size: int = 128            # global batch, split evenly over DDP ranks
    grad_clip: float = 1.0           # clip the global gradient norm to this (0: no clipping)
    ema_decay: float = 0.9999        # EMA of the weights, used for sampling and evaluation
    steps: int = 800_000             # total optimizer steps to reach (also when resuming)
    flip: bool = True                # random horizontal flips of the training images
    timesteps: int = 1000            # T of the linear beta schedule built by the CLI
    beta_min: float = 1e-4           # beta_1 of the linear schedule
    beta_max: float = 0.02           # beta_T of the linear schedule
    seed: int = 0                    # seeds data order, noise (t, eps), dropout and sample grids
    amp: bool = True                 # CUDA only: bf16 autocast (fp16 + GradScaler where bf16 is missing)
    channels_last: bool = True       # CUDA only: NHWC memory format for the convolutions
    compile: bool = False            # torch.compile the model
    log_every: int = 100             # read losses back to the host, log them and update the bar
    sample_every: int = 10_000       # save a PNG grid of EMA samples every this many steps (0: never)
    checkpoint_every: int = 10_000   # save out_dir/checkpoint.pt every this many steps (0: only at the end)
    sample_n: int = 64               # images in each sample grid
    sample_steps: int = 50           # DDIM steps for the sample grids
    out_dir: str | None = "runs/ddpm"  # where the loss log, grids and checkpoint go (None: write nothing)
    progress: bool = True            # show a tqdm progress bar

    def __post_init__(self):
        positive = ("lr", "batch_size", "steps", "timesteps", "log_every", "sample_n", "sample_steps")
        non_negative = ("warmup_steps", "grad_clip", "sample_every", "checkpoint_every")
        for name in positive + non_negative:
            value = getattr(self, name)
            kind = float if name in ("lr", "grad_clip") else int
            if isinstance(value, bool) or not isinstance(value, (kind, int)) or not math.isfinite(value):
                raise ValueError(f"TrainConfig.{name} must be {'a number' if kind is float else 'an int'}, got {value!r}")
            if value < 0 or (value == 0 and name in positive):
                raise ValueError(f"TrainConfig.{name} must be {'> 0' if name in positive else '>= 0'}, got {value!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not 0.0 < self.beta_min < self.beta_max < 1.0:
            raise ValueError(f"TrainConfig.beta_min/beta_max must satisfy 0 < beta_min < beta_max < 1, "
                             f"got {self.beta_min!r}, {self.beta_max!r}")


def _mix(seed: int, step: int, stream: int) -> int:
    """A 63-bit generator seed from (seed, step, stream): independent streams per step."""
    return (seed * 6364136223846793005 + step * 1442695040888963407 + stream * 2654435761 + 1) % 2**63


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Trains an eps-prediction UNet with Algorithm 1; `fit` runs until `config.steps`."""

    def __init__(self, model, schedule: NoiseSchedule | None = None, config: TrainConfig | None = None, device=None):
        self.config = config = config if config is not None else TrainConfig()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.rank, self.world_size = _rank_and_world()
        if config.batch_size % self.world_size:
            raise ValueError(f"TrainConfig.batch_size={config.batch_size} must divide evenly over "
                             f"{self.world_size} ranks")
        cuda = self.device.type == "cuda"
        self.model = model.to(self.device)
        if cuda and config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if schedule is None:
            schedule = NoiseSchedule.linear(config.timesteps, config.beta_min, config.beta_max)
        self.schedule = schedule.to(self.device)
        self.step = 0
        self.history: list[tuple[int, float]] = []  # (step, loss) read back every log_every steps

        self.amp_dtype = None
        if cuda and config.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, fused=cuda or None)

        # The net the loss calls: DDP all-reduces gradients; rank 0's weights are broadcast here.
        self.net = self.model
        if self.world_size > 1:
            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)  # fp32 like the model
        self._params = [p for p in self.model.parameters()]
        self._ema_params = [p for p in self.ema.parameters()]
        if config.compile:
            self.net = torch.compile(self.net)

        self._noise_gen = torch.Generator(self.device)
        self._rng_devices = [self.device] if cuda else []
        with torch.random.fork_rng(devices=self._rng_devices):  # dropout RNG, separate per rank
            torch.manual_seed(_mix(config.seed, 0, 1 + self.rank))
            self._rng = self._global_rng()
        self._in_fit = False

    # -- one step ---------------------------------------------------------------------------------
    def train_step(self, x0: torch.Tensor) -> torch.Tensor:
        """One update on this rank's share x0 (b,3,H,W) in [-1,1]; returns the loss on the device (no sync)."""
        cfg, b = self.config, x0.shape[0]
        # t and eps for the whole global batch from (seed, step); this rank takes the rows of its images,
        # so K ranks see exactly the noise one process would (and every rank different noise).
        self._noise_gen.manual_seed(_mix(cfg.seed, self.step, 0))
        n = b * self.world_size
        t = torch.randint(0, self.schedule.steps, (n,), generator=self._noise_gen, device=self.device)
        eps = torch.randn((n, *x0.shape[1:]), generator=self._noise_gen, device=self.device)
        share = slice(self.rank * b, (self.rank + 1) * b)
        t, eps = t[share], eps[share]
        if self.device.type == "cuda" and cfg.channels_last:
            x0, eps = (x.contiguous(memory_format=torch.channels_last) for x in (x0, eps))

        lr = cfg.lr * min(1.0, (self.step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            loss = diffusion_loss(self.net, self.schedule, x0, t=t, noise=eps)  # Algorithm 1, lines 2-5
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self._params, cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        torch._foreach_lerp_(self._ema_params, self._params, 1.0 - cfg.ema_decay)  # ema += (1-decay)(w-ema)
        self.step += 1
        return loss.detach()

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, data, steps: int | None = None) -> "Trainer":
        """Train on uint8 images (N,3,H,W) or a DeviceBatches until `steps` (default config.steps) is reached."""
        cfg = self.config
        steps = cfg.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int (the total to reach), got {steps!r}")
        batches = data if isinstance(data, DeviceBatches) else DeviceBatches(
            data, cfg.batch_size, device=self.device, flip=cfg.flip, seed=cfg.seed,
            rank=self.rank, world_size=self.world_size)
        out = Path(cfg.out_dir) if cfg.out_dir is not None else None
        log = self._open_log(out) if out is not None and self.rank == 0 else None
        bar = tqdm(total=steps, initial=self.step, unit="step", disable=not cfg.progress or self.rank != 0)
        pending, clock, since = [], time.perf_counter(), self.step
        try:
            with torch.random.fork_rng(devices=self._rng_devices):
                self._set_global_rng(self._rng)
                self._in_fit = True
                try:
                    while self.step < steps:
                        pending.append(self.train_step(batches.batch(self.step)))
                        bar.update(1)
                        done = self.step == steps
                        save = out is not None and (done or (cfg.checkpoint_every
                                                             and self.step % cfg.checkpoint_every == 0))
                        if done or save or self.step % cfg.log_every == 0:
                            rate = (self.step - since) * cfg.batch_size / (time.perf_counter() - clock)
                            mean = self._read_losses(pending, log)
                            bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{rate:.3g}")
                            pending, clock, since = [], time.perf_counter(), self.step
                        if (out is not None and self.rank == 0 and cfg.sample_every
                                and self.step % cfg.sample_every == 0):
                            self.save_samples(out / "samples" / f"step_{self.step:07d}.png")
                        if save:
                            self.save(out / "checkpoint.pt")
                finally:
                    self._in_fit = False
                    self._rng = self._global_rng()
        finally:
            bar.close()
            if log is not None:
                log.close()
        return self

    def _read_losses(self, pending: list[torch.Tensor], log) -> float:
        """Bring the losses since the last read to the host (one sync); stop on a non-finite one."""
        losses = torch.stack(pending).float()
        if self.world_size > 1:  # every rank sees the global mean, so every rank stops together
            dist.all_reduce(losses)
            losses /= self.world_size
        first = self.step - len(pending) + 1
        values = losses.tolist()
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss ({value}) at step {first + i}; training stopped "
                                         f"and the last good checkpoint was kept")
        self.history.extend(zip(range(first, self.step + 1), values))
        if log is not None:
            log.writelines(json.dumps({"step": s, "loss": v}) + "\n" for s, v in zip(range(first, self.step + 1), values))
            log.flush()
        return sum(values) / len(values)

    def _open_log(self, out: Path):
        """Append to out/loss.jsonl, dropping lines past self.step (written after the checkpoint we resume)."""
        out.mkdir(parents=True, exist_ok=True)
        path = out / "loss.jsonl"
        if path.exists():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            path.write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= self.step))
        return path.open("a")

    @torch.no_grad()
    def save_samples(self, path, n: int | None = None) -> torch.Tensor:
        """DDIM samples of the EMA model (fixed x_T per seed) as a PNG grid; returns them in [-1, 1]."""
        cfg, size = self.config, self.model.config.image_size
        n = n or cfg.sample_n
        gen = torch.Generator(self.device).manual_seed(cfg.seed)
        x0 = ddim_sample(self.ema, self.schedule, (n, 3, size, size), steps=min(cfg.sample_steps, self.schedule.steps),
                         generator=gen, device=self.device)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_image((x0.float().cpu() + 1) / 2, path, nrow=math.ceil(math.sqrt(n)))
        return x0

    # -- RNG --------------------------------------------------------------------------------------
    def _global_rng(self) -> dict:
        cuda = torch.cuda.get_rng_state(self.device) if self._rng_devices else None
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def _set_global_rng(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if self._rng_devices and state["cuda"] is not None:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, path=None) -> Path:
        """Write one checkpoint file atomically (temp file + os.replace). Under DDP call on every rank."""
        path = Path(path) if path is not None else Path(self.config.out_dir) / "checkpoint.pt"
        if not torch.stack([torch.isfinite(p).all() for p in self._params]).all():  # one sync
            raise FloatingPointError(f"non-finite weights at step {self.step}; not saving a bad state")
        rng = self._global_rng() if self._in_fit else self._rng
        rngs = [rng]
        if self.world_size > 1:  # each rank's dropout RNG, so a resumed DDP run continues every stream
            rngs = [None] * self.world_size
            dist.all_gather_object(rngs, rng)
        if self.rank == 0:
            self._write(path, rngs)
        if self.world_size > 1:  # the file is in place before any rank goes on (and may load it)
            dist.barrier()
        return path

    def _write(self, path: Path, rngs: list) -> None:
        state = {
            "format": CHECKPOINT_FORMAT, "version": 1, "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "train_config": asdict(self.config), "unet_config": asdict(self.model.config),
            "schedule": self.schedule.state_dict(),  # float64 betas
            "rng": [{k: (v.cpu() if v is not None else None) for k, v in r.items()} for r in rngs],
            "world_size": self.world_size,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path, device=None, **overrides) -> "Trainer":
        """Rebuild a Trainer from a checkpoint; `overrides` replace TrainConfig fields (e.g. steps, out_dir)."""
        ckpt = read_checkpoint(path)
        config = replace(_config(TrainConfig, ckpt["train_config"], path), **overrides)
        model = UNet(_config(UNetConfig, ckpt["unet_config"], path))
        schedule = NoiseSchedule.from_state_dict(ckpt["schedule"])
        trainer = cls(model, schedule, config, device=device if device is not None else default_device())
        _load_weights(trainer.model, ckpt["model"], path)
        _load_weights(trainer.ema, ckpt["ema"], path)
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        if trainer.scaler is not None and ckpt["scaler"] is not None:
            trainer.scaler.load_state_dict(ckpt["scaler"])
        trainer.step = ckpt["step"]
        if len(ckpt["rng"]) == trainer.world_size:  # same layout: continue each rank's dropout stream
            rng = ckpt["rng"][trainer.rank]
            trainer._rng = {"cpu": rng["cpu"], "cuda": rng["cuda"] if trainer._rng_devices else None}
        return trainer


def read_checkpoint(path) -> dict:
    """torch.load(weights_only=True) a ddpm_lib checkpoint; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # refused pickle globals, truncated zip, random bytes, ...
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(
            ("Weights only load failed", "Please file an issue", "Check the documentation"))]
        detail = lines[0] if lines else type(e).__name__
        if "GLOBAL" in detail:
            raise ValueError(f"{path} is not a ddpm_lib checkpoint: it holds pickled objects that "
                             f"torch.load(weights_only=True) refuses to run ({detail})") from None
        raise ValueError(f"{path} is not a readable checkpoint ({detail})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a ddpm_lib checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    return ckpt


def _config(cls, values: dict, path):
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in values.items() if k in names})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: stored {cls.__name__} is invalid ({e})") from None


def _load_weights(module: torch.nn.Module, state: dict, path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the stored UNetConfig "
                         f"({str(e).strip().splitlines()[0]})") from None


def load_model(path, ema: bool = True, device=None) -> tuple[UNet, NoiseSchedule]:
    """The (EMA by default) UNet of a checkpoint in eval mode, and its noise schedule, on `device`."""
    ckpt = read_checkpoint(path)
    device = torch.device(device) if device is not None else default_device()
    model = UNet(_config(UNetConfig, ckpt["unet_config"], path))
    _load_weights(model, ckpt["ema" if ema else "model"], path)
    return model.to(device).eval(), NoiseSchedule.from_state_dict(ckpt["schedule"]).to(device)
