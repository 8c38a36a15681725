"""Test-session setup for the notebooks (nbval).

When notebooks are collected (`pytest --nbval-lax notebooks/`), the kernels inherit this process's
environment, so before any kernel starts we set DDPM_SMOKE=1, write a small CIFAR-10-format fixture
(procedural shapes, in CIFAR-10's own batch files) and point DDPM_DATA_ROOT and DDPM_RUNS at
temporary folders, and give each kernel one OpenMP thread. The notebooks then run their CIFAR-10
path, offline, in CI sizes. Variables already set are kept (e.g. DDPM_DATA_ROOT at the real CIFAR-10).
Plain library tests are unaffected.
"""
import os
import shutil
import tempfile

import matplotlib
import pytest

FIXTURE_TRAIN = 5000  # training images in the fixture (data_batch_1..5)
FIXTURE_TEST = 1000  # test images in the fixture (test_batch)


def _runs_notebooks(config):
    """True when nbval is on or an .ipynb file is named on the command line."""
    nbval = config.getoption("nbval", default=False) or config.getoption("nbval_lax", default=False)
    return nbval or any(str(arg).split("::")[0].endswith(".ipynb") for arg in config.args)


def _write_fixture(root):
    import torch

    from ddpm_lib.data import make_shapes
    from ddpm_lib.cifar10 import write_cifar10_format

    images, _ = make_shapes(FIXTURE_TRAIN + FIXTURE_TEST, seed=0)  # (N, 3, 32, 32) uint8
    labels = torch.arange(len(images)) % 10
    write_cifar10_format(root, images[:FIXTURE_TRAIN], labels[:FIXTURE_TRAIN],
                         images[FIXTURE_TRAIN:], labels[FIXTURE_TRAIN:])


def pytest_configure(config):
    matplotlib.use("Agg")  # this process never opens windows; kernels keep their inline backend
    if os.environ.get("PYTEST_XDIST_WORKER"):  # test processes side by side (make test): one intra-op thread each
        import torch

        torch.set_num_threads(1)
    if not _runs_notebooks(config):
        return
    if hasattr(config.option, "nbval_current_env") and not config.option.nbval_kernel_name:
        config.option.nbval_current_env = True  # kernels run this interpreter (the venv), whatever kernelspec says
    tmp = tempfile.mkdtemp(prefix="ddpm_nbval_")
    config._ddpm_nbval_tmp = tmp
    os.environ.setdefault("DDPM_SMOKE", "1")
    # One intra-op thread per kernel: on a shared 2-core machine two OpenMP threads per kernel oversubscribe
    # the cores, and the small-batch forward passes of the notebooks were measured 5-25x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "DDPM_DATA_ROOT" not in os.environ:
        data_root = os.path.join(tmp, "data")
        _write_fixture(data_root)
        os.environ["DDPM_DATA_ROOT"] = data_root
    os.environ.setdefault("DDPM_RUNS", os.path.join(tmp, "runs"))


def pytest_unconfigure(config):
    tmp = getattr(config, "_ddpm_nbval_tmp", None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


# Tests that must not run side by side under pytest-xdist (make test): notebook 05 trains the model that 06-08 show
# (find_model), so they run in one process, in order; the tests that start a server (JupyterLab, or the course site's
# http.server with Chromium) run one after the other. Every other test module, and every other notebook's cells,
# is a unit of its own (--dist loadscope).
SHARED_SCOPES = {"notebooks/05_training.ipynb": "notebooks 05-08", "notebooks/06_sampling.ipynb": "notebooks 05-08",
                 "notebooks/07_evaluation.ipynb": "notebooks 05-08", "notebooks/08_guidance.ipynb": "notebooks 05-08",
                 "tests/test_browser.py": "servers", "tests/test_packaging.py": "servers",
                 "tests/test_site.py": "servers"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's LoadScopeScheduling, with SHARED_SCOPES: a scope's tests go to one process, in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SHARED_SCOPES.get(nodeid.split("::", 1)[0]) or super()._split_scope(nodeid)

    return Scheduling(config, log)
