"""One command that checks ddpm_lib on a GPU (at most 8 minutes on one H100/H200) and writes docs/gpu/.

Sections, each in its own process and time box; a failing one is recorded with its one-line error and the rest go on:
  train_throughput  training images/s of the paper's network at batch 128, bf16, channels_last: ddpm_lib's
                    Trainer.train_step (eager and torch.compile) against diffusers' UNet2DModel and
                    denoising-diffusion-pytorch's Unet (benchmarks/throughput.py's contenders), peak memory each
  fp16_gradscaler   the T4 path forced (ddpm_lib.train.autocast_dtype -> float16, GradScaler): finite loss, speed,
                    against diffusers' fp16 + GradScaler step
  sampling          images/s of 20 DPM-Solver++ steps in bf16 at a large batch; the time projected for 50,000
  cifar10_run       a ~4-minute run of ddpm-cifar10 on CIFAR-10 (--data): loss curve and EMA sample grids (PNGs)
  nbval             (--nbval) each notebook under `pytest --nbval-lax` in smoke mode: pass/fail and time
cifar10_run and nbval run side by side. Writes OUT/results.json, OUT/results.md (every result next to its
target from the issue, pass/fail, the card, torch version, date) and OUT/*.png.

    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check   # the same code on the CPU at toy sizes

The GPU machine of this workplace (device tool) has no internet and Python 3.12 with torch. Here, first:
    make gpu-carry    # gpu-carry/wheels (nbval, ipykernel, diffusers, ... for cp312), gpu-carry/cifar10-train.tar.gz
then `run` with carry ["gpu-carry"], timeout_s 600, this command (";": should pip fail, the check still runs,
and what lacks a package fails on its own):
    python3 -m pip install -q --no-index --find-links gpu-carry/wheels nbval ipykernel jupyter_client nbformat \
      ipywidgets diffusers denoising-diffusion-pytorch torch-fidelity; PYTHONPATH=$PWD python3 \
      benchmarks/gpu_check.py --data gpu-carry/cifar10-train.tar.gz --nbval --out $OUT/gpu
and copy the files it returns (files_at/gpu/*) into docs/gpu/. On a GPU box of your own: `make gpu-check`.
"""
import argparse
import datetime
import functools
import gc
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import torch

import throughput as tp

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"train_throughput": "training throughput", "fp16_gradscaler": "fp16 + GradScaler (T4 path)",
            "sampling": "sampling", "cifar10_run": "CIFAR-10 run", "nbval": "notebooks under nbval"}
SEQUENTIAL = ("train_throughput", "fp16_gradscaler", "sampling")
FID_SAMPLES = 50_000
FINISH_S = 20  # the CIFAR-10 run stops training this long before its time box ends: the last grid, the loss curve


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
    boxes: tuple               # time boxes (s) of the SEQUENTIAL sections; cifar10_run and nbval get the rest
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


def force_fp16():
    """Patch ddpm_lib.train.autocast_dtype to float16: Trainers built after this take a T4's fp16 + GradScaler path."""
    import ddpm_lib.train
    ddpm_lib.train.autocast_dtype = lambda device: torch.float16


# -- sections (each runs in a child process) ----------------------------------------------------------------
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
            row["utilisation"] = row["images_per_s"] * 3 * row["gflops_per_image"] * 1e9 / peak
    rate = {row["name"]: row.get("images_per_s") for row in rows}
    ours = max((r for n, r in rate.items() if n.startswith("ddpm_lib") and r), default=None)
    diffusers = rate.get("diffusers UNet2DModel")
    ratio = ours / diffusers if ours and diffusers else None
    return {"batch": sizes.batch, "precision": "bf16 autocast, channels_last" if device.type == "cuda" else "fp32",
            "peak_tflops": peak / 1e12, "rows": rows,
            "checks": [check(f"ddpm_lib (best of eager / compiled), batch {sizes.batch}", ours, "img/s",
                             ">= 10,000 img/s (H100, bf16, batch 128)", ours is not None and ours >= 10_000),
                       check("ddpm_lib / diffusers UNet2DModel (eager)", ratio, "x", ">= 2x",
                             ratio is not None and ratio >= 2)]}


