"""The project's front door stays consistent: pyproject, environment.yml, Makefile, CI and README; the
Makefile's commands work: `make lab` starts JupyterLab (as root too), `make docs` output is never collected; and
the package's modules import one another without a cycle or a private name."""
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import nbformat
import pytest
from helpers import LOCAL

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """Distribution name of a requirement string, normalised as PEP 503 does."""
    name = re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    wanted = _pyproject()["dependencies"] + _extra("notebooks")
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += [d for d in dep["pip"] if not d.startswith("-e")]
        else:
            conda.append(dep.replace("=", "==", 1) if re.match(r"^[\w.-]+=[^=]", dep) else dep)
    listed = {_name(d) for d in conda + pip} - {"python", "pip"}
    assert listed == {_name(d) for d in wanted}
    # The pip section installs the package itself with the notebooks extra.
    pip_section = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert "-e .[notebooks]" in pip_section


def test_torch_is_not_pinned_in_the_package():
    deps = _pyproject()["dependencies"]
    torch_reqs = [d for d in deps if _name(d) in {"torch", "torchvision"}]
    assert torch_reqs, "torch must be a dependency"
    assert all("==" not in d and "<" not in d for d in torch_reqs)


def _extra(name: str) -> list:
    """The requirements of an extra, with those of the extras it names (ddpm_lib[nb,...]) resolved."""
    out = []
    for dep in _pyproject()["optional-dependencies"][name]:
        inner = re.fullmatch(r"ddpm_lib\[([\w,]+)\]", dep)
        out += [d for e in inner.group(1).split(",") for d in _extra(e)] if inner else [dep]
    return out


def test_ipywidgets_7_is_allowed_for_colab():
    assert "ipywidgets>=7.6" in _extra("nb")


def test_the_core_needs_only_torch_numpy_tqdm_and_the_image_readers():
    """The notebooks', the metrics' and diffusers' packages are extras (CONTRIBUTING.md:
    the core imports torch, numpy and tqdm only)."""
    assert {_name(d) for d in _pyproject()["dependencies"]} == {"torch", "torchvision", "numpy", "tqdm", "pillow"}
    assert {"matplotlib", "ipywidgets"} <= {_name(d) for d in _extra("nb")}
    assert {"torchmetrics", "torch-fidelity"} <= {_name(d) for d in _extra("metrics")}
    assert {"diffusers", "huggingface-hub", "safetensors"} <= {_name(d) for d in _extra("interop")}


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme
    assert re.search(r"^make test$", ci, flags=re.M)
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest: setup lint\n", 1)[1].split("\n\n", 1)[0]  # the lint first
    assert "pytest tests notebooks --nbval-lax" in recipe
    lint = makefile.split("\nlint: setup\n", 1)[1].split("\n\n", 1)[0]
    assert "ruff check ." in lint and "mypy" in lint
    assert "torch==2.14.1 torchvision==0.29.1" in makefile


def test_ci_runs_the_notebooks_under_each_mkl_code_path_of_this_cpu():
    assert re.search(r"^make test-mkl$", (ROOT / ".ci" / "run").read_text(), flags=re.M)
    lines = " ".join(_make_n("test-mkl"))
    flags = (Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else [])
    wanted = ["COMPATIBLE"] + ["AVX2"] * ("avx2" in flags) + ["AVX512"] * ("avx512f" in flags)
    assert re.search(r"for path in " + " +".join(wanted) + r"\s*;", lines), lines
    assert "MKL_CBWR=$path" in lines and "pytest notebooks --nbval-lax" in lines


