"""What each notebook installs in Colab: one repository and one ref, from one place.

The ref is the release tag of ddpm_lib's version (`v` + `__version__` of ddpm_lib/__init__.py) when the checkout
has that tag, else main. This script writes it, from the one template below, into every notebook's install cell
(its first code cell) and into its "Open in Colab" badge (first cell), in notebooks/ and in their executed copies
in docs/notebooks/; nothing else of a notebook changes. Standard library only (`make release` runs it without
the virtual environment).

    python scripts/install_ref.py              rewrite every notebook's install cell and badge
    python scripts/install_ref.py PATH...      only these notebooks
    python scripts/install_ref.py --check      list the notebooks that disagree (exit status 1), write nothing
    python scripts/install_ref.py --release X.Y.Z
        `make release`: refuses a dirty tree, a malformed or non-increasing version, or an existing tag; then
        writes X.Y.Z into ddpm_lib/__init__.py and the tag vX.Y.Z (which make creates next) into the notebooks
"""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from string import Template

REPO_URL = "https://github.com/ddpm-lib/ddpm_lib"
VERSION_FILE = "ddpm_lib/__init__.py"  # the version's one place (pyproject.toml reads it from there)
VERSION_LINE = re.compile(r'^__version__ = "([^"]*)"', re.M)
NOTEBOOKS = ("notebooks", "docs/notebooks")  # the series and its executed copies, NN_name.ipynb in each
RELEASE = re.compile(r"\d+\.\d+\.\d+")

# The install cell, whole; only the extras differ between notebooks (each keeps those it has).
INSTALL_CELL = Template('''\
import os
import sys

if "google.colab" in sys.modules:  # Colab: install the release this notebook goes with (main until it is tagged)
    # nbval skips this cell; DDPM_INSTALL overrides it (the Colab emulation installs the checkout's wheel); the
    # next cell's setup_notebook prints what pip installed
    INSTALL = os.environ.get("DDPM_INSTALL", "ddpm_lib[$extras] @ git+$repo@$ref")
    %pip install -q "{INSTALL}"''')
EXTRAS = re.compile(r"ddpm_lib\[([a-z,]+)\] @ git\+")
BADGE = re.compile(r"(https://colab\.research\.google\.com/github/ddpm-lib/ddpm_lib/blob/)[^/\s)]+(/notebooks/)")


class Refused(Exception):
    """A one-line reason why nothing was written."""


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise Refused(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()}")
    return done.stdout


def version(root: Path) -> str:
    """ddpm_lib's version, as ddpm_lib/__init__.py writes it."""
    found = VERSION_LINE.search((root / VERSION_FILE).read_text(encoding="utf-8"))
    if not found:
        raise Refused(f"{VERSION_FILE} has no line `__version__ = \"...\"`")
    return found.group(1)


def install_ref(root: Path) -> str:
    """The ref the notebooks install: the version's release tag when the checkout has it, else main."""
    tag = f"v{version(root)}"
    return tag if _git(root, "tag", "--list", tag).strip() == tag else "main"


def notebooks(root: Path) -> list[Path]:
    return sorted(p for folder in NOTEBOOKS for p in (root / folder).glob("[0-9][0-9]_*.ipynb"))


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _lines(text: str) -> list[str]:
    """A notebook cell's source as nbformat stores it: lines, each ending in a newline but the last."""
    return text.splitlines(keepends=True)


def rewritten(path: Path, ref: str) -> tuple[str, str]:
    """(the notebook's text as it is, as it should be): its install cell and badge naming REPO_URL at ref."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    cells = nb["cells"]
    install = next((c for c in cells if c["cell_type"] == "code"), None)
    if install is None or '"google.colab" in sys.modules' not in "".join(install["source"]):
        raise Refused(f"{path}: its first code cell is not the Colab install cell")
    extras = EXTRAS.search("".join(install["source"]))
    if not extras:
        raise Refused(f"{path}: its install cell names no `ddpm_lib[extras] @ git+...`")
    install["source"] = _lines(INSTALL_CELL.substitute(extras=extras.group(1), repo=REPO_URL, ref=ref))
    badge = "".join(cells[0]["source"])
    if cells[0]["cell_type"] != "markdown" or not BADGE.search(badge):
        raise Refused(f"{path}: its first cell has no Open in Colab badge")
    cells[0]["source"] = _lines(BADGE.sub(rf"\g<1>{ref}\g<2>", badge))
    return text, json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def check(root: Path, paths: list[Path]) -> int:
    ref = install_ref(root)
    wrong = [path for path in paths if len({*rewritten(path, ref)}) == 2]  # (as it is, as it should be) differ
    for path in wrong:
        print(f"{_shown(path, root)}: its install cell or badge does not name {REPO_URL}@{ref}")
    if wrong:
        print(f"run `python scripts/install_ref.py` to write {ref} into them", file=sys.stderr)
    return 1 if wrong else 0


def write(root: Path, paths: list[Path], ref: str) -> None:
    """Every notebook's new text first, so that a notebook that cannot be rewritten stops before any is written."""
    changes = [(path, new) for path in paths for old, new in [rewritten(path, ref)] if new != old]
    for path, new in changes:
        path.write_text(new, encoding="utf-8")
        print(f"{_shown(path, root)}: installs {REPO_URL}@{ref}")


def release(root: Path, new: str) -> None:
    """Refuse (before writing anything) or write the version and its tag into their places."""
    if not RELEASE.fullmatch(new):
        raise Refused(f"VERSION={new!r} is not X.Y.Z (three numbers): make release VERSION=X.Y.Z")
    old = version(root)
    current = RELEASE.match(old)
    if current and tuple(map(int, new.split("."))) <= tuple(map(int, current.group(0).split("."))):
        raise Refused(f"VERSION={new} does not come after the current version {old}")
    dirty = _git(root, "status", "--porcelain").splitlines()
    if dirty:
        more = f" and {len(dirty) - 1} more" if len(dirty) > 1 else ""
        raise Refused(f"the working tree is not clean ({dirty[0].strip()}{more}): commit or stash first")
    if _git(root, "tag", "--list", f"v{new}").strip():
        raise Refused(f"the tag v{new} exists already")
    paths = notebooks(root)
    for path in paths:
        rewritten(path, f"v{new}")  # raises Refused before anything is written
    init = root / VERSION_FILE
    init.write_text(VERSION_LINE.sub(f'__version__ = "{new}"', init.read_text(encoding="utf-8"), count=1),
                    encoding="utf-8")
    print(f"{VERSION_FILE}: __version__ = {new!r} (was {old!r})")
    write(root, paths, f"v{new}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: every one, and its executed copy)")
    parser.add_argument("--check", action="store_true", help="list the notebooks that disagree; write nothing")
    parser.add_argument("--release", metavar="X.Y.Z", help="make release: the new version, written with its tag")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    paths = [p.resolve() for p in args.paths] or notebooks(root)
    try:
        if args.release is not None:
            release(root, args.release)
        elif args.check:
            return check(root, paths)
        else:
            write(root, paths, install_ref(root))
    except Refused as why:
        print(f"{'make release' if args.release is not None else 'install_ref'}: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
