"""benchmarks/gpu_check.py (with gpu_sections.py, gpu_nbval.py, gpu_report.py): its dry run (the same code on the
CPU at toy sizes), time boxes, failures, bad input.

The check itself needs a GPU; here each section runs at toy sizes in its own process, as on the GPU.
"""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402  (scripts beside throughput.py, not a package)
import gpu_report  # noqa: E402
import gpu_sections  # noqa: E402

from ddpm_lib.recipes import FAST  # noqa: E402
from ddpm_lib.shipped import load_shipped_model  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def numbers(obj):
    """Every int and float in a JSON document."""
    if isinstance(obj, dict):
        return [n for v in obj.values() for n in numbers(v)]
    if isinstance(obj, list):
        return [n for v in obj for n in numbers(v)]
    return [obj] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


def notebook(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.mark.slow
def test_dry_run_writes_every_section_with_finite_numbers(tmp_path):
    out = tmp_path / "gpu"
    proc = run("--dry-run", "--nbval", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert list(report["sections"]) == list(gpu_sections.SECTIONS)
    failed = {k: s.get("error") for k, s in report["sections"].items() if s["status"] != "ok"}
    assert not failed, failed
    assert report["dry_run"] is True and report["torch"] == torch.__version__ and report["card"]
    values = numbers(report)
    assert values and all(math.isfinite(v) for v in values)

    s = report["sections"]
    rows = {r["name"]: r for r in s["train_throughput"]["rows"]}
    assert len(rows) == 5 and all(r["images_per_s"] > 0 and r["params"] > 0 for r in rows.values())
    checks = {c["what"]: c for c in s["train_throughput"]["checks"]}
    fast = checks["the fast recipe's steps in 30 minutes, this card (eager)"]
    assert fast["value"] == rows[gpu_sections.FAST_ROW]["images_per_s"] / gpu_sections.DRY.batch * 1800
    assert s["fp16_gradscaler"]["losses_finite"] and s["fp16_gradscaler"]["ddpm_lib_images_per_s"] > 0
    assert s["sampling"]["images_per_s"] > 0
    run_ = s["cifar10_run"]
    # it trains for DRY.train_seconds, so how far it gets depends on the machine's load: a grid at every fixed grid
    # step it reached, and one more at its last step unless that was a grid step already
    steps = run_["train_steps"]
    assert steps >= min(gpu_sections.DRY.grid_steps)
    assert [g["step"] for g in run_["grids"]] == ([s for s in gpu_sections.DRY.grid_steps if s <= steps]
                                                 + ([steps] if steps not in gpu_sections.DRY.grid_steps else []))
    assert [r["passed"] for r in s["nbval"]["rows"]] == [True]
    for name in ["loss_curve.png"] + [g["file"] for g in run_["grids"]]:
        with Image.open(out / name) as im:
            assert im.format == "PNG"
    # its EMA weights in float16 with their card: they load as the shipped model does, with the recipe's objective
    denoiser, card = load_shipped_model(out / run_["weights"], device="cpu")
    assert (card["recipe"], card["step"], denoiser.objective) == ("fast", run_["train_steps"], FAST.objective)
    assert denoiser.schedule.kind == FAST.schedule and card["train_minutes"] == round(run_["train_seconds"] / 60, 2)
    assert all(v.dtype == torch.float16 for v in torch.load(out / run_["weights"])["ema"].values()
               if v.is_floating_point())

    # The markdown table: every check of every section, with its value and target, and the pictures it shows.
    md = (out / "results.md").read_text()
    assert report["card"] in md and torch.__version__ in md and "DRY RUN" in md
    for key, section in s.items():
        for c in section["checks"]:
            value = gpu_report.fmt(c["value"], c["unit"])
            assert f"| {gpu_sections.SECTIONS[key]} | {c['what']} | {value} | {c['target']} |" in md
    for picture in re.findall(r"\]\(([^)]+\.png)\)", md):
        assert (out / picture).is_file()


@pytest.mark.slow
def test_a_failing_section_is_recorded_and_the_rest_goes_on(tmp_path):
    empty, notebooks = tmp_path / "no_images", tmp_path / "nbs"
    empty.mkdir()
    notebooks.mkdir()
    notebook(notebooks / "a_ok.ipynb", "x = 1")
    notebook(notebooks / "b_bad.ipynb", "y = 2", "1 / 0")
    proc = run("--dry-run", "--sections", "cifar10_run,nbval", "--data", empty, "--notebooks", notebooks,
               "--out", tmp_path / "gpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((tmp_path / "gpu" / "results.json").read_text())["sections"]
    assert s["cifar10_run"]["status"] == "failed"
    assert s["cifar10_run"]["error"].startswith("FileNotFoundError: no images")
    rows = {r["notebook"]: r for r in s["nbval"]["rows"]}
    assert rows["a_ok.ipynb"]["passed"] and rows["a_ok.ipynb"]["error"] is None
    assert not rows["b_bad.ipynb"]["passed"]
    assert rows["b_bad.ipynb"]["error"] == "Cell 1: ZeroDivisionError: division by zero"
    md = (tmp_path / "gpu" / "results.md").read_text()
    assert f"| CIFAR-10 run | failed: {s['cifar10_run']['error']} |" in md
    assert "| b_bad.ipynb | fail: Cell 1: ZeroDivisionError: division by zero |" in md


@pytest.mark.slow
def test_a_section_past_its_time_box_is_stopped_and_recorded(tmp_path):
    proc = run("--dry-run", "--sections", "sampling", "--budget-s", "2", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = json.loads((tmp_path / "results.json").read_text())["sections"]["sampling"]
    assert section["status"] == "failed"
    assert section["error"] == "timed out: time box of 2 s spent"
    assert section["wall_seconds"] < 30


@pytest.mark.slow
def test_device_cuda_without_cuda_is_one_line_error(tmp_path):
    """The whole process: one line on stderr (no warnings, no traceback), a non-zero exit, nothing written."""
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = run("--device", "cuda", "--out", tmp_path / "gpu", timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: --device cuda: CUDA is not available")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "gpu").exists()


@pytest.mark.parametrize("args, message", [
    (["--dry-run", "--data", "no/such/folder"], "--data no/such/folder: not found"),
    (["--dry-run", "--sections", "sampling,speed"], "--sections: unknown speed"),
    (["--dry-run", "--train-seconds", "0"], "--train-seconds: expected a positive number"),
    (["--dry-run", "--device", "gpu"], "--device 'gpu': expected a torch device"),
    (["--device", "cpu"], "--device cpu: the full check needs a CUDA device"),
    pytest.param(["--device", "cuda"], "--device cuda: CUDA is not available", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_the_gpu_command_installs_what_the_makefile_installs():
    """The command written at the top of gpu_check.py (for a machine without make) and `make gpu-check` agree."""
    doc = gpu_check.__doc__.replace("\\\n", " ")
    command = re.search(r"pip install -q --no-index --find-links gpu-carry/wheels (.+?);", doc).group(1).split()
    makefile = (ROOT / "Makefile").read_text()
    packages = re.search(r"^GPU_PACKAGES\s*:=\s*(.+)$", makefile, flags=re.M).group(1).split()
    assert sorted(command) == sorted(packages)
    assert re.search(r"carry \[\"gpu-carry\"\]", doc) and "gpu-carry/" in (ROOT / ".gitignore").read_text()
