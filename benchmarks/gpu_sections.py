"""The measured sections of benchmarks/gpu_check.py; each runs in its own child process, in its own time box.

  train_throughput  training images/s of the paper's network (ddpm_lib eager and compiled, diffusers, lucidrains)
  fp16_gradscaler   the T4 path forced (TrainConfig.precision='fp16': GradScaler) against diffusers' fp16 step
  sampling          images/s of DPM-Solver++ in bf16 at a large batch; the time projected for 50,000
  cifar10_run       a short run of the `fast` recipe (Colab's) on CIFAR-10: loss curve, EMA sample grids (PNGs) and
                    its EMA weights in float16 with their card (ddpm_lib.shipped), for `make docs DOCS_MODEL=PATH`
(nbval, the fifth, is in gpu_nbval.py.) Each takes (args, sizes, device) and returns a dict with "checks"
(the rows of the summary table); save_partial keeps what a section has measured should its time box end it.
"""
import gc
import json
import math
import os
import statistics
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

import throughput as tp

from ddpm_lib.recipes import FAST

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"train_throughput": "training throughput", "fp16_gradscaler": "fp16 + GradScaler (T4 path)",
            "sampling": "sampling", "cifar10_run": "CIFAR-10 run", "nbval": "notebooks under nbval"}
FID_SAMPLES = 50_000
FINISH_S = 20  # the CIFAR-10 run stops training this long before its time box ends: the last grid, the loss curve
SESSION_S = 30 * 60  # one Colab session of training (notebook 05's MAX_MINUTES on a GPU)
# its own network: not one of the paper-network contenders
FAST_ROW = f"fast recipe ({FAST.preset}, {FAST.objective.prediction})"


@dataclass(frozen=True)
class Sizes:
    toy: bool                  # small networks of the same families instead of the paper's
    batch: int                 # training batch of every training section
    warmup: int                # untimed steps before timing (compilation happens here)
    timed_steps: int           # training steps per timing round
    rounds: int                # timing rounds; the median is reported
    fp16_steps: int            # steps of the forced fp16 + GradScaler path (warm-up included)
    sample_batch: int          # sampling batch
    solver_steps: int          # DPM-Solver++ steps for sampling and the sample grids
    train_seconds: float       # training time of the CIFAR-10 run (data loading and compilation not counted)
    chunk: int                 # the run trains in Trainer.fit calls of at most this many steps
    grid_steps: tuple          # EMA sample grids at these steps, and at the last step
    grid_n: int                # images per grid
    peak_n: int                # matrix size of the measured bf16/fp32 matmul peak
    compile_backend: str       # torch.compile backend ("eager" in a dry run: inductor takes minutes on a CPU)
    run_overhead_s: float      # the run's time besides training: start, data, compilation, grids
    boxes: tuple               # time boxes (s) of gpu_check.SEQUENTIAL; cifar10_run and nbval get the rest
    budget_s: float            # the whole check's default time limit (s)


GPU = Sizes(toy=False, batch=128, warmup=3, timed_steps=20, rounds=5, fp16_steps=100, sample_batch=2048,
            solver_steps=20, train_seconds=210, chunk=500, grid_steps=(1000, 3000, 10000), grid_n=64,
            peak_n=4096, compile_backend="inductor", run_overhead_s=80, boxes=(170, 60, 60), budget_s=480)
DRY = Sizes(toy=True, batch=4, warmup=1, timed_steps=2, rounds=2, fp16_steps=2, sample_batch=4, solver_steps=20,
            train_seconds=3, chunk=5, grid_steps=(2, 4), grid_n=4, peak_n=256, compile_backend="eager",
            run_overhead_s=20, boxes=(300, 300, 300), budget_s=900)  # boxes: a net for a loaded CPU


def check(what, value, unit, target, passed):
    """One row of the summary table: a measured value next to the issue's target."""
    return {"what": what, "value": value, "unit": unit, "target": target, "passed": passed}


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def reset_peak(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device):
    """torch.cuda.max_memory_allocated since reset_peak, in GiB (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def write_result(args, result):
    """The section's result as JSON, written whole (temp file + os.replace): a kill never leaves half a file."""
    tmp = Path(f"{args.result}.tmp")
    tmp.write_text(json.dumps(result, allow_nan=False))
    os.replace(tmp, args.result)


