"""The notebook series as committed: 01..11, valid, without outputs, Colab-ready, with a SMOKE switch and exercises.

Running them is nbval's job (`pytest --nbval-lax notebooks/`); these checks are static and take no kernel.
"""
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SERIES = ["01_noise_schedule.ipynb", "02_attention.ipynb", "03_unet.ipynb", "04_reverse_process.ipynb",
          "05_training.ipynb", "06_sampling.ipynb", "07_evaluation.ipynb", "08_guidance.ipynb",
          "09_prediction_targets.ipynb", "10_continuous_time_and_flow_matching.ipynb", "11_what_you_built.ipynb"]

# the Colab badge opens the notebook at the ref its install cell installs (main, or a release's tag: the ref itself is
# checked in tests/test_install_cell.py)
COLAB = re.compile(r"https://colab\.research\.google\.com/github/ddpm-lib/ddpm_lib/blob/[\w.-]+/notebooks/")
GITHUB = "https://github.com/ddpm-lib/ddpm_lib/blob/main/"  # links Colab can follow: absolute, into the repository
SMOKE_LINE = 'SMOKE = os.environ.get("DDPM_SMOKE") == "1"'
ANSWER = "<details><summary>Answer</summary>"


def load(name):
    path = ROOT / "notebooks" / name
    assert path.is_file(), f"{path} is missing"
    return nbformat.read(str(path), as_version=nbformat.NO_CONVERT)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_series_is_exactly_the_numbered_notebooks():
    assert sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")) == SERIES


@pytest.mark.parametrize("name", SERIES)
def test_valid_nbformat_4_with_kernelspec(name):
    nb = load(name)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert nb.metadata.kernelspec.get("language") == "python"


@pytest.mark.parametrize("name", SERIES)
def test_committed_without_outputs(name):
    nb = load(name)
    for i, cell in enumerate(code_cells(nb)):
        assert cell.outputs == [], f"{name}: code cell {i} has outputs (clear them before committing)"
        assert cell.execution_count is None, f"{name}: code cell {i} has execution_count {cell.execution_count}"


@pytest.mark.parametrize("name", SERIES)
def test_first_cell_has_colab_badge_for_this_notebook(name):
    first = load(name).cells[0]
    assert first.cell_type == "markdown"
    assert re.search(COLAB.pattern + re.escape(name), first.source), f"{name}: first cell must link Colab to it"
    assert "colab-badge.svg" in first.source
    for linked in re.findall(r"\(" + re.escape(GITHUB) + r"(notebooks/\d\d_\w+\.ipynb)\)", first.source):
        assert (ROOT / linked).is_file(), f"{name} links to missing {linked}"  # previous / next links resolve


@pytest.mark.parametrize("name", SERIES)
def test_links_are_absolute_and_point_into_the_repository(name):
    """Colab opens a notebook alone, without the repository around it: a relative link leads nowhere there."""
    for i, cell in enumerate(load(name).cells):
        if cell.cell_type != "markdown":
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", cell.source):
            assert target.startswith(("https://", "http://", "#")), f"{name} cell {i}: relative link {target}"
            if target.startswith(GITHUB):
                path = target[len(GITHUB):].split("#")[0]
                assert (ROOT / path).exists(), f"{name} cell {i}: {target} names no file of the repository"


@pytest.mark.parametrize("name", SERIES)
def test_colab_install_cell_is_first_code_cell_and_skipped_by_nbval(name):
    install = code_cells(load(name))[0]
    assert "nbval-skip" in install.metadata.get("tags", [])
    assert '"google.colab" in sys.modules' in install.source
    assert "pip install" in install.source and "git+https://github.com/ddpm-lib/ddpm_lib" in install.source
    extras = re.search(r"ddpm_lib\[([a-z,]+)\] @ git\+", install.source)
    assert extras and "nb" in extras.group(1).split(","), "the install cell asks for the notebooks' extra, [nb]"
    source = "\n".join(cell.source for cell in code_cells(load(name)))
    for module, extra in (("ddpm_lib.metrics import fid_kid", "metrics"), ("find_model", "interop")):
        if module in source:
            assert extra in extras.group(1).split(","), f"{name} uses {module}: its install cell needs [{extra}]"
    assert 'os.environ.get("DDPM_INSTALL"' in install.source  # the Colab emulation installs the wheel instead


