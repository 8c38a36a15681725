"""The Colab emulation: notebooks 05-08, 10 and 11, each in a fresh runtime of its own, handing the data and
notebook 05's checkpoint to one another through a Drive, as in Google Colab.

What makes a runtime Colab-like here:
- ddpm_lib comes from its wheel, built from this checkout, installed by the notebook's own first cell
  (`%pip install "{INSTALL}"`, DDPM_INSTALL = the wheel's path; pip offline and without dependencies:
  PIP_NO_INDEX, PIP_NO_DEPS, since Colab's ipywidgets 7 wants the classic `notebook` package, which this
  environment lacks; a separate check asserts that the environment meets every requirement of the wheel).
- The kernel's environment is a fresh venv with Colab's ipywidgets 7.7.1 (its wheels are downloaded by
  `make setup` into .venv/colab-wheels; skipped without them); torch and the rest are reused from .venv
  through a view of its site-packages (less ipywidgets 8 and ddpm_lib's editable install) that a .pth
  file appends to the venv's path.
- A stand-in google.colab (tests/colab/) is installed there and imported at kernel start, as in Colab,
  so the notebooks take their Colab path; its drive.mount(path) links path/MyDrive to one folder that
  every runtime shares. ddpm_lib mounts at $DDPM_COLAB_DRIVE (<runtime>/content/drive) instead of
  /content/drive.
- Each notebook runs in a fresh kernel whose working folder is an empty <runtime>/content, HOME an empty
  <runtime>/root: no repository, no runs/, no data/ beside it. `USE_DRIVE = False` is replaced by
  `USE_DRIVE = True` in the copy that runs. DDPM_SMOKE=1 (CI sizes).
- The data comes the Colab way: DDPM_DATA_ROOT is unset, and CIFAR-10 is read from the Drive's
  ddpm_lib/data folder, where the test puts a CIFAR-10-format fixture (procedural shapes in CIFAR-10's
  batch files) before the runs, as if a first runtime had downloaded it (these machines have no internet).

Notebook 05 runs twice, the second time in a fresh runtime that resumes from the Drive (as after a
disconnect: its first step is the step the first run left there). Then 06 and 07, which must report 05's
checkpoint on the Drive (path, preset, step), and 08, which keeps the model it trains on the Drive; then 10, which
trains its flow-matching model onto the Drive, and 11, which shows 10's animation from there. An
audit hook in every Python process of a runtime logs each file opened; none may lie outside its own
runtime folder, the Drive, the environment (the venv, .venv's packages, the wheel) and system or temporary
folders: nothing else in the checkout, nothing of another runtime.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch

from helpers import REPO, package_source, run_ok, venv_reusing_this_one

from ddpm_lib.checkpoint import read_checkpoint
from ddpm_lib.data import make_shapes
from ddpm_lib.cifar10 import write_cifar10_format

pytestmark = pytest.mark.slow

STANDIN = Path(__file__).resolve().parent / "colab"  # google.colab's stand-in, the startup and audit files
WHEELS = Path(sys.prefix) / "colab-wheels"            # `make setup`: ipywidgets 7.7.1 and its pins
REUSED_NOT = ("ipywidgets", "widgetsnbextension", "jupyterlab_widgets", "ddpm_lib", "__editable__")
DRIVE_FOLDER = "ddpm_lib"                             # setup_notebook's default drive_folder
CELL_TIMEOUT = 900                                    # seconds a cell may take (two shared CPU cores)
CHECKPOINT = re.compile(r"your model from notebook 05: preset (\S+), [^,]+(?:, class-conditional)?, "
                        r"step (\d+), \w+ weights \(([^\s)]+)\)")
RESUMING = re.compile(r"resuming (\S+) at step (\d+)")


def _build_wheel(tmp: Path) -> Path:
    """ddpm_lib's wheel from a copy of the checkout's package files."""
    run_ok(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
           package_source(tmp), "-w", tmp / "dist")
    (wheel,) = (tmp / "dist").glob("ddpm_lib-*.whl")
    return wheel


def _make_environment(tmp: Path) -> Path:
    """A venv with Colab's widgets, google.colab's stand-in and the audit hook; .venv's other packages reused."""
    env = tmp / "env"
    python, site = venv_reusing_this_one(env, REUSED_NOT)
    shutil.copytree(STANDIN / "google", site / "google")
    shutil.copy(STANDIN / "audit_open.py", site / "colab_audit_open.py")
    (site / "00-colab-audit.pth").write_text("import colab_audit_open\n")  # first in every process
    run_ok(python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *sorted(WHEELS.glob("*.whl")))
    startup = tmp / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    shutil.copy(STANDIN / "startup.py", startup / "00-google-colab.py")
    kernel = tmp / "kernels" / "colab"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab emulation", "language": "python"}))
    return env