def save_partial(args, result):
    """Write what a section has so far: if its time box ends it, the parent keeps these numbers."""
    write_result(args, dict(result, status="partial"))




def time_contender(name, build, device, sizes, x0, **kwargs):
    """Build one contender, warm it up, time `rounds` rounds; its own peak memory (the others are freed)."""
    reset_peak(device)
    model, step = build(device, toy=sizes.toy, **kwargs)
    row = {"name": name, "params": sum(p.numel() for p in model.parameters()),
           "gflops_per_image": tp.forward_flops(model, device) / 1e9}
    for _ in range(sizes.warmup):
        step(x0)
    rates = [tp.images_per_second(step, x0, sizes.timed_steps, device) for _ in range(sizes.rounds)]
    row.update(images_per_s=statistics.median(rates), peak_memory_gib=peak_gib(device))
    return row


def throughput_summary(rows, peak, sizes, device):
    """The section's result from the contenders timed so far: utilisation of the peak, the two targets."""
    for row in rows:
        if "images_per_s" in row:
            row["utilisation"] = tp.utilisation(row["images_per_s"], row["gflops_per_image"] * 1e9, peak)
    rate = {row["name"]: row.get("images_per_s") for row in rows}
    ours = max((r for n, r in rate.items() if n.startswith("ddpm_lib") and r), default=None)
    diffusers = rate.get("diffusers UNet2DModel")
    ratio = ours / diffusers if ours and diffusers else None
    fast = rate.get(FAST_ROW)
    session = fast / sizes.batch * SESSION_S if fast else None  # the fast recipe's steps in one Colab session
    return {"batch": sizes.batch, "precision": "bf16 autocast, channels_last" if device.type == "cuda" else "fp32",
            "peak_tflops": peak / 1e12, "rows": rows,
            "checks": [check(f"ddpm_lib (best of eager / compiled), batch {sizes.batch}", ours, "img/s",
                             ">= 10,000 img/s (H100, bf16, batch 128)", ours is not None and ours >= 10_000),
                       check("ddpm_lib / diffusers UNet2DModel (eager)", ratio, "x", ">= 2x",
                             ratio is not None and ratio >= 2),
                       check(f"the fast recipe's steps in {SESSION_S // 60} minutes, this card (eager)", session,
                             "steps", f">= {FAST.train_steps:,} (its run: 20 epochs)",
                             session is not None and session >= FAST.train_steps)]}


def train_throughput(args, sizes, device):
    x0 = torch.rand(sizes.batch, 3, 32, 32, device=device) * 2 - 1
    peak = tp.measured_peak(device, n=sizes.peak_n)
    compiled = "ddpm_lib torch.compile" + (f" (backend={sizes.compile_backend})" if sizes.toy else "")
    contenders = [("ddpm_lib eager", tp.ddpm_lib_step, False), ("diffusers UNet2DModel", tp.diffusers_step, False),
                  ("denoising-diffusion-pytorch Unet", tp.lucidrains_step, False),
                  (FAST_ROW, tp.fast_recipe_step, False),
                  (compiled, tp.ddpm_lib_step, True)]  # last: compilation is the part most likely to run long
    rows = []
    for name, build, compile in contenders:
        try:
            rows.append(time_contender(name, build, device, sizes, x0, compile=compile))
        except Exception as e:  # one contender failing leaves the others' numbers
            traceback.print_exc()
            rows.append({"name": name, "error": one_line(e)})
        torch._dynamo.reset()
        save_partial(args, throughput_summary(rows, peak, sizes, device))
    return throughput_summary(rows, peak, sizes, device)


