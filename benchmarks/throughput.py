"""Training throughput of the paper's CIFAR-10 network: ddpm_lib vs diffusers vs denoising-diffusion-pytorch.

Each contender runs its usual full training step (forward, backward, gradient clipping, optimizer, EMA) on
the same batch of 32x32 images; contenders are interleaved in every repeat so machine load hits all alike.
Prints and writes a markdown table (images/s, forward GFLOPs per image, utilisation of the measured peak).
benchmarks/gpu_sections.py and gpu_report.py import the contenders, the timing and the table helpers from here.

    python benchmarks/throughput.py --device cuda --batch-size 128 --repeats 5
    python benchmarks/throughput.py --device cpu --batch-size 8 --repeats 3 --train-steps 2
"""
import argparse
import datetime
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from machine import machine

from ddpm_lib.utils import default_device
from ddpm_lib.interop import diffusers_config
from ddpm_lib.recipes import FAST
from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import PRESETS, unet_from_preset

# google/ddpm-cifar10-32's UNet2DModel: the paper's network in diffusers (35,746,307 parameters).
DIFFUSERS_CONFIG = diffusers_config(PRESETS["ddpm-cifar10"])
# denoising-diffusion-pytorch's default Unet: 35,711,491 parameters.
LUCIDRAINS_CONFIG = dict(dim=64, dim_mults=(1, 2, 4, 8), dropout=0.1)
# toy=True: small networks of the same families, for CPU dry runs (benchmarks/gpu_check.py --dry-run).
TOY_PRESET = "tiny"
DIFFUSERS_TOY = dict(DIFFUSERS_CONFIG, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                     down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
LUCIDRAINS_TOY = dict(dim=16, dim_mults=(1, 2), dropout=0.0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device, dtype=torch.bfloat16):
    """Autocast in `dtype` on CUDA; a no-op elsewhere (CPU runs are fp32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda")


def ddpm_lib_step(device, compile, toy=False, precision="auto"):
    """ddpm_lib's Trainer.train_step: Algorithm 1, Adam (fused on CUDA), clip, foreach EMA.

    precision: TrainConfig.precision (auto: bf16 on Ampere+). Returns the model and the bound method
    trainer.train_step (its __self__ is the Trainer).
    """
    torch.manual_seed(0)
    config = TrainConfig(out_dir=None, progress=False, compile=compile, precision=precision)
    trainer = Trainer(unet_from_preset(TOY_PRESET if toy else "ddpm-cifar10"), None, config, device=device)
    return trainer.model, trainer.train_step


def fast_recipe_step(device, compile, toy=False):
    """ddpm_lib's Trainer.train_step with the `fast` recipe (ddpm_lib.recipes.FAST): its network, objective and
    optimiser settings (toy: TOY_PRESET instead of its network). Returns the model and the bound train_step."""
    torch.manual_seed(0)
    config = replace(FAST.train, out_dir=None, progress=False, compile=compile)
    model = unet_from_preset(TOY_PRESET if toy else FAST.preset, image_size=FAST.image_size)
    trainer = Trainer(model, None, config, FAST.objective, device=device)
    return trainer.model, trainer.train_step


def diffusers_step(device, compile, toy=False, dtype=torch.bfloat16):
    """diffusers' train_unconditional example: DDPMScheduler.add_noise, MSE, AdamW, clip, EMAModel.

    dtype: the autocast dtype on CUDA; float16 adds a GradScaler, as its example does with --mixed_precision fp16.
    """
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    model = UNet2DModel(**(DIFFUSERS_TOY if toy else DIFFUSERS_CONFIG)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    ema = EMAModel(model.parameters(), decay=0.9999)
    ema.to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and dtype == torch.float16)

    def step(x0):
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=device)
        with autocast(device, dtype):
            loss = F.mse_loss(net(scheduler.add_noise(x0, noise, t), t).sample.float(), noise)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        return loss.detach()

    return model, step


def lucidrains_step(device, compile, toy=False):
    """denoising-diffusion-pytorch's Trainer step: GaussianDiffusion loss, Adam, clip, ema_pytorch EMA; bf16 on CUDA."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from ema_pytorch import EMA

    torch.manual_seed(0)
    model = Unet(**(LUCIDRAINS_TOY if toy else LUCIDRAINS_CONFIG))
    diffusion = GaussianDiffusion(model, image_size=32, timesteps=1000).to(device)
    net = torch.compile(diffusion) if compile else diffusion
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=2e-4, betas=(0.9, 0.99))
    ema = EMA(diffusion, beta=0.995, update_every=10).to(device)

    def step(x0):
        with autocast(device):
            loss = net((x0 + 1) / 2)  # it takes images in [0, 1] and normalises them itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update()
        return loss.detach()

    return model, step


