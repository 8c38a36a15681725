"""Peak memory and time of one training step with and without activation checkpointing (a benchmark, not a test).

    python benchmarks/activation_memory.py                       # the paper's network, batch 16, on the CPU
    python benchmarks/activation_memory.py --device cuda --batch-size 128

Each setting runs in its own process (a fresh allocator): the Trainer is built, one step warms up, then
--train-steps steps are timed. Memory: on CUDA torch.cuda.max_memory_allocated over the timed steps; on the CPU the
growth of the process's peak resident set (ru_maxrss) over what it held before the first step, which is what
the step's activations and gradients add. Writes docs/activation_memory.md with the machine named.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from machine import machine

ROOT = Path(__file__).resolve().parents[1]


def one_setting(preset: str, batch: int, steps: int, device: str, on: bool) -> dict:
    from ddpm_lib.train import Trainer
    from ddpm_lib.train_config import TrainConfig
    from ddpm_lib.unet import unet_from_preset

    torch.manual_seed(0)
    dev = torch.device(device)
    trainer = Trainer(unet_from_preset(preset), None, TrainConfig(checkpoint_activations=on, out_dir=None,
                                                                  progress=False), device=dev)
    x0 = torch.rand(batch, 3, 32, 32, device=dev) * 2 - 1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    trainer.train_step(x0)  # warm-up: allocator pools, Adam's state
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step(x0).item()
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"checkpointing": on, "peak_mib": peak, "step_s": statistics.median(times), "times": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="ddpm-cifar10")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=3, help="timed steps per setting (after one warm-up step)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "activation_memory.md")
    parser.add_argument("--one", choices=("on", "off"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_setting(args.preset, args.batch_size, args.train_steps, args.device, args.one == "on")))
        return
    rows = []
    for on in ("off", "on"):
        out = subprocess.run([sys.executable, __file__, "--one", on, "--preset", args.preset, "--batch-size",
                              str(args.batch_size), "--train-steps", str(args.train_steps), "--device", args.device],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    off, on = rows
    memory = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "growth of the peak RSS"
    lines = [f"# Activation checkpointing: one training step of `{args.preset}`, batch {args.batch_size}", "",
             f"Measured on {machine(args.device)}; `python benchmarks/activation_memory.py --preset {args.preset} "
             f"--batch-size {args.batch_size} --train-steps {args.train_steps} --device {args.device}`. "
             f"Memory: {memory} over the step; time: median of {args.train_steps} steps (each listed), fp32 on the "
             f"CPU.", "",
             "| checkpoint_activations | peak memory (MiB) | step (s) | steps (s) |", "|---|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['checkpointing']} | {row['peak_mib']:,.0f} | {row['step_s']:.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in row['times'])} |")
    lines += ["", f"With checkpointing: {on['peak_mib'] / off['peak_mib']:.2f}x the memory, "
                  f"{on['step_s'] / off['step_s']:.2f}x the time per step."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
