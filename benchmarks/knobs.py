"""The walkthrough's knobs by their effect on samples: small models trained on the shapes set on a CPU (not a test).

    python benchmarks/knobs.py quick            # the CPU quick win against the paper's objective, 2 seeds each:
                                                # docs/knobs/quick_win.{png,md,json}
    python benchmarks/knobs.py knobs            # every knob:  docs/knobs/knobs.{png,md,json}
    python benchmarks/knobs.py knobs --only num_heads temb_dim
    python benchmarks/knobs.py table            # knobs.md and quick_win.md again from their json (no training)

Each run trains the `QUICK` recipe's network (the tiny preset on 16x16 shapes) with one knob changed, for the
same number of steps and the same data, noise and initialisation seeds, then draws 64 samples with DDIM and
scores them with `ddpm_lib.shapes.shape_score` (the share of samples that are one solid shape on a plain
background, by the generator's own rules). The knob sweep trains a quarter of the quick win's steps, so that
every knob fits in a few CPU minutes. The sweep keeps the paper's objective (eps, uniform weighting, linear betas);
`quick` trains the quick win's recipe (ddpm_lib.recipes.QUICK_WIN) beside the same settings with the paper's objective,
two seeds each, and scores 256 samples of each run.
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import torch
from machine import machine
from matplotlib.figure import Figure
from torchvision.utils import make_grid, save_image

from ddpm_lib.data import make_shapes
from ddpm_lib.utils import to_model_range, to_uint8
from ddpm_lib.metrics import share_with_interval
from ddpm_lib.objective import Objective
from ddpm_lib.recipes import QUICK_WIN
from ddpm_lib.samplers import ddim_sample
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.shapes import shape_score
from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import PRESETS, UNet

DOCS = Path(__file__).resolve().parents[1] / "docs" / "knobs"


@dataclass(frozen=True)
class Run:
    """One training run: the network (the quick win's preset with overrides), the schedule, the recipe.
    The defaults are the quick win's settings (ddpm_lib.recipes.QUICK_WIN) with the paper's objective."""
    name: str                                  # what is varied, e.g. "num_heads=1"
    unet: dict = field(default_factory=dict)   # UNetConfig overrides of the preset
    num_timesteps: int = 1000                  # T (the walkthrough's `step` knob)
    beta_min: float = 1e-4                     # beta_1 of the linear schedule
    beta_max: float = 0.02                     # beta_T of the linear schedule
    schedule: str = "linear"                   # linear or cosine betas
    prediction: str = "eps"                    # what the network predicts: eps (the paper), x0 or v
    loss_weighting: str = "uniform"            # uniform (L_simple with eps) or min-snr (gamma 5)
    image_size: int = QUICK_WIN.image_size     # training and sampling resolution (16: 4x cheaper than 32)
    train_steps: int = QUICK_WIN.train_steps   # optimizer steps
    batch_size: int = QUICK_WIN.batch_size     # images per step
    lr: float = QUICK_WIN.lr                   # Adam; a small network tolerates 10x the paper's 2e-4
    warmup_steps: int = QUICK_WIN.warmup_steps  # linear lr warm-up
    ema_decay: float = QUICK_WIN.ema_decay     # with the EMA warm-up (TrainConfig.ema_warmup) on
    sample_steps: int = 50                     # DDIM's model evaluations per sample (at most T)


PAPER_OBJECTIVE = Run("paper objective")  # the quick win's settings with eps, L_simple and the paper's betas
QUICK = Run("quick win", schedule=QUICK_WIN.schedule, prediction=QUICK_WIN.objective.prediction,
            loss_weighting=QUICK_WIN.objective.weighting)  # notebook 05's CPU default
QUICK_SEEDS, QUICK_SAMPLES = (0, 1), 256  # `quick`: seeds per recipe, samples scored per run
QUICK_WORKERS = 2  # `quick`: runs at a time, one torch thread each (a small network uses one core best)

KNOBS = {  # knob -> settings; the first of each is the sweep's base (QUICK at 16x16 for fewer steps)
    "num_timesteps": [{"num_timesteps": 1000}, {"num_timesteps": 200}, {"num_timesteps": 50}],
    "beta_max": [{"beta_max": 0.02}, {"beta_max": 0.005}, {"beta_max": 0.05}],
    "beta_min": [{"beta_min": 1e-4}, {"beta_min": 1e-3}],
    "schedule": [{"schedule": "linear"}, {"schedule": "cosine"}],
    "num_heads": [{"unet": {"num_heads": 4}}, {"unet": {"num_heads": 1}}, {"unet": {"num_heads": 16}}],
    "ch_list": [{"unet": {}}, {"unet": {"ch_list": (3, 16, 32, 32)}}, {"unet": {"ch_list": (3, 32, 64, 64)}}],
    "attention_layer": [{"unet": {}}, {"unet": {"attention_layer": (), "mid_attention": False}},
                        {"unet": {"attention_layer": (2, 3)}}],
    "temb_dim": [{"unet": {"temb_dim": 64}}, {"unet": {"temb_dim": 8}}, {"unet": {"temb_dim": 256}}],
}
SWEEP = replace(PAPER_OBJECTIVE, name="quick win", train_steps=500)  # every knob's runs: a quarter of the steps


def describe(run: Run, base: Run) -> str:
    changed = {k: v for k, v in asdict(run).items() if k != "name" and v != getattr(base, k)}
    changed.update(changed.pop("unet", {}))
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "base"


def train_and_score(run: Run, n_samples: int = 64, seed: int = 0) -> dict:
    """Train `run` on 5,000 shapes, sample n_samples with DDIM, score them; returns the numbers and the samples."""
    T = run.num_timesteps
    schedule = (NoiseSchedule.cosine(T) if run.schedule == "cosine"
                else NoiseSchedule.linear(T, run.beta_min, run.beta_max))
    torch.manual_seed(seed)
    model = UNet(replace(PRESETS[QUICK_WIN.preset], image_size=run.image_size, **run.unet))
    config = TrainConfig(train_steps=run.train_steps, batch_size=run.batch_size, lr=run.lr,
                         warmup_steps=run.warmup_steps,
                         ema_decay=run.ema_decay, seed=seed, out_dir=None, progress=False, log_every=25)
    objective = Objective(prediction=run.prediction, weighting=run.loss_weighting)  # min-snr: gamma 5
    trainer = Trainer(model, schedule, config, objective, device="cpu")
    start = time.perf_counter()
    trainer.fit(make_shapes(5000, size=run.image_size, seed=seed)[0])
    train_s = time.perf_counter() - start
    x0 = ddim_sample(trainer.denoiser, (n_samples, 3, run.image_size, run.image_size),
                     sample_steps=min(run.sample_steps, T), generator=torch.Generator().manual_seed(seed))
    sample_s = time.perf_counter() - start - train_s
    samples = to_uint8(x0)
    tail = [loss for _, loss in trainer.history[-max(1, len(trainer.history) // 10):]]
    return {"name": run.name, "n": n_samples, "params": sum(p.numel() for p in model.parameters()),
            "train_s": round(train_s, 1),
            "sample_s": round(sample_s, 1), "final_loss": round(sum(tail) / len(tail), 4),
            **{k: round(v, 3) for k, v in shape_score(samples).summary().items()}, "samples": samples}


def recipe_label(run: Run) -> str:
    return f"{run.prediction} + {run.loss_weighting} + {run.schedule}"


def _quick_job(job: tuple[Run, int]) -> dict:
    run, seed = job
    torch.set_num_threads(1)
    print(f"training {run.name} ({recipe_label(run)}), seed {seed} ...", flush=True)
    return {"run": asdict(run), "seed": seed, **train_and_score(run, QUICK_SAMPLES, seed=seed)}


def quick(out: Path) -> None:
    """The quick win and the paper's objective on the same settings, QUICK_SEEDS each, QUICK_SAMPLES scored."""
    jobs = [(run, seed) for run in (PAPER_OBJECTIVE, QUICK) for seed in QUICK_SEEDS]
    with ProcessPoolExecutor(QUICK_WORKERS, mp_context=get_context("spawn")) as pool:  # one thread each
        rows = list(pool.map(_quick_job, jobs))
    out.mkdir(parents=True, exist_ok=True)
    quick_rows = [row for row in rows if row["name"] == QUICK.name]
    save_image(to_model_range(quick_rows[0]["samples"][:64]).add(1).div(2), out / "quick_win.png", nrow=8)
    save_image(to_model_range(rows[0]["samples"][:64]).add(1).div(2), out / "paper_objective.png", nrow=8)
    real = shape_score(make_shapes(QUICK_SAMPLES, size=QUICK.image_size, seed=99)[0]).share
    for row in rows:
        row.pop("samples")
    (out / "quick_win.json").write_text(json.dumps({"runs": rows, "machine": machine(), "data_share": real},
                                                   indent=2) + "\n")
    quick_table(out)


def quick_table(out: Path) -> None:
    """docs/knobs/quick_win.md from quick_win.json."""
    saved = json.loads((out / "quick_win.json").read_text())
    rows = saved["runs"]
    lines = ["# CPU quick win: the tiny preset on shapes, against the paper's objective\n",
             f"Machine: {saved['machine']}; `python benchmarks/knobs.py quick`.\n",
             f"Every row: the tiny preset on 5,000 16x16 shapes, {QUICK.train_steps} steps at batch "
             f"{QUICK.batch_size}, "
             f"lr {QUICK.lr}, EMA {QUICK.ema_decay} with warm-up, T = {QUICK.num_timesteps}; {QUICK_WORKERS} runs at a "
             f"time, one torch thread each; {QUICK_SAMPLES} EMA samples per run (DDIM, {QUICK.sample_steps} steps) "
             f"scored by `ddpm_lib.shapes.shape_score`, with 95% Wilson intervals (`ddpm_lib.metrics.wilson_interval`)."
             f" Final losses are not comparable across objectives (each predicts another target and weighs t "
             f"differently). The shapes generator's own images pass all four rules: {saved['data_share']:.0%}.\n",
             "| recipe | objective | seed | train s | sample s | final loss | shape-like (95% CI) | plain bg "
             "| one shape | shape-sized | solid (95% CI) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        run, k = Run(**row["run"]), row["n"]
        passed, solid = (share_with_interval(round(row[name] * k), k) for name in ("passed", "solid_fill"))
        lines.append(f"| {run.name} | {recipe_label(run)} | {row['seed']} | {row['train_s']:.0f} | "
                     f"{row['sample_s']:.0f} | {row['final_loss']} | {passed} | {row['plain_background']:.0%} | "
                     f"{row['one_shape']:.0%} | {row['shape_size']:.0%} | {solid} |")
    lines.append("\nBoth seeds together:\n")
    for run in (PAPER_OBJECTIVE, QUICK):
        mine = [row for row in rows if row["name"] == run.name]
        k = sum(row["n"] for row in mine)
        passed = share_with_interval(sum(round(row["passed"] * row["n"]) for row in mine), k)
        lines.append(f"- {run.name} ({recipe_label(run)}): {passed} of {k} samples shape-like")
    (out / "quick_win.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def knobs(out: Path, only: list[str] | None) -> None:
    names = only or list(KNOBS)
    unknown = set(names) - set(KNOBS)
    if unknown:
        raise SystemExit(f"error: unknown knob(s) {sorted(unknown)}; expected some of {list(KNOBS)}")
    results, base_result = {}, None
    for knob in names:
        rows = []
        for i, setting in enumerate(KNOBS[knob]):
            run = replace(SWEEP, **{**setting, "unet": {**SWEEP.unet, **setting.get("unet", {})}})
            run = replace(run, name=f"{knob}: {describe(run, SWEEP)}")
            if i == 0 and base_result is not None and describe(run, SWEEP) == "base":
                rows.append(base_result)  # the base run is the same in every sweep: trained once
                continue
            print(f"training {run.name} ...", flush=True)
            rows.append(train_and_score(run))
            if describe(run, SWEEP) == "base":
                base_result = rows[-1]
        results[knob] = rows
    write_knobs(out, results)


def write_knobs(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    flat = [(knob, row) for knob, rows in results.items() for row in rows]
    fig = Figure(figsize=(8, 0.9 * len(flat) + 0.4))
    for i, (knob, row) in enumerate(flat):
        ax = fig.add_subplot(len(flat), 1, i + 1)
        grid = make_grid(row["samples"][:12].float() / 255, nrow=12, padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_axis_off()
        label = row["name"].split(": ", 1)[1]
        ax.set_title(f"{knob} {label}: {row['passed']:.0%} shape-like, loss {row['final_loss']}", fontsize=7,
                     loc="left")
    fig.tight_layout()
    fig.savefig(out / "knobs.png", dpi=110)
    lines = knobs_markdown(flat, machine())
    (out / "knobs.md").write_text("\n".join(lines) + "\n")
    (out / "knobs.json").write_text(json.dumps({"machine": machine(), "knobs": {
        knob: [{k: v for k, v in row.items() if k != "samples"} for row in rows] for knob, rows in results.items()}},
        indent=2) + "\n")
    print("\n".join(lines))


def knobs_markdown(flat: list, measured_on: str) -> list[str]:
    n = {row.get("n", 64) for _, row in flat}  # 64 samples per run (the runs before "n" was recorded too)
    lines = [f"# The walkthrough's knobs on the shapes set (CPU, {SWEEP.image_size}x{SWEEP.image_size}, "
             f"{SWEEP.train_steps} "
             f"steps each)\n", f"Machine: {measured_on}. Reproduce: `python benchmarks/knobs.py knobs` "
             f"(one knob: `--only NAME`). Base: {SWEEP}.\n",
             f"One seed, {', '.join(map(str, sorted(n)))} samples per run. Each share comes with its 95% Wilson "
             "interval (`ddpm_lib.metrics.wilson_interval`): where two rows' intervals overlap, their difference is "
             "within the noise of this many samples. Final losses are not comparable across T, betas and schedules "
             "(each setting changes which noise levels the loss averages over), only across network knobs.\n",
             "| knob | setting | parameters | train s | final loss | shape-like samples (95% CI) | plain bg | "
             "one shape | solid (95% CI) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for knob, row in flat:
        k = row.get("n", 64)
        passed, solid = (share_with_interval(round(row[name] * k), k) for name in ("passed", "solid_fill"))
        lines.append(f"| {knob} | {row['name'].split(': ', 1)[1]} | {row['params']:,} | {row['train_s']:.0f} | "
                     f"{row['final_loss']} | {passed} | {row['plain_background']:.0%} | {row['one_shape']:.0%} | "
                     f"{solid} |")
    return lines


def table(out: Path) -> None:
    saved = json.loads((out / "knobs.json").read_text())
    lines = knobs_markdown([(knob, row) for knob, rows in saved["knobs"].items() for row in rows], saved["machine"])
    (out / "knobs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("quick", "knobs", "table"))
    parser.add_argument("--only", nargs="+", help=f"knobs to run, of {list(KNOBS)}")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    if args.what == "quick":
        quick(args.out)
    elif args.what == "knobs":
        knobs(args.out, args.only)
    else:
        table(args.out)
        quick_table(args.out)


if __name__ == "__main__":
    main()
