"""Download wheels of some packages and everything they need into a folder, for another machine's Python.

For a GPU machine without internet that already has PyTorch (`make gpu-wheels`; see benchmarks/gpu_check.py):

    python scripts/gpu_wheels.py --dest gpu-carry/wheels --python-version 3.12 nbval ipykernel diffusers ...
    # there:  python3 -m pip install --no-index --find-links gpu-carry/wheels nbval ipykernel diffusers ...

The requirements are resolved here, in this environment (where the packages are installed, and where the tests
ran with them), and pinned to the versions installed here; markers are evaluated for the target Python. The
scientific stack a PyTorch machine brings (torch, numpy, scipy, matplotlib, ...: SKIP) is left out, so the folder
stays small; pip there installs only what is missing, from the folder.
"""
import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

# Big or ABI-bound distributions a PyTorch machine has (fnmatch-free: exact names and prefixes ending in "-").
SKIP = ("torch", "torchvision", "torchaudio", "triton", "nvidia-", "cuda-", "numpy", "scipy", "pillow", "matplotlib",
        "contourpy", "kiwisolver", "fonttools", "cycler", "pyparsing", "pandas", "pyarrow", "sympy", "mpmath",
        "networkx", "setuptools", "pip", "wheel")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_5_x86_64")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def skipped(name: str) -> bool:
    return any(name == s or (s.endswith("-") and name.startswith(s)) for s in SKIP)


def closure(names, python_version: str) -> dict:
    """{distribution: installed version} of `names` and their requirements, recursively, without SKIP."""
    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "extra": ""}
    found, todo = {}, [normalise(n) for n in names]
    while todo:
        name = todo.pop()
        if name in found or skipped(name):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"error: {name} is not installed here (run `make setup` first); "
                             f"its version pins the download") from None
        found[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(normalise(req.name))
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("packages", nargs="+", help="distributions to carry, with what they need")
    p.add_argument("--dest", type=Path, required=True, help="folder for the wheels (git-ignored)")
    p.add_argument("--python-version", default="3.12", help="the target machine's Python, e.g. 3.12")
    args = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        raise SystemExit(f"error: --python-version: expected 3.N, got {args.python_version!r}")
    pins = closure(args.packages, args.python_version)
    tag = args.python_version.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(args.dest),
           "--python-version", args.python_version, "--implementation", "cp", "--abi", f"cp{tag}", "--abi", "abi3",
           "--abi", "none", *[a for platform in PLATFORMS for a in ("--platform", platform)],
           *[f"{name}=={version}" for name, version in sorted(pins.items())]]
    args.dest.mkdir(parents=True, exist_ok=True)
    if subprocess.run(cmd).returncode:
        raise SystemExit("error: pip download failed (see above); a package without a wheel for this Python "
                         "or platform needs another version here")
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(pins)} distributions, {len(wheels)} wheels, {size:.1f} MiB in {args.dest}")


if __name__ == "__main__":
    main()