def fp16_gradscaler(args, sizes, device):
    x0 = torch.rand(sizes.batch, 3, 32, 32, device=device) * 2 - 1
    _, step = tp.ddpm_lib_step(device, False, toy=sizes.toy, precision="fp16")  # a T4's path, on any card
    trainer = step.__self__
    if not trainer.scaler.is_enabled():
        raise RuntimeError("the Trainer did not take the fp16 + GradScaler path with TrainConfig.precision='fp16'")
    losses = []
    for _ in range(sizes.warmup):
        losses.append(step(x0))
    ours = tp.images_per_second(lambda x: losses.append(step(x)), x0, sizes.fp16_steps - sizes.warmup, device)
    losses = torch.stack(losses).float().cpu()
    finite = bool(torch.isfinite(losses).all())
    scale = trainer.scaler.get_scale()
    del trainer, step
    reset_peak(device)
    _, step = tp.diffusers_step(device, False, toy=sizes.toy, dtype=torch.float16)
    for _ in range(sizes.warmup):
        step(x0)
    diffusers = statistics.median(tp.images_per_second(step, x0, sizes.timed_steps, device)
                                  for _ in range(sizes.rounds))
    k = min(10, len(losses))
    last = losses[-k:].mean().item() if finite else None
    return {"batch": sizes.batch, "train_steps": len(losses), "final_loss": last, "losses_finite": finite,
            "final_scale": scale, "ddpm_lib_images_per_s": ours, "diffusers_images_per_s": diffusers,
            "checks": [check(f"{len(losses)} steps: loss (mean of the last {k})", last, "loss", "finite", finite),
                       check("ddpm_lib fp16 / diffusers fp16 (this card, not a T4)", ours / diffusers, "x",
                             ">= 1x on a T4", ours >= diffusers)]}


def sampling(args, sizes, device):
    from ddpm_lib.objective import Denoiser
    from ddpm_lib.samplers import dpm_solver_sample, dpm_solver_timesteps
    from ddpm_lib.schedule import NoiseSchedule
    from ddpm_lib.unet import unet_from_preset

    model = unet_from_preset(tp.TOY_PRESET if sizes.toy else "ddpm-cifar10").to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    schedule = NoiseSchedule.linear(1000).to(device)
    denoiser = Denoiser(model, schedule)  # eps, the paper's
    shape = (sizes.sample_batch, 3, 32, 32)

    def draw(steps):
        generator = torch.Generator(device).manual_seed(0)
        with tp.autocast(device):
            return dpm_solver_sample(denoiser, shape, sample_steps=steps, generator=generator, device=device)

    draw(2)  # warm-up: kernels, allocator, cuDNN autotuning
    reset_peak(device)
    seconds = []
    for _ in range(sizes.rounds):
        tp.sync(device)
        start = time.perf_counter()
        x0 = draw(sizes.solver_steps)
        tp.sync(device)
        seconds.append(time.perf_counter() - start)
    if not torch.isfinite(x0).all():
        raise FloatingPointError("DPM-Solver++ returned non-finite samples")
    rate = sizes.sample_batch / statistics.median(seconds)
    projected = FID_SAMPLES / rate
    return {"batch": sizes.sample_batch, "solver_steps": sizes.solver_steps,
            "model_evals": len(dpm_solver_timesteps(schedule, sizes.solver_steps)),
            "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
            "seconds_per_batch": statistics.median(seconds), "images_per_s": rate,
            "peak_memory_gib": peak_gib(device),
            "checks": [check(f"{FID_SAMPLES:,} samples, {sizes.solver_steps} DPM-Solver++ steps (projected)",
                             projected, "s", "<= 60 s", projected <= 60)]}


def load_images(data, sizes, scratch):
    """uint8 (N, 3, 32, 32): a folder of images, or a .tar.gz of one (extracted into scratch)."""
    from ddpm_lib.data import load_dataset, load_image_folder, make_shapes

    if data is None:
        return make_shapes(64, seed=0)[0] if sizes.toy else load_dataset("cifar10", root=str(ROOT / "data")).images
    if Path(data).is_file():
        with tarfile.open(data) as archive:
            archive.extractall(scratch, filter="data")
        data = scratch
    return load_image_folder(data).images


