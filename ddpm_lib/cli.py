"""python -m ddpm_lib train | sample | fid   (torchrun --nproc_per_node=K -m ddpm_lib train ... for DDP)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

SAMPLERS = ("ddpm", "ddim", "dpm-solver")
DEFAULT_STEPS = {"ddim": 100, "dpm-solver": 20}  # ddpm always runs all T steps


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other CLI error."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu, cuda, cuda:1 or mps, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} requested but CUDA is not available here")
    return device


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m ddpm_lib", description="Train, sample and evaluate DDPMs (Ho et al. 2020).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,fid}")

    p = sub.add_parser("train", help="train a UNet (Algorithm 1); DDP under torchrun")
    p.add_argument("--preset", required=True, help="UNet preset: ddpm-cifar10, seed or tiny")
    p.add_argument("--data", required=True, help="cifar10, shapes, or a folder of images")
    p.add_argument("--data-root", default="data", help="CIFAR-10 root (downloaded there when missing)")
    p.add_argument("--steps", type=_positive_int, required=True, help="total optimizer steps to reach (also on --resume)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="global batch size, split over DDP ranks (default 128)")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, loss.jsonl, samples/")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")
    p.add_argument("--seed", type=int, default=0, help="seed of init, data order, noise and dropout")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, mps (default: the best available)")
    p.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate (default 2e-4)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 5000)")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay (default 0.9999; short runs want less, e.g. 0.999)")
    p.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    p.add_argument("--log-every", type=_positive_int, default=None, help="steps between loss read-backs (default 100)")
    p.add_argument("--sample-every", type=int, default=None, help="steps between sample grids, 0 = never (default 10000)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 10000)")
    p.add_argument("--n-images", type=_positive_int, default=None, help="shapes: how many to make; else keep the first N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_train)

    p = sub.add_parser("sample", help="sample a grid of images from a checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint file written by train")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument("--steps", type=_positive_int, default=None, help="sampler steps (ddpm: T; ddim 100; dpm-solver 20)")
    p.add_argument("--n", type=_positive_int, default=64, help="number of images")
    p.add_argument("--out", required=True, help="PNG file for the grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per sampler call")
    p.add_argument("--device", type=_device, default=None)
    p.set_defaults(run=_sample)

    p = sub.add_parser("fid", help="FID and KID of a checkpoint's EMA samples")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--n", type=_positive_int, default=50_000, help="samples to draw (paper: 50,000)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument("--steps", type=_positive_int, default=None, help="sampler steps (ddpm: T; ddim 100; dpm-solver 20)")
    p.add_argument("--ref", default="cifar10", help="cifar10 (training split) or a folder of images")
    p.add_argument("--data-root", default="data", help="CIFAR-10 root for --ref cifar10")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=_device, default=None)
    p.set_defaults(run=_fid)
    return parser


def _init_distributed(device: torch.device | None) -> torch.device:
    """Under torchrun (WORLD_SIZE > 1): join the process group, NCCL on CUDA, gloo otherwise."""
    import torch.distributed as dist

    from .device import default_device

    device = device if device is not None else default_device()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _train(args) -> None:
    import torch.distributed as dist

    from .data import load_dataset
    from .train import Trainer, TrainConfig
    from .unet import unet_from_preset

    device = _init_distributed(args.device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    try:
        out = Path(args.out)
        overrides = {"steps": args.steps, "out_dir": args.out, "progress": not args.no_progress, "compile": args.compile}
        for name in ("lr", "warmup_steps", "ema_decay", "log_every", "sample_every", "checkpoint_every"):
            if getattr(args, name) is not None:
                overrides[name] = getattr(args, name)
        checkpoint = out / "checkpoint.pt"
        if checkpoint.exists() and not args.resume:
            raise ValueError(f"{checkpoint} exists: pass --resume to continue it, or choose another --out")
        if args.resume and checkpoint.exists():
            trainer = Trainer.load(checkpoint, device=device, **overrides)
            if args.batch_size not in (None, trainer.config.batch_size):
                raise ValueError(f"--batch-size {args.batch_size} differs from the checkpoint's "
                                 f"{trainer.config.batch_size}; resuming keeps the data order of the original run")
            if rank == 0:
                print(f"resuming {checkpoint} at step {trainer.step} of {args.steps}", file=sys.stderr)
        else:
            torch.manual_seed(args.seed)  # weight init (DDP broadcasts rank 0's anyway)
            model = unet_from_preset(args.preset, **({} if args.dropout is None else {"dropout": args.dropout}))
            config = TrainConfig(seed=args.seed, **overrides, **({} if args.batch_size is None else
                                                                 {"batch_size": args.batch_size}))
            trainer = Trainer(model, None, config, device=device)
        if rank != 0:  # rank 0 downloads / decodes first, the others then read its files or cache
            dist.barrier()
        images = load_dataset(args.data, root=args.data_root, n=args.n_images, seed=trainer.config.seed,
                              size=trainer.model.config.image_size)
        if rank == 0 and world > 1:
            dist.barrier()
        trainer.fit(images)
        if rank == 0:
            print(f"step {trainer.step}: wrote {checkpoint}", file=sys.stderr)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _steps(args, T: int) -> int:
    """--steps, else the sampler's default (ddpm: all T)."""
    return args.steps if args.steps is not None else DEFAULT_STEPS.get(args.sampler, T)


def _sample(args) -> None:
    from torchvision.utils import save_image

    from .device import default_device
    from .metrics import generate_images
    from .train import load_model

    device = args.device if args.device is not None else default_device()
    model, schedule = load_model(args.ckpt, ema=not args.no_ema, device=device)
    images = generate_images(model, schedule, args.n, args.sampler, _steps(args, schedule.steps), args.batch_size,
                             device, args.seed, progress=True)  # uint8 (n, 3, H, W)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float() / 255, out, nrow=math.ceil(math.sqrt(args.n)))
    print(f"wrote {out}", file=sys.stderr)


def _fid(args) -> None:
    from .metrics import evaluate_checkpoint
    from .train import read_checkpoint

    ckpt = Path(args.ckpt)
    T = len(read_checkpoint(ckpt)["schedule"]["betas"])  # also: a clear error before any sampling
    steps = _steps(args, T)
    result = evaluate_checkpoint(ckpt, n=args.n, sampler=args.sampler, steps=steps, ref=args.ref,
                                 data_root=args.data_root, batch_size=args.batch_size, device=args.device,
                                 seed=args.seed)
    path = ckpt.with_name(f"{ckpt.stem}_fid_{args.sampler}{steps}_n{args.n}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"FID {result['fid']:.3f}  KID {result['kid_mean']:.5f} +- {result['kid_std']:.5f}  ({path})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, FloatingPointError) as e:  # FileNotFoundError is an OSError
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