@pytest.mark.parametrize("name", SERIES)
def test_inline_against_library_checks_go_through_the_shared_tolerance(name):
    """Float comparisons use ddpm_lib.tolerance.assert_close (arithmetic tolerances), not float32's defaults."""
    for i, cell in enumerate(code_cells(load(name))):
        for line in cell.source.splitlines():
            if "torch.testing.assert_close(" in line:
                assert re.search(r"[ra]tol=", line), (f"{name} code cell {i}: torch.testing.assert_close with "
                                                      f"default tolerances; use ddpm_lib.tolerance.assert_close")


@pytest.mark.parametrize("name", SERIES)
def test_parameters_cell_reads_smoke_and_paths(name):
    cells = code_cells(load(name))
    params = [c for c in cells if SMOKE_LINE in c.source]
    assert len(params) == 1, f"{name}: expected one parameters cell with `{SMOKE_LINE}`"
    assert "setup_notebook(" in params[0].source, f"{name}: the parameters cell must call setup_notebook()"
    # only the Colab cell is skipped: everything else runs under nbval
    skipped = [c for c in cells[1:] if "nbval-skip" in c.metadata.get("tags", [])]
    assert not skipped, f"{name}: cells other than the Colab install are tagged nbval-skip"


@pytest.mark.parametrize("name", SERIES)
def test_exercises_have_collapsed_answers_and_an_assert(name):
    cells = load(name).cells
    heading = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and "## Exercises" in c.source]
    assert len(heading) == 1, f"{name}: expected one '## Exercises' section"
    section = cells[heading[0]:]
    answers = sum(c.source.count(ANSWER) for c in section if c.cell_type == "markdown")
    assert answers >= 2, f"{name}: expected >= 2 exercises with a collapsed `{ANSWER}` block"
    for c in section:
        if c.cell_type == "markdown":
            assert c.source.count(ANSWER) == c.source.count("</details>"), f"{name}: an answer block is not closed"
    checks = [c for c in section if c.cell_type == "code" and re.search(r"^\s*(assert |torch\.testing\.assert_close)",
                                                                         c.source, re.M)]
    assert checks, f"{name}: no exercise is checked by an assert cell"


def test_conftest_fixture_is_cifar10_format(tmp_path):
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    from ddpm_lib.data import load_cifar10

    conftest._write_fixture(tmp_path)
    train, train_labels = load_cifar10(tmp_path, train=True, download=False, verify_md5=False)
    test, _ = load_cifar10(tmp_path, train=False, download=False, verify_md5=False)
    assert train.shape == (conftest.FIXTURE_TRAIN, 3, 32, 32) and train.dtype == torch.uint8
    assert test.shape == (conftest.FIXTURE_TEST, 3, 32, 32)
    assert set(train_labels.tolist()) == set(range(10))


# ----------------------------------------------------------------------------- what the reader sees stays true

@pytest.mark.parametrize("name", SERIES)
def test_the_executed_copy_is_this_notebook_run(name):
    """docs/notebooks/<name> (make docs) has the notebook's cells, source for source, and every code cell has run:
    a change to a notebook without executing it again fails here."""
    copy = nbformat.read(str(ROOT / "docs" / "notebooks" / name), as_version=nbformat.NO_CONVERT)
    ours = [(c.cell_type, c.source) for c in load(name).cells]
    theirs = [(c.cell_type, c.source) for c in copy.cells]
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert len(ours) == len(theirs) and not differ, (
        f"docs/notebooks/{name} differs from notebooks/{name} in cells {differ or 'count'}: run `make docs`")
    unrun = [i for i, c in enumerate(copy.cells) if c.cell_type == "code" and c.execution_count is None
             and "google.colab" not in c.source]  # the Colab install cell does nothing outside Colab
    assert not unrun, f"docs/notebooks/{name}: code cells {unrun} were never executed"


PICTURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", PAGES)
def test_every_picture_a_page_shows_exists(page):
    path = ROOT / page
    pictures = [a or b for a, b in PICTURE.findall(path.read_text())]
    missing = [p for p in pictures if not p.startswith("http") and not (path.parent / p).is_file()]
    assert not missing, f"{page} shows pictures that are not in the repository: {missing}"
