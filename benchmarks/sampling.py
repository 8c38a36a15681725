"""Sampling throughput: images per second of each sampler and step count, written to docs/benchmarks.md.

    python benchmarks/sampling.py                                    # ddpm-cifar10, batch 256, default device
    python benchmarks/sampling.py --device cuda --amp                # bf16 autocast on CUDA
    python benchmarks/sampling.py --preset tiny --batch-size 4 --runs ddim:10,dpm-solver:10 --repeats 2

Runs are interleaved (round r times every configuration once) and the median time is reported, so a
machine that speeds up or slows down over the benchmark affects all samplers alike. Weights are random:
the cost of a model evaluation does not depend on them. Each result replaces the table of the same
preset / batch / device / precision under "## Sampling"; the rest of the file is kept.
"""
import argparse
import re
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from machine import machine

from ddpm_lib.utils import default_device
from ddpm_lib.objective import Denoiser
from ddpm_lib.samplers import SAMPLERS
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.unet import PRESETS, unet_from_preset

DEFAULT_RUNS = "ddpm:1000,ddim:50,ddim:100,dpm-solver:10,dpm-solver:20"
SECTION = "## Sampling"
INTRO = """{section}

Images per second of `ddpm_lib.samplers` (one call per batch, median over interleaved repeats; random weights),
written by `benchmarks/sampling.py`. "Model evals" is the number of UNet calls per image; "50k images" projects
the time to draw the 50,000 samples of a paper-comparable FID at that rate.

Goal on one H100: 50,000 images of the paper's network (`ddpm-cifar10`) at 20 steps in at most 60 s
(>= 834 images/s). Only the tables below are measurements; a goal without a table is unmeasured.
"""


def parse_runs(text, T):
    """'ddpm:1000,ddim:50' -> [("ddpm", 1000), ("ddim", 50)]; ddpm always runs all T steps."""
    runs = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise SystemExit(f"error: --runs item {item!r}: expected {'|'.join(SAMPLERS)}:STEPS")
        if name == "ddpm" and int(steps) != T:
            raise SystemExit(f"error: --runs {item!r}: ddpm runs all T={T} steps (set --T {steps} or use ddpm:{T})")
        runs.append((name, int(steps)))
    return runs


def sample_once(denoiser, name, steps, shape, device, amp):
    generator = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
    entry = SAMPLERS[name]
    kwargs = {} if entry.default_sample_steps is None else {"sample_steps": steps}  # ddpm: all T
    with autocast:
        return entry.fn(denoiser, shape, generator=generator, device=device, **kwargs)


def benchmark(denoiser, runs, batch_size, device, amp, repeats):
    """{(name, steps): [seconds per batch, one per repeat]}, interleaved over runs."""
    size = denoiser.net.config.image_size
    shape = (batch_size, 3, size, size)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sample_once(denoiser, "ddim", 2, shape, device, amp)  # warm-up: kernels, allocator, autotuning
    sync()
    times = {run: [] for run in runs}
    for r in range(repeats):
        for name, steps in runs:
            start = time.perf_counter()
            sample_once(denoiser, name, steps, shape, device, amp)
            sync()
            times[(name, steps)].append(time.perf_counter() - start)
            print(f"repeat {r + 1}/{repeats}  {name:10s} {steps:5d} steps  {times[(name, steps)][-1]:8.2f} s",
                  file=sys.stderr)
    return times


def table(times, args, device, n_params):
    precision = "bf16 autocast" if args.amp else "fp32"
    lines = [f"### {args.preset}, batch {args.batch_size}, {precision}, {device.type}",
             "",
             f"Machine: {machine(device)}. {n_params / 1e6:.2f}M parameters, T = {args.T}, "
             f"{args.repeats} interleaved repeats, {time.strftime('%Y-%m-%d', time.gmtime())}.",
             "",
             "| sampler | model evals | s / batch (median) | images / s | ms / model eval | 50k images |",
             "|---|---:|---:|---:|---:|---:|"]
    for (name, steps), seconds in times.items():
        t = statistics.median(seconds)
        rate = args.batch_size / t
        lines.append(f"| {name} | {steps} | {t:.3f} | {rate:.2f} | {1000 * t / steps:.1f} | "
                     f"{_duration(50_000 / rate)} |")
    return "\n".join(lines) + "\n"


def _duration(seconds):
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def write_section(path, new_table):
    """Put new_table under "## Sampling" in path, replacing the table with the same ### title only."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    match = re.search(rf"^{SECTION}\n.*?(?=^## |\Z)", text, flags=re.M | re.S)
    section = match.group(0) if match else ""
    tables = re.findall(r"^### .*?(?=^### |\Z)", section, flags=re.M | re.S)
    title = new_table.splitlines()[0]
    tables = [t.rstrip() + "\n" for t in tables if t.splitlines()[0] != title] + [new_table]
    body = INTRO.format(section=SECTION) + "\n" + "\n".join(tables)
    if match:
        text = text[:match.start()] + body + ("\n" if text[match.end():] else "") + text[match.end():]
    else:
        text = text.rstrip() + "\n\n" + body
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ddpm-cifar10", choices=sorted(PRESETS))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"sampler:steps list (default {DEFAULT_RUNS})")
    p.add_argument("--T", type=int, default=1000, help="steps of the linear beta schedule (ddpm runs all of them)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="default: CUDA, then MPS, then CPU")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = p.parse_args(argv)
    device = torch.device(args.device) if args.device else default_device()
    if args.amp and device.type != "cuda":
        raise SystemExit("error: --amp needs a CUDA device")
    runs = parse_runs(args.runs, args.T)
    model = unet_from_preset(args.preset).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)  # attribute access (model.config) falls through to the original
        model.config = model._orig_mod.config
    schedule = NoiseSchedule.linear(args.T).to(device)
    denoiser = Denoiser(model, schedule)  # random weights read as eps, the paper's
    times = benchmark(denoiser, runs, args.batch_size, device, args.amp, args.repeats)
    result = table(times, args, device, n_params)
    print(result)
    write_section(args.out, result)
    print(f"wrote the table into {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
