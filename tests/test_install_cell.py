"""What a notebook installs in Colab: every notebook's install cell (and its executed copy's) names one repository
and one ref, the release tag of ddpm_lib.__version__ when the checkout has that tag, else main, and its Colab
badge opens the notebook at that ref (scripts/install_ref.py writes both). `make release` bumps the version, makes
the cells name its tag, commits and tags, in a clone of the repository; it refuses a dirty tree or a bad version
before writing anything."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ddpm_lib

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install_ref.py"
URL = "https://github.com/ddpm-lib/ddpm_lib"
BADGE = "https://colab.research.google.com/github/ddpm-lib/ddpm_lib/blob/"
INSTALLED = re.compile(r'"ddpm_lib\[[a-z,]+\] @ git\+(https://[^"@]+)@([^"]+)"')
VERSION = re.compile(r'^__version__ = "([^"]*)"', re.M)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def expected_ref(root: Path, version: str) -> str:
    tag = f"v{version}"
    return tag if git(root, "tag", "--list", tag) == tag else "main"


def named(path: Path) -> tuple[list, list]:
    """([(repository, ref)] the install cell installs, [ref] the Colab badge of this notebook opens)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    install = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
    badge = re.findall(re.escape(BADGE) + r"([^/]+)/notebooks/" + re.escape(path.name), "".join(cells[0]["source"]))
    return INSTALLED.findall(install), badge


def notebooks(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for folder in ("notebooks", "docs/notebooks")
                  for p in (root / folder).glob("[0-9][0-9]_*.ipynb"))


def disagreements(root: Path, version: str) -> list[str]:
    """The notebooks (and executed copies) whose install cell or badge does not name URL at the version's ref."""
    ref = expected_ref(root, version)
    return [name for name in notebooks(root) if named(root / name) != ([(URL, ref)], [ref])]