def test_import_ddpm_lib_loads_nothing_heavy():
    """The core needs torch, numpy and tqdm: `import ddpm_lib` in a fresh interpreter loads no widget, plotting,
    image, data-set, metrics or diffusers package."""
    heavy = ["ipywidgets", "matplotlib", "scipy", "PIL", "torchvision", "torchmetrics", "torch_fidelity", "diffusers",
             "huggingface_hub", "wandb", "tensorboard"]
    code = f"import sys, ddpm_lib; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _make_n(*args) -> list[str]:
    """The commands `make -n ARGS` would run (here, in the repository)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_lab_starts_jupyterlab_as_this_user_root_included(tmp_path):
    """`make lab` runs the command it prints; started with the Makefile's arguments, JupyterLab serves /api
    (as root: only with --allow-root, which the Makefile adds when `id -u` is 0)."""
    port = _free_port()
    line = next(ln for ln in _make_n("lab", f"LAB_ARGS=--no-browser --port={port}") if "jupyter lab" in ln)
    assert ("--allow-root" in line) == (os.geteuid() == 0)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    lab = subprocess.Popen(shlex.split(line), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    try:
        deadline, answer = time.monotonic() + 240, None  # a start, not a speed: other tests share the cores
        while answer is None and lab.poll() is None and time.monotonic() < deadline:
            try:
                with LOCAL.open(f"http://127.0.0.1:{port}/api", timeout=5) as r:
                    answer = json.load(r)
            except OSError:
                time.sleep(1)
    finally:
        lab.terminate()
        try:
            output = lab.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            lab.kill()
            output = lab.communicate()[0]
    assert answer is not None, f"JupyterLab did not serve /api: {output[-2000:]}"
    assert "version" in answer


def test_make_docs_executes_the_series_at_real_sizes_into_docs_notebooks():
    lines = _make_n("docs")
    line = next(ln for ln in lines if "nbconvert" in ln)
    assert line.startswith("DDPM_SMOKE=0 ") and "--execute" in line  # never smoke mode, whatever the shell has
    assert any("--output-dir docs/notebooks notebooks/[0-9]*.ipynb" in ln for ln in lines)  # the whole series


def _notebook(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, str(path))


@pytest.mark.slow
def test_executed_notebooks_in_docs_are_never_collected(tmp_path):
    """With this pyproject's pytest settings, `make test`'s command, plain pytest and `pytest .` leave docs/ alone."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    _notebook(tmp_path / "docs" / "notebooks" / "01_executed.ipynb")
    _notebook(tmp_path / "notebooks" / "01_series.ipynb")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_one.py").write_text("def test_one():\n    pass\n")
    for args in (["tests", "notebooks", "--nbval-lax"], ["--nbval-lax"], ["--nbval-lax", "."]):
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               *args], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "test_one" in proc.stdout
        assert "01_executed" not in proc.stdout, args
        assert ("01_series.ipynb" in proc.stdout) == (args != ["--nbval-lax"])  # testpaths: tests/ only


def test_gpu_wheels_resolves_what_the_packages_need_without_the_pytorch_stack():
    """scripts/gpu_wheels.py pins the whole requirement tree from this environment's metadata (no network)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_wheels

    pins = gpu_wheels.closure(["nbval", "torch-fidelity"], "3.12")
    assert {"nbval", "ipykernel", "jupyter-client", "nbformat", "torch-fidelity"} <= set(pins)
    assert not {"torch", "torchvision", "numpy", "scipy", "pillow"} & set(pins)
    assert all(pins[name] == importlib.metadata.version(name) for name in pins)


# ----------------------------------------------------------------------------- the package's rooms

def _package_imports() -> dict:
    """{module: {(module it imports from at the top level, names)}} for every module of ddpm_lib, from the source."""
    import ast

    modules = {}
    for path in sorted((ROOT / "ddpm_lib").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        package = parts[:-1]  # what a relative import starts from (a package's __init__ too)
        name = ".".join(parts if path.name != "__init__.py" else parts[:-1])
        edges = set()
        for node in ast.parse(path.read_text()).body:  # the top level: what importing the module imports
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ((node.module,) if node.module else ()))
                edges.add((target, tuple(a.name for a in node.names)))
        modules[name] = edges
    return modules


def test_the_modules_import_one_another_without_a_cycle():
    """Small parts to whole: following the top-level imports between ddpm_lib's modules never comes back."""
    imports = _package_imports()
    graph = {m: {t if t in imports else t.rsplit(".", 1)[0] for t, _ in edges} | {f"{t}.{n}" for t, names in edges
                                                                                for n in names if f"{t}.{n}" in imports}
             for m, edges in imports.items()}
    for start in graph:
        if start == "ddpm_lib":  # the package re-exports its modules; they never import it back at the top level
            continue
        seen, todo = set(), [t for t in graph[start] if t != "ddpm_lib"]
        while todo:
            module = todo.pop()
            assert module != start, f"{start} imports itself back through its imports"
            if module not in seen and module in graph:
                seen.add(module)
                todo += [t for t in graph[module] if t != "ddpm_lib"]


def test_no_module_imports_another_ones_private_names():
    """A helper that two modules need is public (CONTRIBUTING): no `from .x import _y`."""
    private = {(module, target, name) for module, edges in _package_imports().items() for target, names in edges
               for name in names if name.startswith("_") and not name.startswith("__")}
    assert not private, f"private names imported across modules: {sorted(private)}"