def save_loss_curve(history, path, title, loss_name):
    """PNG of the loss per step (log scale) and its moving average; history: [(step, loss), ...]."""
    from matplotlib.figure import Figure

    steps, loss = zip(*history)
    k = max(1, len(loss) // 50)
    smooth = [sum(loss[i - k + 1:i + 1]) / k for i in range(k - 1, len(loss))]
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.plot(steps, loss, alpha=0.3, lw=0.7, label="loss per step")
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"moving average ({k})")
    ax.set(xlabel="step", ylabel=loss_name, yscale="log", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cifar10_run(args, sizes, device):
    from dataclasses import replace

    from torchvision.utils import save_image

    from ddpm_lib import generate_images
    from ddpm_lib.shipped import ship_model
    from ddpm_lib.train import Trainer
    from ddpm_lib.unet import UNet

    out, start = Path(args.out), time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        images = load_images(args.data, sizes, scratch)
    load_s = time.perf_counter() - start
    # the `fast` recipe (notebook 05's GPU default): its network (the toy preset in a dry run), objective and schedule
    recipe = replace(FAST, preset=tp.TOY_PRESET) if sizes.toy else FAST
    network = recipe.network
    config = replace(recipe.train, batch_size=sizes.batch, compile=True, out_dir=None, progress=False)
    trainer = Trainer(UNet(network), recipe.noise_schedule(), config, recipe.objective, device=device)
    start = time.perf_counter()
    trainer.fit(images, train_steps=1)  # compilation, the data set onto the device
    tp.sync(device)
    first_step_s, train_s, grids = time.perf_counter() - start, 0.0, []  # grids: {"step", "file"} per PNG
    logged = f"{recipe.objective.prediction} loss, {recipe.objective.weighting} weights"  # what Trainer.history holds

    def grid():
        x = generate_images(trainer.denoiser, sizes.grid_n, sampler="dpm-solver",
                            sample_steps=sizes.solver_steps, batch_size=sizes.grid_n, seed=0, device=device)
        name = f"samples_step_{trainer.step:06d}.png"
        save_image(x.float() / 255, out / name, nrow=math.ceil(math.sqrt(sizes.grid_n)))
        grids.append({"step": trainer.step, "file": name})

    def result():
        losses = [loss for _, loss in trainer.history]
        last, finite = statistics.fmean(losses[-100:]), all(math.isfinite(v) for v in losses)
        return {"model": f"recipe {recipe.name}, preset {recipe.preset}",
                "data": str(args.data or ("shapes" if sizes.toy else "cifar10")),
                "images": len(images), "load_seconds": load_s, "first_step_seconds": first_step_s,
                "train_steps": trainer.step, "loss": logged,
                "train_seconds": train_s, "images_per_s": (trainer.step - 1) * sizes.batch / max(train_s, 1e-9),
                "final_loss": last if finite else None, "grids": grids, "solver_steps": sizes.solver_steps,
                "checks": [check(f"{trainer.step:,} steps in {train_s:.0f} s: {logged} (mean of the last 100)",
                                 last if finite else None, "loss", "finite", finite)]}

    while train_s < args.train_seconds and time.monotonic() < args.deadline - FINISH_S:
        stop = min([s for s in sizes.grid_steps if s > trainer.step] + [trainer.step + sizes.chunk])
        start = time.perf_counter()
        trainer.fit(images, train_steps=stop)
        tp.sync(device)
        train_s += time.perf_counter() - start
        if trainer.step in sizes.grid_steps:
            grid()
        save_partial(args, result())
    if trainer.step not in sizes.grid_steps:
        grid()
    save_loss_curve(trainer.history, out / "loss_curve.png", f"recipe {recipe.name} on {len(images):,} images", logged)
    with tempfile.TemporaryDirectory() as scratch:  # the EMA weights in float16 and their card: a few tens of MB
        trainer.save(Path(scratch) / "checkpoint.pt")
        card = {"command": "benchmarks/gpu_check.py (cifar10_run)", "train_minutes": round(train_s / 60, 2),
                "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)}
        weights = ship_model(Path(scratch) / "checkpoint.pt", out / "fast_ema_fp16.pt", card)
    return dict(result(), loss_curve="loss_curve.png", weights=weights.name)