CONTENDERS = {"ddpm_lib": ddpm_lib_step, "diffusers UNet2DModel": diffusers_step,
              "denoising-diffusion-pytorch Unet": lucidrains_step}


def forward_flops(model, device) -> int:
    """FLOPs of one forward pass for one 32x32 image (a multiply-add counts 2)."""
    x, t = torch.randn(1, 3, 32, 32, device=device), torch.zeros(1, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t)
    return counter.get_total_flops()


def images_per_second(step, x0, steps, device) -> float:
    """Training images/s of `steps` calls of step(x0), timed between device synchronisations."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x0)
    sync(device)
    return steps * x0.shape[0] / (time.perf_counter() - start)


def measured_peak(device, n=None, repeats=5) -> float:
    """FLOP/s of a big square matmul in the training precision (bf16 on CUDA, fp32 on CPU): the best of repeats.

    n: the matrix size (default 4096 on CUDA, 2048 elsewhere).
    """
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n or (4096 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * n ** 3 / best


def utilisation(images_per_s, flops_per_image, peak) -> float:
    """Share of the measured peak a training step uses: forward + backward count as 3 forward passes."""
    return images_per_s * 3 * flops_per_image / peak


def rate_text(images_per_s) -> str:
    """Images/s as the tables show them: thousands separated from 100 up, 3 significant digits below."""
    return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.3g}"


# What differs between the contenders' steps (each runs its own library's usual full step).
STEP_DIFFERENCES = ("ddpm_lib: Adam, clip 1, EMA every step; diffusers: AdamW (weight decay 1e-2), clip 1, EMAModel "
                    "every step; denoising-diffusion-pytorch: Adam (betas 0.9, 0.99), clip 1, EMA every 10th step")


def ratio_note() -> str:
    return ("Each round times every contender once, so a round's ratio of two rates shares that round's machine "
            "load; 'x ddpm_lib' is the median of the rounds' ratios, with their range. A range that includes "
            f"1.00x is within the noise. The steps are not identical: {STEP_DIFFERENCES}.")


def median_range(values, fmt) -> str:
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def throughput_table(rates: dict, params: dict, flops: dict, peak: float) -> list:
    """Markdown rows: images/s (median and range over rounds), utilisation, and the per-round ratio to ddpm_lib."""
    base = rates["ddpm_lib"]
    lines = ["| implementation | parameters | forward GFLOPs / image | images / s, median (range) | "
             "utilisation of peak | x ddpm_lib, median (range) |", "|---|---:|---:|---:|---:|---:|"]
    for name, rate in rates.items():
        ratios = [r / b for r, b in zip(rate, base)]
        lines.append(f"| {name} | {params[name]:,} | {flops[name] / 1e9:.2f} | {median_range(rate, rate_text)} | "
                     f"{utilisation(statistics.median(rate), flops[name], peak):.1%} | "
                     f"{median_range(ratios, lambda v: f'{v:.2f}x')} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the best available)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (median reported)")
    parser.add_argument("--train-steps", type=int, default=10, help="training steps timed per contender per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    parser.add_argument("--compile", action="store_true", help="torch.compile every contender's model")
    parser.add_argument("--out", default="docs/benchmarks.md", help="markdown file the table is appended to")
    args = parser.parse_args()
    device = torch.device(args.device) if args.device else default_device()

    peak = measured_peak(device)
    x0 = torch.rand(args.batch_size, 3, 32, 32, device=device) * 2 - 1
    steps, rates = {}, {name: [] for name in CONTENDERS}
    flops, params = {}, {}
    for name, build in CONTENDERS.items():
        model, step = build(device, args.compile)
        params[name] = sum(p.numel() for p in model.parameters())
        flops[name] = forward_flops(model, device)
        for _ in range(args.warmup):
            step(x0)
        steps[name] = step
    for _ in range(args.repeats):
        for name, step in steps.items():
            rates[name].append(images_per_second(step, x0, args.train_steps, device))

    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    lines = [f"### Training throughput: {machine(device)}", "",
             f"{datetime.date.today()}, at the end of the run; batch {args.batch_size}, {precision}, "
             f"compile={args.compile}, {args.repeats} interleaved rounds of {args.train_steps} steps; measured matmul "
             f"peak {peak / 1e12:.2f} TFLOP/s. Utilisation = images/s x 3 x forward FLOPs / peak.", "",
             ratio_note(), "",
             *throughput_table(rates, params, flops, peak)]
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = not out.exists() or out.stat().st_size == 0
    with out.open("a") as f:
        f.write(table if fresh else "\n" + table)


if __name__ == "__main__":
    main()