def _outputs(nb) -> str:
    """All text a notebook printed or displayed."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") if out.output_type == "stream" else
                         out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


class Emulation:
    """The shared Drive, the environment, the wheel; `run(notebook)` executes one notebook in a fresh runtime."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.wheel = _build_wheel(tmp)
        self.env = _make_environment(tmp)
        self.drive = tmp / "shared-drive"  # what every runtime's <mount>/MyDrive links to
        self.folder = self.drive / DRIVE_FOLDER
        images, labels = make_shapes(6000, seed=0)[0], torch.arange(6000) % 10
        write_cifar10_format(self.folder / "data", images[:5000], labels[:5000], images[5000:], labels[5000:])
        self.runs = 0
        self.seconds = {}

    def run(self, name: str):
        """(executed notebook, its printed text, its runtime folder, the files its processes opened)."""
        self.runs += 1
        runtime = self.tmp / f"runtime-{self.runs}-{name[:2]}"
        content, home, log = runtime / "content", runtime / "root", runtime / "open-log"
        for folder in (content, home, log):
            folder.mkdir(parents=True)
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        drive_lines = [cell for cell in nb.cells if cell.cell_type == "code" and "USE_DRIVE = False" in cell.source]
        assert len(drive_lines) == 1, f"{name}: expected one `USE_DRIVE = False` line in its parameters cell"
        drive_lines[0].source = drive_lines[0].source.replace("USE_DRIVE = False", "USE_DRIVE = True", 1)
        keep = {k: v for k, v in os.environ.items()
                if not k.startswith(("DDPM_", "COLAB_", "JUPYTER", "IPYTHON", "PYTHON", "PIP_", "VIRTUAL_ENV",
                                     "MPL", "COVERAGE"))}
        env = {**keep, "PATH": f"{self.env / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
               "HOME": str(home), "IPYTHONDIR": str(self.tmp / "ipython"), "OMP_NUM_THREADS": "1",
               "DDPM_SMOKE": "1", "DDPM_INSTALL": str(self.wheel), "DDPM_COLAB_DRIVE": str(content / "drive"),
               "COLAB_STANDIN_DRIVE": str(self.drive), "COLAB_OPEN_LOG": str(log),
               "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_CONFIG_FILE": os.devnull,
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_client.manager import KernelManager
        from nbclient import NotebookClient

        km = KernelManager(kernel_name="colab", kernel_spec_manager=KernelSpecManager(
            kernel_dirs=[str(self.tmp / "kernels")]))
        client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(content)}})
        start = time.perf_counter()
        client.execute(env=env)
        self.seconds[f"{self.runs}: {name}"] = round(time.perf_counter() - start)
        opened = {line for f in log.glob("*.log") for line in f.read_text().splitlines()}
        return nb, _outputs(nb), runtime, opened

    def strays(self, runtime: Path, opened: set) -> list:
        """The opened files outside the runtime's own folder, the Drive, the environment and system/temp folders."""
        own = [runtime, self.drive, self.env, self.wheel.parent, self.tmp / "ipython", self.tmp / "jupyter-runtime"]
        system = ["/usr", "/lib", "/lib64", "/etc", "/proc", "/sys", "/dev", sys.base_prefix, tempfile.gettempdir()]
        own, system = [os.path.realpath(p) for p in own], [os.path.realpath(p) for p in system]
        root, repo, venv = os.path.realpath(self.tmp), str(REPO), os.path.realpath(sys.prefix)

        def under(path, folder):
            return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)

        bad = []
        for path in sorted(opened):
            real = os.path.realpath(path)
            if under(real, root):  # the emulation's folders: only this runtime's, and the shared ones
                ok = any(under(real, p) for p in own)
            elif under(real, repo) and not under(real, venv):  # the checkout, less .venv's reused packages
                ok = False
            else:
                ok = under(real, venv) or any(under(real, p) for p in system)
            if not ok:
                bad.append(path if real == path else f"{path} -> {real}")
        return bad


