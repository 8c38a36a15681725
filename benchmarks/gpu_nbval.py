"""The nbval section of benchmarks/gpu_check.py: the notebooks under `pytest --nbval-lax` in smoke mode.

Per notebook: pass/fail, its time, and the first failing cell's exception (from pytest's junit XML).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

from gpu_sections import ROOT, check

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
