"""Ship a run's EMA weights with the package: ddpm_lib/weights/cifar10_cond.pt (float16) and its JSON card.

    python scripts/ship_model.py runs/cifar10-cond --machine "Intel Xeon, 2 cores" --command "python -m ..."

The card records the step, the recipe, the training minutes (the wall time from the run folder's config.json,
written when a run starts or resumes, to its checkpoint's last write, plus --earlier-minutes for the pieces
before a resume), the machine and the command, and the sha256 that ddpm_lib.shipped checks on every read.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from machine import machine  # noqa: E402

from ddpm_lib.checkpoint import resolve_checkpoint  # noqa: E402
from ddpm_lib.record import CONFIG_NAME  # noqa: E402
from ddpm_lib.shipped import SHIPPED_MODEL, ship_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder (or checkpoint file) of the cifar10-cond recipe")
    p.add_argument("--out", default=str(SHIPPED_MODEL), help="the shipped file (default: the package's)")
    p.add_argument("--command", required=True, help="the command that trained it, for the card")
    p.add_argument("--machine", default=None, help="the machine that trained it (default: this one)")
    p.add_argument("--earlier-minutes", type=float, default=0.0, help="wall minutes of the run's pieces before its "
                   "last resume (config.json is rewritten when a run resumes)")
    args = p.parse_args()
    ckpt = resolve_checkpoint(args.run)
    config = ckpt.parent / CONFIG_NAME
    card = {"what": "EMA weights (float16) of a class-conditional CIFAR-10 UNet, trained on a CPU",
            "command": args.command, "machine": args.machine or machine(),
            "train_minutes": round(args.earlier_minutes + (ckpt.stat().st_mtime - config.stat().st_mtime) / 60, 1)}
    out = ship_model(ckpt, args.out, card)
    print(json.dumps(json.loads(out.with_suffix(".json").read_text()), indent=1))
    print(f"{out}: {out.stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
