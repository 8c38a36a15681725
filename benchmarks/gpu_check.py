"""One command that checks ddpm_lib on a GPU (at most 8 minutes on one H100/H200) and writes docs/gpu/.

Sections, each in its own process and time box; a failing one is recorded with its one-line error and the rest go on:
  train_throughput  training images/s of the paper's network at batch 128, bf16, channels_last: ddpm_lib's
                    Trainer.train_step (eager and torch.compile) against diffusers' UNet2DModel and
                    denoising-diffusion-pytorch's Unet (benchmarks/throughput.py's contenders), peak memory each;
                    and the `fast` recipe's step (the Colab recipe), its steps per 30-minute session
  fp16_gradscaler   the T4 path forced (TrainConfig.precision='fp16', GradScaler): finite loss, speed,
                    against diffusers' fp16 + GradScaler step
  sampling          images/s of 20 DPM-Solver++ steps in bf16 at a large batch; the time projected for 50,000
  cifar10_run       a ~4-minute run of the `fast` recipe on CIFAR-10 (--data): loss curve, EMA sample grids (PNGs)
                    and its EMA weights in float16 with their card (fast_ema_fp16.pt, for make docs DOCS_MODEL=)
  nbval             (--nbval) each notebook under `pytest --nbval-lax` in smoke mode: pass/fail and time
cifar10_run and nbval run side by side. Writes OUT/results.json, OUT/results.md (every result next to its
target from the issue, pass/fail, the card, torch version, date) and OUT/*.png.
This file is the command: its arguments, a child process per section, the time boxes. The sections are in
gpu_sections.py and gpu_nbval.py, the report in gpu_report.py.

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
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from gpu_nbval import nbval
from gpu_report import markdown, write_report
from gpu_sections import (DRY, GPU, ROOT, SECTIONS, cifar10_run, fp16_gradscaler, one_line, sampling,
                          train_throughput, write_result)
from machine import machine

SEQUENTIAL = ("train_throughput", "fp16_gradscaler", "sampling")
RUNNERS = {"train_throughput": train_throughput, "fp16_gradscaler": fp16_gradscaler, "sampling": sampling,
           "cifar10_run": cifar10_run, "nbval": nbval}


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


def run_all(args, sizes):
    out, started = Path(args.out), time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else machine(device)
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
