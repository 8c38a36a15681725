"""Pictures for the README and the docs pages, from real data and real runs (not a test).

    python benchmarks/readme_figures.py forward --images DIR          # docs/forward_process.png
    python benchmarks/readme_figures.py run --run-dir DIR              # docs/loss_curve.png + docs/samples_*.png

`forward` noises real images (e.g. a folder of CIFAR-10 images) with the paper's linear schedule and
the cosine schedule; `run` turns a `python -m ddpm_lib train` output folder into a loss curve and
copies its latest EMA sample grid (samples/step_*.png).
"""
import argparse
import json
import shutil
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from ddpm_lib.data import load_image_folder
from ddpm_lib.schedule import NoiseSchedule

DOCS = Path(__file__).resolve().parents[1] / "docs"
TIMES = (0, 50, 100, 200, 350, 500, 700, 999)  # 0-based t (index 0 is the paper's t = 1)


def forward_figure(images_dir: str, n: int = 5, seed: int = 0) -> Path:
    images = load_image_folder(images_dir).images
    g = torch.Generator().manual_seed(seed)
    x0 = images[torch.randperm(len(images), generator=g)[:n]].float() / 127.5 - 1  # (n, 3, 32, 32) in [-1, 1]
    eps = torch.randn(x0.shape, generator=g)
    fig = Figure(figsize=(2 * 0.62 * len(TIMES), 0.62 * n + 0.7))
    for row, (name, schedule) in enumerate([("linear 1e-4..0.02", NoiseSchedule.linear()),
                                            ("cosine", NoiseSchedule.cosine())]):
        cols = [schedule.q_sample(x0, torch.full((n,), t), eps) for t in TIMES]  # Eq. 4
        grid = torch.stack(cols, 1).flatten(0, 1)  # (n * len(TIMES), 3, 32, 32)
        grid = make_grid(grid.clamp(-1, 1), nrow=len(TIMES), padding=1, normalize=True, value_range=(-1, 1))
        ax = fig.add_subplot(1, 2, row + 1)
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_title(f"q(x_t | x0), {name} schedule", fontsize=9)
        ax.set_xticks([16.5 + 33 * i for i in range(len(TIMES))], [str(t + 1) for t in TIMES], fontsize=7)
        ax.set_xlabel("t", fontsize=8)
        ax.set_yticks([])
    fig.tight_layout()
    out = DOCS / "forward_process.png"
    fig.savefig(out, dpi=110)
    return out


def run_figures(run_dir: str) -> list[Path]:
    run = Path(run_dir)
    rows = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines() if line.strip()]
    steps = torch.tensor([r["step"] for r in rows], dtype=torch.float64)
    loss = torch.tensor([r["loss"] for r in rows], dtype=torch.float64)
    k = max(1, len(loss) // 50)
    smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, stride=1).flatten()
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.plot(steps, loss, alpha=0.3, lw=0.7, label="loss per step")
    ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"moving average ({k})")
    ax.set(xlabel="step", ylabel="mean((eps - eps_theta)^2)", yscale="log", title=run.name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = [DOCS / "loss_curve.png"]
    fig.savefig(out[0], dpi=110)
    grids = sorted((run / "samples").glob("step_*.png"))
    if grids:
        out.append(DOCS / f"samples_{run.name}.png")
        shutil.copyfile(grids[-1], out[-1])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("forward")
    f.add_argument("--images", required=True, help="folder of images (class sub-folders or flat)")
    r = sub.add_parser("run")
    r.add_argument("--run-dir", required=True, help="output folder of `python -m ddpm_lib train`")
    args = p.parse_args()
    written = forward_figure(args.images) if args.what == "forward" else run_figures(args.run_dir)
    print("wrote", written)


if __name__ == "__main__":
    main()