@pytest.fixture(scope="module")
def emulation(tmp_path_factory):
    if not any(WHEELS.glob("ipywidgets-7.7.1-*.whl")):
        pytest.skip(f"Colab's ipywidgets 7.7.1 wheels not in {WHEELS}: `make setup` downloads them")
    tmp = tmp_path_factory.mktemp("colab")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_RUNTIME_DIR", str(tmp / "jupyter-runtime"))  # kernels' connection files
        yield Emulation(tmp)


def _drive_checkpoints(emulation) -> dict:
    """{path relative to MyDrive: step} of every checkpoint of notebook 05 on the Drive."""
    return {str(p.relative_to(emulation.drive)): read_checkpoint(p)["step"]
            for p in sorted((emulation.folder / "runs" / "05_training").glob("*/checkpoint.pt"))}


def _on_drive(path: str, runtime: Path) -> str:
    """A path a runtime printed, relative to its MyDrive (AssertionError when it is not on the Drive)."""
    mount = str(runtime / "content" / "drive" / "MyDrive") + os.sep
    assert path.startswith(mount), f"{path} is not on the runtime's Drive ({mount})"
    return path[len(mount):]


@pytest.fixture(scope="module")
def notebook_05(emulation):
    """Notebook 05 run twice, each time in a fresh runtime: (first, second) as (text, runtime, opened), and
    the Drive's checkpoints after the first run."""
    _, first, runtime1, opened1 = emulation.run("05_training.ipynb")
    after_first = _drive_checkpoints(emulation)
    _, second, runtime2, opened2 = emulation.run("05_training.ipynb")
    return (first, runtime1, opened1), (second, runtime2, opened2), after_first


def test_notebook_05_trains_onto_the_drive_and_a_fresh_runtime_resumes(emulation, notebook_05):
    (first, runtime1, opened1), (second, runtime2, opened2), after_first = notebook_05
    assert after_first, f"notebook 05 wrote no checkpoint to the Drive ({emulation.folder / 'runs'})"
    assert "resuming" not in first and "a copy on Drive" in first
    resumed = {_on_drive(path, runtime2): int(step) for path, step in RESUMING.findall(second)}
    assert resumed, f"the second run of notebook 05 did not resume:\n{second[-3000:]}"
    assert resumed == after_first  # each run goes on from the step the first runtime left on the Drive
    finished = _drive_checkpoints(emulation)
    assert all(finished[path] >= step for path, step in after_first.items()), (after_first, finished)
    for runtime, opened in ((runtime1, opened1), (runtime2, opened2)):
        assert not emulation.strays(runtime, opened)


CHECK_REQUIREMENTS = """
import importlib.metadata as md, sys
from packaging.requirements import Requirement
unmet = []
extras = sys.argv[1].split(",")  # those the notebooks' install cells ask for
for line in sys.argv[2:]:
    req = Requirement(line)
    if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ["", *extras]):
        continue  # a requirement of an extra no notebook asks for
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        version = None
    if version is None or not req.specifier.contains(version, prereleases=True):
        unmet.append(f"{req} (found {version})")
print(md.version("ipywidgets"), unmet)
"""