def script(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, "--root", root, *args], capture_output=True, text=True)


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout: no tags to read the ref from")
def test_every_install_cell_and_badge_name_the_repository_at_the_versions_ref():
    assert len(notebooks(REPO)) >= 18, notebooks(REPO)  # the series and its executed copies
    wrong = disagreements(REPO, ddpm_lib.__version__)
    assert not wrong, (f"{wrong} do not install {URL}@{expected_ref(REPO, ddpm_lib.__version__)} "
                       f"(ddpm_lib {ddpm_lib.__version__}): run `python scripts/install_ref.py`")
    for name in notebooks(REPO):  # the Colab emulation's override stays; setup_notebook then says what it installed
        cells = json.loads((REPO / name).read_text(encoding="utf-8"))["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert 'INSTALL = os.environ.get("DDPM_INSTALL", "ddpm_lib[' in "".join(code[0]["source"])
        assert "setup_notebook(" in "".join(code[1]["source"])


@pytest.fixture
def copy(tmp_path):
    """The series (without outputs), one executed copy and ddpm_lib/__init__.py, in a git repository of one commit."""
    root = tmp_path / "repo"
    for name in notebooks(REPO):
        if name.startswith("notebooks/") or name == "docs/notebooks/01_noise_schedule.ipynb":
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, root / name)
    (root / "ddpm_lib").mkdir()
    shutil.copy(REPO / "ddpm_lib" / "__init__.py", root / "ddpm_lib" / "__init__.py")
    git(root.parent, "init", "-q", str(root))
    git(root, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "t")
    return root


def test_the_check_fails_when_a_cell_or_the_version_changes(copy):
    before = {name: json.loads((copy / name).read_text(encoding="utf-8")) for name in notebooks(copy)}
    version = VERSION.search((copy / "ddpm_lib" / "__init__.py").read_text()).group(1)
    assert script(copy).returncode == 0  # writes main (no tag) into every one
    assert script(copy, "--check").returncode == 0 and not disagreements(copy, version)
    for name, nb in before.items():  # nothing but the install cell and the badge changed
        after = json.loads((copy / name).read_text(encoding="utf-8"))
        assert after["metadata"] == nb["metadata"] and len(after["cells"]) == len(nb["cells"])
        changed = [i for i, (a, b) in enumerate(zip(after["cells"], nb["cells"])) if a != b]
        assert set(changed) <= {0, 1}, (name, changed)  # the badge's cell and the install cell
        assert {**after["cells"][1], "source": ""} == {**nb["cells"][1], "source": ""}  # its outputs, metadata

    cell = copy / "notebooks" / "03_unet.ipynb"  # a cell installs another ref
    cell.write_text(cell.read_text(encoding="utf-8").replace("ddpm_lib@main", "ddpm_lib@v0.1.0"), encoding="utf-8")
    assert disagreements(copy, version) == ["notebooks/03_unet.ipynb"]
    check = script(copy, "--check")
    assert check.returncode == 1 and check.stdout.splitlines() == [
        f"notebooks/03_unet.ipynb: its install cell or badge does not name {URL}@main"]
    badge = copy / "notebooks" / "05_training.ipynb"  # a badge opens another ref
    badge.write_text(badge.read_text(encoding="utf-8").replace("ddpm_lib/blob/main/", "ddpm_lib/blob/dev/"),
                     encoding="utf-8")
    assert disagreements(copy, version) == ["notebooks/03_unet.ipynb", "notebooks/05_training.ipynb"]
    assert script(copy, "--check").stdout.count("does not name") == 2
    assert script(copy, str(cell), str(badge)).returncode == 0 and not disagreements(copy, version)

    init = copy / "ddpm_lib" / "__init__.py"  # the version changes: its tag is the ref once it exists
    init.write_text(VERSION.sub('__version__ = "0.9.0"', init.read_text()))
    assert not disagreements(copy, "0.9.0") and script(copy, "--check").returncode == 0  # no tag v0.9.0: main
    git(copy, "tag", "v0.9.0")
    assert disagreements(copy, "0.9.0") == notebooks(copy)
    check = script(copy, "--check")
    assert check.returncode == 1 and check.stdout.count("does not name") == len(notebooks(copy))
    assert script(copy).returncode == 0 and script(copy, "--check").returncode == 0
    assert not disagreements(copy, "0.9.0") and named(cell) == ([(URL, "v0.9.0")], ["v0.9.0"])
    assert disagreements(copy, version) == notebooks(copy)  # the test of the checkout fails on the old version


def make_release(root: Path, version: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", str(root), "release", f"VERSION={version}"], capture_output=True,
                          text=True)


def test_make_release_bumps_the_version_rewrites_the_cells_commits_and_tags(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, capture_output=True)
    for key, value in (("user.name", "Release Test"), ("user.email", "release@example.com"),
                       ("commit.gpgsign", "false"), ("tag.gpgsign", "false")):
        git(clone, "config", key, value)
    for path in ("Makefile", "scripts/install_ref.py"):  # the checkout's, committed or not: what is under test
        shutil.copy(REPO / path, clone / path)
    git(clone, "add", "Makefile", "scripts/install_ref.py")
    git(clone, "commit", "-q", "--allow-empty", "-m", "the Makefile and script under test")
    head, tags = git(clone, "rev-parse", "HEAD"), git(clone, "tag")
    init = clone / "ddpm_lib" / "__init__.py"
    before = init.read_text()
    old = VERSION.search(before).group(1)
    major, minor, _ = (int(n) for n in old.split("."))
    new = f"{major}.{minor + 1}.0"

    def unchanged():
        return git(clone, "rev-parse", "HEAD") == head and git(clone, "tag") == tags and \
            git(clone, "status", "--porcelain") == ""

    for bad, why in (("", "is not X.Y.Z"), ("1.2", "is not X.Y.Z"), (f"v{new}", "is not X.Y.Z"),
                     (old, "does not come after"), ("0.0.1", "does not come after")):
        refused = make_release(clone, bad)
        assert refused.returncode != 0 and why in refused.stderr, (bad, refused.stderr)
        assert refused.stderr.splitlines()[0].startswith("make release: "), refused.stderr
        assert unchanged(), f"VERSION={bad!r} wrote something"
    readme = clone / "README.md"
    readme.write_text(readme.read_text() + "\nnot committed\n")
    refused = make_release(clone, new)
    assert refused.returncode != 0 and "the working tree is not clean" in refused.stderr, refused.stderr
    assert git(clone, "status", "--porcelain") == "M README.md"  # nothing else written
    git(clone, "checkout", "--", "README.md")
    assert unchanged()

    done = make_release(clone, new)
    assert done.returncode == 0, done.stderr
    assert "nothing pushed" in done.stdout
    assert init.read_text() == before.replace(f'__version__ = "{old}"', f'__version__ = "{new}"')  # that line only
    assert git(clone, "status", "--porcelain") == ""
    assert git(clone, "rev-parse", "HEAD~1") == head
    assert git(clone, "describe", "--exact-match", "HEAD") == f"v{new}"
    assert git(clone, "cat-file", "-t", f"v{new}") == "tag" and git(clone, "tag") == f"v{new}"
    committed = set(git(clone, "show", "--name-only", "--format=", "HEAD").splitlines())
    assert committed == {"ddpm_lib/__init__.py", *notebooks(clone)}
    assert not disagreements(clone, new)
    assert all(named(clone / name) == ([(URL, f"v{new}")], [f"v{new}"]) for name in notebooks(clone))
    assert script(clone, "--check").returncode == 0

    again = make_release(clone, new)  # the same version twice
    assert again.returncode != 0 and "does not come after" in again.stderr
