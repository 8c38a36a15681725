"""The release as a user gets it: `python -m build` makes a wheel and an sdist; the wheel, installed into a fresh
virtual environment outside the checkout, trains, samples and imports every public module, reading nothing from
the repository."""
import sys
import tarfile
import zipfile

import pytest
from helpers import REPO, package_source, run_ok, venv_reusing_this_one

import ddpm_lib

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    run_ok(sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", tmp / "dist",
           package_source(tmp))
    (wheel,) = (tmp / "dist").glob("ddpm_lib-*.whl")
    (sdist,) = (tmp / "dist").glob("ddpm_lib-*.tar.gz")
    return tmp, wheel, sdist


def test_wheel_and_sdist_carry_the_one_version_and_the_package(dist):
    _, wheel, sdist = dist
    assert wheel.name.startswith(f"ddpm_lib-{ddpm_lib.__version__}-py3-none-any")
    assert sdist.name == f"ddpm_lib-{ddpm_lib.__version__}.tar.gz"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert f"Version: {ddpm_lib.__version__}" in metadata
    assert {"ddpm_lib/__init__.py", "ddpm_lib/nb/__init__.py", "ddpm_lib/train_log.py"} <= set(names)
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "ddpm_lib/__init__.py"} <= members


def test_the_installed_wheel_trains_samples_and_imports_outside_the_checkout(dist):
    tmp, wheel, _ = dist
    python, site = venv_reusing_this_one(tmp / "env", ("ddpm_lib", "__editable__"))
    run_ok(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    work = tmp / "work"  # outside the checkout: nothing is read from the repository
    work.mkdir()
    run = dict(cwd=work, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp), "OMP_NUM_THREADS": "1"})
    assert "train" in run_ok(python, "-m", "ddpm_lib", "--help", **run)
    run_ok(python, "-m", "ddpm_lib", "train", "--preset", "tiny", "--data", "shapes", "--n-images", "8",
           "--image-size", "16", "--train-steps", "2", "--batch-size", "4", "--out", "run", "--device", "cpu",
           "--no-progress", "--sample-every", "0", **run)
    run_ok(python, "-m", "ddpm_lib", "sample", "--ckpt", "run", "--n", "2", "--sample-steps", "2", "--out", "grid.png",
           "--device", "cpu", **run)
    assert (work / "run" / "checkpoint.pt").is_file() and (work / "run" / "config.json").is_file()
    assert (work / "grid.png").is_file()
    out = run_ok(python, "-c", (
        "import importlib, pkgutil, ddpm_lib\n"
        "names = [m.name for m in pkgutil.walk_packages(ddpm_lib.__path__, 'ddpm_lib.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(ddpm_lib.__file__, ddpm_lib.__version__, len(names))"), **run)
    where, version, count = out.split()
    assert where.startswith(str(site)) and not where.startswith(str(REPO))  # the wheel's copy, not the checkout's
    assert version == ddpm_lib.__version__ and int(count) >= 20
