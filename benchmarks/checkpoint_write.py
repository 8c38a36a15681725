"""How long one checkpoint of the paper's CIFAR-10 network takes to write, and how big it is.

Notebook 05's training cell writes a checkpoint with `Trainer.save` (model, EMA, Adam's two moments, step,
configs: ddpm_lib.checkpoint.write_checkpoint, temp file + fsync + os.replace). This builds a `ddpm-cifar10`
Trainer, takes one optimizer step on a single image so that Adam's state exists, then saves it `--repeats`
times into `--dir` (local disk by default) and reports the file size and the seconds per write
(min / median / max), into docs/checkpoint_write.md with the machine named.

    python benchmarks/checkpoint_write.py                       # local disk (a temp folder), 5 writes
    python benchmarks/checkpoint_write.py --dir /content/drive/MyDrive/tmp --repeats 3 --out -   # e.g. Drive
"""
import argparse
import datetime
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import unet_from_preset
from machine import machine

ROOT = Path(__file__).resolve().parents[1]


def trainer_with_adam_state(preset: str) -> Trainer:
    """A CPU Trainer of `preset` after one step on one 32x32 image: Adam's exp_avg and exp_avg_sq exist."""
    torch.manual_seed(0)
    trainer = Trainer(unet_from_preset(preset), None, TrainConfig(out_dir=None, progress=False), device="cpu")
    trainer.train_step(torch.zeros(1, 3, 32, 32))
    return trainer


def time_writes(trainer: Trainer, folder: Path, repeats: int) -> tuple[int, list[float]]:
    """(bytes of the checkpoint file, seconds of each of `repeats` Trainer.save calls onto one path)."""
    path = folder / "checkpoint.pt"
    seconds = []
    for _ in range(repeats):  # each write replaces the last one, as in the training cell
        start = time.perf_counter()
        trainer.save(path)
        seconds.append(time.perf_counter() - start)
    return path.stat().st_size, seconds


def report(preset: str, n_params: int, size: int, seconds: list[float], where: str, host: str) -> str:
    mb = size / 1e6
    return "\n".join([
        "# Checkpoint write time",
        "",
        f"Machine: {host}; written to {where}. `python benchmarks/checkpoint_write.py` "
        f"({datetime.date.today().isoformat()}).",
        "",
        "| preset | parameters | file (model, EMA, Adam state) | writes | seconds min / median / max | MB/s (median) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {preset} | {n_params:,} | {mb:,.0f} MB | {len(seconds)} | {min(seconds):.2f} / "
        f"{statistics.median(seconds):.2f} / {max(seconds):.2f} | {mb / statistics.median(seconds):,.0f} |",
        "",
        "One write is `Trainer.save`: torch.save to a temp file, fsync, os.replace onto checkpoint.pt. "
        "Four float32 copies of the weights (model, EMA, Adam's exp_avg and exp_avg_sq) make the size: "
        f"4 x 4 bytes x {n_params:,} = {16 * n_params / 1e6:,.0f} MB.",
        "",
    ])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ddpm-cifar10", help="UNet preset (default: the paper's network)")
    parser.add_argument("--repeats", type=int, default=5, help="checkpoint writes to time (default 5)")
    parser.add_argument("--dir", type=Path, default=None, help="folder to write into (default: a temp folder)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "checkpoint_write.md"),
                        help="markdown file for the result ('-': print only)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive int, got {args.repeats}")
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir: {args.dir} is not a folder")
    trainer = trainer_with_adam_state(args.preset)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ckpt-bench-") as folder:
        size, seconds = time_writes(trainer, Path(folder), args.repeats)
        where = f"{Path(folder).parent} (a temp folder, deleted afterwards)"
    text = report(args.preset, n_params, size, seconds, where, machine(torch.device("cpu")))
    print(text)
    if args.out != "-":
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