def test_the_runtime_environment_has_colabs_widgets_and_meets_the_wheels_requirements(emulation):
    """Every requirement of the wheel and of the extras the notebooks' install cells name is met."""
    with zipfile.ZipFile(emulation.wheel) as wheel:
        (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in wheel.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    extras = set()
    for path in sorted((REPO / "notebooks").glob("[0-9]*.ipynb")):
        extras.update(re.search(r"ddpm_lib\[([a-z,]+)\] @ git\+", path.read_text()).group(1).split(","))
    out = subprocess.check_output([emulation.env / "bin" / "python", "-c", CHECK_REQUIREMENTS, ",".join(sorted(extras)),
                                   *requires],
                                  text=True, cwd=emulation.tmp)
    assert out.split()[0] == "7.7.1" and out.strip().endswith("[]"), out


def test_the_audit_catches_files_of_the_checkout_and_of_another_runtime(emulation):
    runtime = emulation.tmp / "runtime-0-xx"
    allowed = {str(runtime / "content" / "x.png"), str(emulation.folder / "data"), sys.base_prefix + "/lib/os.py",
               str(emulation.env / "reused-site-packages" / "torch" / "__init__.py"), "/proc/self/maps"}
    assert emulation.strays(runtime, allowed) == []
    strays = {str(REPO / "notebooks" / "05_training.ipynb"), str(REPO / "runs" / "05_training"),
              str(emulation.tmp / "runtime-9-05" / "content" / "runs"), "/work-elsewhere/data"}
    assert emulation.strays(runtime, allowed | strays) == sorted(strays)


@pytest.mark.parametrize("name", ["06_sampling.ipynb", "07_evaluation.ipynb"])
def test_a_later_notebook_shows_notebook_05s_checkpoint_from_the_drive(emulation, notebook_05, name):
    checkpoints = _drive_checkpoints(emulation)
    _, text, runtime, opened = emulation.run(name)
    reported = CHECKPOINT.findall(text)
    assert reported, f"{name} did not report notebook 05's checkpoint:\n{text[-3000:]}"
    for preset, step, path in reported:
        relative = _on_drive(path, runtime)
        assert checkpoints.get(relative) == int(step), f"{name}: {path} at step {step}; the Drive has {checkpoints}"
        assert Path(relative).parent.name.startswith(preset)
    assert "a copy on Drive" in text
    assert not emulation.strays(runtime, opened)


def test_notebook_08_guides_the_shipped_model_when_05s_are_unconditional(emulation, notebook_05):
    """Notebook 08 needs a class-conditional model; 05's are not, so it says so and shows the shipped one (and
    trains nothing)."""
    _, text, runtime, opened = emulation.run("08_guidance.ipynb")
    assert "no class-conditional CIFAR-10 smoke checkpoint from notebook 05 on Google Drive" in text, text[-3000:]
    assert "the shipped CPU model: recipe cifar10-cond" in text
    assert not list((emulation.folder / "runs").glob("08_guidance/*/checkpoint.pt"))
    assert not emulation.strays(runtime, opened)
    print(f"wall time per notebook run (s): {emulation.seconds}")


def test_notebook_11_shows_notebook_10s_flow_model_from_the_drive(emulation, notebook_05):
    """Notebook 10 trains its flow-matching U-Net onto the Drive and writes its chain's GIF there; notebook 11, in a
    fresh runtime, finds that GIF on the Drive and writes its own."""
    _, text10, runtime10, opened10 = emulation.run("10_continuous_time_and_flow_matching.ipynb")
    run_10 = emulation.folder / "runs" / "10_flow_matching"
    assert read_checkpoint(run_10 / "checkpoint.pt")["objective"]["prediction"] == "flow"
    assert (run_10 / "flow_chain.gif").stat().st_size > 0
    assert not emulation.strays(runtime10, opened10)
    _, text11, runtime11, opened11 = emulation.run("11_what_you_built.ipynb")
    shown = re.search(r"notebook 10's flow-matching model \(16x16 shapes\), 20 Euler steps: (\S+)", text11)
    assert shown, text11[-3000:]
    assert _on_drive(shown.group(1), runtime11) == f"{DRIVE_FOLDER}/runs/10_flow_matching/flow_chain.gif"
    assert not emulation.strays(runtime11, opened11)