def train_throughput(args, sizes, device):
    x0 = torch.rand(sizes.batch, 3, 32, 32, device=device) * 2 - 1
    peak = tp.measured_peak(device, n=sizes.peak_n)
    compiled = "ddpm_lib torch.compile" + (f" (backend={sizes.compile_backend})" if sizes.toy else "")
    contenders = [("ddpm_lib eager", tp.ddpm_lib_step, False), ("diffusers UNet2DModel", tp.diffusers_step, False),
                  ("denoising-diffusion-pytorch Unet", tp.lucidrains_step, False),
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
    force_fp16()
    _, step = tp.ddpm_lib_step(device, False, toy=sizes.toy)
    trainer = step.__self__
    if not trainer.scaler.is_enabled():
        raise RuntimeError("the Trainer did not take the fp16 + GradScaler path with autocast_dtype patched")
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
    return {"batch": sizes.batch, "steps": len(losses), "final_loss": last, "losses_finite": finite,
            "final_scale": scale, "ddpm_lib_images_per_s": ours, "diffusers_images_per_s": diffusers,
            "checks": [check(f"{len(losses)} steps: loss (mean of the last {k})", last, "loss", "finite", finite),
                       check("ddpm_lib fp16 / diffusers fp16 (this card, not a T4)", ours / diffusers, "x",
                             ">= 1x on a T4", ours >= diffusers)]}


def sampling(args, sizes, device):
    from ddpm_lib.samplers import dpm_solver_sample, dpm_solver_timesteps
    from ddpm_lib.schedule import NoiseSchedule
    from ddpm_lib.unet import unet_from_preset

    model = unet_from_preset(tp.TOY_PRESET if sizes.toy else "ddpm-cifar10").to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    schedule = NoiseSchedule.linear(1000).to(device)
    shape = (sizes.sample_batch, 3, 32, 32)

    def draw(steps):
        generator = torch.Generator(device).manual_seed(0)
        with tp.autocast(device):
            return dpm_solver_sample(model, schedule, shape, steps=steps, generator=generator, device=device)

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
        return make_shapes(64, seed=0) if sizes.toy else load_dataset("cifar10", root=str(ROOT / "data"))
    if Path(data).is_file():
        with tarfile.open(data) as archive:
            archive.extractall(scratch, filter="data")
        data = scratch
    return load_image_folder(data)


def save_loss_curve(history, path, title):
    from matplotlib.figure import Figure

    steps, loss = zip(*history)
    k = max(1, len(loss) // 50)
    smooth = [sum(loss[i - k + 1:i + 1]) / k for i in range(k - 1, len(loss))]
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.plot(steps, loss, alpha=0.3, lw=0.7, label="loss per step")
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"moving average ({k})")
    ax.set(xlabel="step", ylabel="mean((eps - eps_theta)^2)", yscale="log", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cifar10_run(args, sizes, device):
    from torchvision.utils import save_image

    from ddpm_lib import generate_images
    from ddpm_lib.train import Trainer, TrainConfig
    from ddpm_lib.unet import unet_from_preset

    out, start = Path(args.out), time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        images = load_images(args.data, sizes, scratch)
    load_s = time.perf_counter() - start
    config = TrainConfig(batch_size=sizes.batch, compile=True, out_dir=None, progress=False)
    preset = tp.TOY_PRESET if sizes.toy else "ddpm-cifar10"
    trainer = Trainer(unet_from_preset(preset), None, config, device=device)
    start = time.perf_counter()
    trainer.fit(images, steps=1)  # compilation, the data set onto the device
    tp.sync(device)
    first_step_s, train_s, grids = time.perf_counter() - start, 0.0, []  # grids: {"step", "file"} per PNG

    def grid():
        x = generate_images(trainer.ema, trainer.schedule, sizes.grid_n, sampler="dpm-solver",
                            steps=sizes.solver_steps, batch_size=sizes.grid_n, seed=0, device=device)
        name = f"samples_step_{trainer.step:06d}.png"
        save_image(x.float() / 255, out / name, nrow=math.ceil(math.sqrt(sizes.grid_n)))
        grids.append({"step": trainer.step, "file": name})

    def result():
        losses = [loss for _, loss in trainer.history]
        last, finite = statistics.fmean(losses[-100:]), all(math.isfinite(v) for v in losses)
        return {"model": preset, "data": str(args.data or ("shapes" if sizes.toy else "cifar10")),
                "images": len(images),
                "load_seconds": load_s, "first_step_seconds": first_step_s, "steps": trainer.step,
                "train_seconds": train_s, "images_per_s": (trainer.step - 1) * sizes.batch / max(train_s, 1e-9),
                "final_loss": last if finite else None, "grids": grids, "solver_steps": sizes.solver_steps,
                "checks": [check(f"{trainer.step:,} steps in {train_s:.0f} s: loss (mean of the last 100)",
                                 last if finite else None, "loss", "finite", finite)]}

    while train_s < args.train_seconds and time.monotonic() < args.deadline - FINISH_S:
        stop = min([s for s in sizes.grid_steps if s > trainer.step] + [trainer.step + sizes.chunk])
        start = time.perf_counter()
        trainer.fit(images, steps=stop)
        tp.sync(device)
        train_s += time.perf_counter() - start
        if trainer.step in sizes.grid_steps:
            grid()
        save_partial(args, result())
    if trainer.step not in sizes.grid_steps:
        grid()
    save_loss_curve(trainer.history, out / "loss_curve.png", f"{preset} on {len(images):,} images")
    return dict(result(), loss_curve="loss_curve.png")


ITEM = re.compile(r"^(?P<stem>\S+?)(\.|::)ipynb::(?P<cell>Cell \d+) (?P<outcome>PASSED|FAILED|ERROR|SKIPPED)\b")
ANSI = re.compile(r"(\x1b|#x1B)\[[0-9;]*m")
EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(: .*)?$")


def junit_errors(path) -> dict:
    """{notebook file name: "Cell k: the exception's last line"} of the failed cells in pytest's junit XML."""
    errors = {}
    for case in ElementTree.parse(path).iter("testcase"):
        for bad in [*case.iter("failure"), *case.iter("error")]:
            lines = [ANSI.sub("", ln).strip() for ln in (bad.text or bad.get("message", "")).splitlines()]
            found = [ln for ln in lines if EXCEPTION.match(ln)] or [ANSI.sub("", bad.get("message", "failed"))]
            errors.setdefault(Path(case.get("classname", "")).name, f"{case.get('name')}: {found[-1]}"[:300])
    return errors


def toy_notebook(folder):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import torch\ntorch.ones(2).sum().item()")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = Path(folder) / "toy.ipynb"
    nbformat.write(nb, str(path))
    return [path]


def nbval(args, sizes, device):
    """`pytest --nbval-lax` over the series in one process (as `make test` runs it: notebook 05's checkpoint
    reaches 06-08), DDPM_SMOKE=1; per notebook pass/fail and time, read from its output line by line."""
    import nbformat

    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_nbval_"))
    folder = args.notebooks
    notebooks = (sorted(folder.glob("*.ipynb")) if folder and folder.is_dir() else [folder] if folder
                 else toy_notebook(scratch) if sizes.toy else sorted((ROOT / "notebooks").glob("*.ipynb")))
    rows = {nb.name: {"notebook": nb.name, "passed": None, "seconds": 0.0, "error": None, "cells_run": 0,
                      "cells": sum(c.cell_type == "code" for c in nbformat.read(str(nb), as_version=4).cells)}
            for nb in notebooks}
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "-v",
           "--color=no", "--tb=no", f"--junitxml={scratch / 'junit.xml'}", *map(str, notebooks)]
    inside = all(ROOT in nb.resolve().parents for nb in notebooks)  # then the repository's conftest.py applies
    proc = subprocess.Popen(cmd, cwd=ROOT if inside else notebooks[0].parent, env=dict(os.environ, DDPM_SMOKE="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timer = threading.Timer(args.deadline - time.monotonic() - 10, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    last = time.monotonic()
    for line in proc.stdout:
        print(line, end="", flush=True)
        item = ITEM.match(line)
        row = rows.get(Path(item["stem"]).name + ".ipynb") if item else None
        if row is not None:
            row["seconds"] += time.monotonic() - last
            row["cells_run"] += 1
            last = time.monotonic()
            if item["outcome"] in ("FAILED", "ERROR") and not row["error"]:
                row["error"] = f"{item['cell']} failed"
    proc.wait()
    timer.cancel()
    details = junit_errors(scratch / "junit.xml") if (scratch / "junit.xml").is_file() else {}
    shutil.rmtree(scratch, ignore_errors=True)
    for name, row in rows.items():
        if row["error"]:
            row["error"] = details.get(name, row["error"])
        elif row["cells_run"] < row["cells"]:
            row["error"] = (f"time box spent at cell {row['cells_run'] + 1} of {row['cells']}" if row["cells_run"]
                            else "not run (time box spent)" if proc.returncode == -signal.SIGKILL
                            else f"pytest exited with code {proc.returncode}")
        row["passed"] = row["error"] is None
    rows = list(rows.values())
    passed = sum(r["passed"] for r in rows)
    return {"smoke": True, "rows": rows,
            "checks": [check(f"{passed}/{len(rows)} notebooks passed; value: their total time",
                             sum(r["seconds"] for r in rows), "s", "all pass", bool(rows) and passed == len(rows))]}


RUNNERS = {"train_throughput": train_throughput, "fp16_gradscaler": fp16_gradscaler, "sampling": sampling,
           "cifar10_run": cifar10_run, "nbval": nbval}


# -- the parent: sections in child processes, time boxes, the report -------------------------------------------
def launch(name, args, box_s, logs, train_seconds) -> dict:
    """Start section `name` in a child process (its own process group, so a time box ends its children too)."""
    log, result = open(Path(logs) / f"{name}.log", "w"), Path(logs) / f"{name}.json"
    cmd = [sys.executable, __file__, "--section", name, "--result", str(result), "--out", str(args.out),
           "--device", str(args.device), "--box-s", f"{box_s:.0f}", "--train-seconds", str(train_seconds)]
    cmd += ["--dry-run"] * args.dry_run + ["--data", str(args.data)] * bool(args.data)
    cmd += ["--notebooks", str(args.notebooks)] * bool(args.notebooks)
    print(f"[gpu_check] {name}: started, time box {box_s:.0f} s", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return {"name": name, "proc": proc, "log": log, "result": result, "box_s": box_s, "started": time.monotonic()}


def finish(child) -> dict:
    """Wait for a child within its time box; its result, or a failure with a one-line error."""
    proc, name = child["proc"], child["name"]
    try:
        proc.wait(timeout=max(child["started"] + child["box_s"] - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    child["log"].close()
    tail = [ln for ln in Path(child["log"].name).read_text(errors="replace").splitlines() if ln.strip()][-30:]
    section = json.loads(child["result"].read_text()) if child["result"].is_file() else {}
    if section.get("status", "partial") == "partial":  # no result, or a partial one: the child did not finish
        why = (f"timed out: time box of {child['box_s']:.0f} s spent" if proc.returncode == -signal.SIGKILL
               else f"exited with code {proc.returncode}: " + (tail or [""])[-1])
        section.update(status="failed", error=(why + "; partial results kept" * bool(section))[:300])
    section["wall_seconds"] = time.monotonic() - child["started"]
    if section["status"] != "ok":
        section["log_tail"] = tail
        print("\n".join(tail), file=sys.stderr)
    print(f"[gpu_check] {name}: {section['status']} in {section['wall_seconds']:.0f} s"
          + (f" ({section['error']})" if section["status"] != "ok" else ""), file=sys.stderr, flush=True)
    return section


FORMATS = {"img/s": lambda v: f"{v:,.0f} img/s" if v >= 100 else f"{v:.3g} img/s", "x": "{:.2f}x".format,
           "s": "{:,.1f} s".format, "GiB": "{:.2f} GiB".format, "loss": "{:.4f}".format}


def fmt(value, unit):
    return "-" if value is None else FORMATS[unit](value)


def markdown(report):
    verdict = {True: "pass", False: "**fail**", None: "-"}
    dry = " (DRY RUN: toy sizes on the CPU, not comparable)" * report["dry_run"]
    lines = [f"# GPU check: {report['card']}", "",
             f"{report['date']}, torch {report['torch']} (CUDA {report['cuda']}), {report['total_seconds']:.0f} s "
             f"in all; written by `benchmarks/gpu_check.py`{dry}.",
             "Targets are the issue's (an H100's); on another card they are a reference, not a verdict.", "",
             "| section | result | value | target | pass |", "|---|---|---:|---|:-:|"]
    for name, section in report["sections"].items():
        if section["status"] != "ok":
            lines.append(f"| {SECTIONS[name]} | failed: {section['error'].replace('|', '/')} | | | **fail** |")
        for c in section.get("checks", []):  # a failed section's checks: from the part it finished
            lines.append(f"| {SECTIONS[name]} | {c['what']} | {fmt(c['value'], c['unit'])} | {c['target']} | "
                         f"{verdict[c['passed']]} |")
    s = report["sections"]
    if "rows" in s.get("train_throughput", {}):
        t = s["train_throughput"]
        lines += ["", "## Training throughput", "",
                  f"Full training step (forward, backward, clip, Adam, EMA), batch {t['batch']}, {t['precision']}; "
                  f"median of the timing rounds; measured matmul peak {t['peak_tflops']:.3g} TFLOP/s.",
                  "", "| implementation | parameters | forward GFLOPs / image | images / s | peak memory | "
                  "utilisation of peak |", "|---|---:|---:|---:|---:|---:|"]
        for r in t["rows"]:
            lines.append(f"| {r['name']} | failed: {r['error']} | | | | |" if "error" in r else
                         f"| {r['name']} | {r['params']:,} | {r['gflops_per_image']:.2f} | "
                         f"{fmt(r['images_per_s'], 'img/s')} | {fmt(r['peak_memory_gib'], 'GiB')} | "
                         f"{r['utilisation']:.1%} |")
    if "ddpm_lib_images_per_s" in s.get("fp16_gradscaler", {}):
        f = s["fp16_gradscaler"]
        lines += ["", "## fp16 + GradScaler", "",
                  f"ddpm_lib's Trainer with autocast_dtype patched to float16, batch {f['batch']}, {f['steps']} steps: "
                  f"{fmt(f['ddpm_lib_images_per_s'], 'img/s')}, final loss {fmt(f['final_loss'], 'loss')}, "
                  f"final loss scale {f['final_scale']:g}; diffusers with fp16 + GradScaler: "
                  f"{fmt(f['diffusers_images_per_s'], 'img/s')}."]
    if "images_per_s" in s.get("sampling", {}):
        p = s["sampling"]
        lines += ["", "## Sampling", "",
                  f"DPM-Solver++(2M), {p['solver_steps']} steps ({p['model_evals']} model evaluations), batch "
                  f"{p['batch']}, {p['precision']}: {p['seconds_per_batch']:.2f} s per batch, "
                  f"{fmt(p['images_per_s'], 'img/s')}, peak memory {fmt(p['peak_memory_gib'], 'GiB')}."]
    if "steps" in s.get("cifar10_run", {}):
        r = s["cifar10_run"]
        lines += ["", "## CIFAR-10 run", "",
                  f"{r['model']} (torch.compile) on {r['images']:,} images ({r['data']}; {r['load_seconds']:.0f} s to "
                  f"load): first step with compilation {r['first_step_seconds']:.0f} s, then {r['steps']:,} steps in "
                  f"{r['train_seconds']:.0f} s ({fmt(r['images_per_s'], 'img/s')}); loss "
                  f"{fmt(r['final_loss'], 'loss')} at the end. EMA samples, DPM-Solver++ {r['solver_steps']} steps, "
                  "the same x_T in every grid:", ""]
        lines += [f"![loss curve]({r['loss_curve']})", ""] if r.get("loss_curve") else []
        lines += ["| " + " | ".join(f"step {g['step']:,}" for g in r["grids"]) + " |",
                  "|" + "---|" * len(r["grids"]),
                  "| " + " | ".join(f"![EMA samples at step {g['step']}]({g['file']})" for g in r["grids"]) + " |"]
    if "rows" in s.get("nbval", {}):
        lines += ["", "## Notebooks under nbval (smoke mode, on this card)", "",
                  "| notebook | result | seconds |", "|---|---|---:|"]
        for r in s["nbval"]["rows"]:
            secs = f"{r['seconds']:.0f}" if r["seconds"] is not None else "-"
            lines.append(f"| {r['notebook']} | {'pass' if r['passed'] else 'fail: ' + r['error']} | {secs} |")
    return "\n".join(lines) + "\n"


def write_report(report, out):
    (out / "results.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (out / "results.md").write_text(markdown(report))


def run_all(args, sizes):
    out, started = Path(args.out), time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else tp.machine(device)
    report = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "dry_run": args.dry_run, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "budget_seconds": args.budget_s, "total_seconds": 0.0, "sections": {}}
    deadline = started + args.budget_s
    pair = [n for n in ("cifar10_run", "nbval") if n in args.sections]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as logs:
        for name, own_box in zip(SEQUENTIAL, sizes.boxes):  # one after another, each in its box ...
            if name in args.sections:
                reserve = (args.train_seconds + sizes.run_overhead_s) * ("cifar10_run" in pair)
                box = min(own_box, deadline - time.monotonic() - reserve)
                report["sections"][name] = finish(launch(name, args, max(box, 1), logs, args.train_seconds))
                report["total_seconds"] = time.monotonic() - started
                write_report(report, out)  # after every section: a later kill keeps what was measured
        box = deadline - time.monotonic()  # ... then the CIFAR-10 run and nbval side by side, in what is left
        train_seconds = max(min(args.train_seconds, box - sizes.run_overhead_s), 1)
        children = [launch(name, args, max(box, 1), logs, train_seconds) for name in pair]
        for child in children:
            report["sections"][child["name"]] = finish(child)
    report["total_seconds"] = time.monotonic() - started
    write_report(report, out)
    print(markdown(report))


def run_section(args, sizes):
    """In the child: run one section, write its result (or its one-line error) as JSON."""
    device, args.deadline = torch.device(args.device), time.monotonic() + args.box_s
    if sizes.compile_backend != "inductor":
        torch.compile = functools.partial(torch.compile, backend=sizes.compile_backend)
    started = time.perf_counter()
    try:
        result = dict(RUNNERS[args.section](args, sizes, device), status="ok")
    except Exception as e:
        traceback.print_exc()
        result = {"status": "failed", "error": one_line(e)}
    result["seconds"] = time.perf_counter() - started
    write_result(args, result)


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "gpu", help="folder for results.json/.md and PNGs")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="the same code paths at toy sizes (CPU, under 2 minutes)")
    p.add_argument("--data", type=Path, default=None,
                   help="training images for the run: a folder (class sub-folders allowed) or a .tar.gz of one, "
                        "e.g. CIFAR-10's JPEG copy (default: CIFAR-10 in data/, downloaded when online)")
    p.add_argument("--nbval", action="store_true", help="also run the notebooks under nbval in smoke mode")
    p.add_argument("--notebooks", type=Path, default=None, help="notebook or folder for --nbval (default: notebooks/)")
    p.add_argument("--sections", default=None, help=f"comma-separated subset of {', '.join(SECTIONS)}")
    p.add_argument("--train-seconds", type=float, default=None, help="training time of the CIFAR-10 run")
    p.add_argument("--budget-s", type=float, default=None, help="the whole check's time limit (default 480; dry: 900)")
    p.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)  # in a child: run this one
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)               # in a child: its JSON result
    p.add_argument("--box-s", type=float, default=600, help=argparse.SUPPRESS)   # in a child: its time box
    args = p.parse_args(argv)
    sizes = DRY if args.dry_run else GPU
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        fail(f"--device {args.device!r}: expected a torch device such as cuda, cuda:1 or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {args.device}: CUDA is not available on this machine (torch {torch.__version__}); "
             f"run on a GPU, or --dry-run on the CPU")
    if device.type != "cuda" and not args.dry_run:
        fail(f"--device {args.device}: the full check needs a CUDA device (--dry-run runs toy sizes on the CPU)")
    if args.data is not None and not args.data.exists():
        fail(f"--data {args.data}: not found (expected a folder of images or a .tar.gz of one)")
    if args.notebooks is not None and not args.notebooks.exists():
        fail(f"--notebooks {args.notebooks}: not found (expected a notebook or a folder of notebooks)")
    chosen = args.sections.split(",") if args.sections else [n for n in SECTIONS if n != "nbval" or args.nbval]
    unknown = [n for n in chosen if n not in SECTIONS]
    if unknown:
        fail(f"--sections: unknown {', '.join(unknown)}; expected some of {', '.join(SECTIONS)}")
    args.sections = [n for n in SECTIONS if n in chosen]
    args.train_seconds = sizes.train_seconds if args.train_seconds is None else args.train_seconds
    args.budget_s = sizes.budget_s if args.budget_s is None else args.budget_s
    for name in ("train_seconds", "budget_s"):
        if not getattr(args, name) > 0:
            fail(f"--{name.replace('_', '-')}: expected a positive number of seconds, got {getattr(args, name)}")
    return args, sizes


def main(argv=None):
    args, sizes = parse_args(argv)
    if args.section:
        run_section(args, sizes)
    else:
        run_all(args, sizes)


if __name__ == "__main__":
    main()
