"""The project's front door stays consistent: pyproject, environment.yml, Makefile, CI and README."""
import re
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """Distribution name of a requirement string, normalised as PEP 503 does."""
    name = re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = _pyproject()
    wanted = project["dependencies"] + project["optional-dependencies"]["notebooks"]
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


def test_ipywidgets_7_is_allowed_for_colab():
    deps = _pyproject()["dependencies"]
    assert "ipywidgets>=7.6" in deps


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme
    assert re.search(r"^make test$", ci, flags=re.M)
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest: setup\n", 1)[1].split("\n\n", 1)[0]
    assert "pytest tests notebooks --nbval-lax" in recipe
    assert "torch==2.14.1 torchvision==0.29.1" in makefile
