"""Training recipes side by side on real CIFAR-10 at 32x32, at equal CPU budgets (a benchmark, not a test).

    python benchmarks/recipes.py            # the full benchmark: docs/recipes/{recipes.md,recipes.json,*.png}
    python benchmarks/recipes.py --quick    # a first look: short budgets, few samples, one seed
    python benchmarks/recipes.py table      # docs/recipes/recipes.md again from recipes.json (no training)
    python benchmarks/recipes.py flow       # flow matching against the winner (benchmarks/recipes_flow.py)

Every run trains the same network (the tiny preset, 1.12M weights) from the same initialisation on the same
CIFAR-10 training images (the JPEG copy in ../shared/data/cifar10-jpeg, extracted by `make data/cifar10-jpeg`)
with the same optimiser settings (the CPU quick win's: batch 32, Adam lr 2e-3, EMA 0.995 with warm-up); only what
the network predicts, how the loss weighs each t, and the beta schedule change. denoising-diffusion-pytorch runs
in the same benchmark with its own defaults (v-prediction, sigmoid schedule, its Trainer's batch 16, lr 1e-4, EMA
0.995 every 10 steps) on a Unet of about the same size and FLOPs (dim 24, mults 1,2,2,2: 1.17M weights, 0.43
GFLOPs against the tiny net's 0.50).

Budgets are CPU time of the training process (time.process_time), one torch thread per run and two runs at a
time on the two cores, so a run's budget does not depend on what runs beside it. Each run keeps its EMA weights
at every budget in BUDGETS (fractions of --minutes), so one 10-minute run serves every budget. Samples: DPM-Solver++
(2M) for ddpm_lib's runs and for the peer's network too (its betas as a NoiseSchedule, its v-output read by an
Objective), and the peer's own DDIM; scored by benchmarks/cifar_scores.py against the test split. An interrupted
benchmark goes on where it stopped: each trained run and each score is kept under runs/recipes (trained.json,
scores_<budget>.json) with the settings that made it, and used again only by a run with the same settings.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
DOCS = ROOT / "docs" / "recipes"   # the table, the pictures and recipes.json
WORK = ROOT / "runs" / "recipes"   # the runs' EMA weights at each budget and the test features (not committed)
DATA = ROOT / "data" / "cifar10-jpeg"
BUDGETS = (0.25, 0.5, 1.0)   # fractions of --minutes at which every run keeps its EMA weights
PEER_NET = dict(dim=24, dim_mults=(1, 2, 2, 2))


@dataclass(frozen=True)
class Run:
    """One training run of the benchmark."""
    name: str                      # the recipe's name in the table
    prediction: str = "eps"        # what the network predicts: eps, x0, v or flow (recipes_flow.py)
    weighting: str = "uniform"     # loss weighting: uniform (L_simple) or min-snr
    schedule: str = "linear"       # the paper's linear betas, cosine, or flow (recipes_flow.py)
    seed: int = 0                  # data order, noise and initialisation
    peer: bool = False             # denoising-diffusion-pytorch's defaults instead of ddpm_lib


PAPER = Run("paper: eps, uniform")
STAGE_1 = (PAPER, replace(PAPER, seed=1), Run("v, min-SNR", "v", "min-snr"), Run("x0, min-SNR", "x0", "min-snr"),
           Run("eps, min-SNR", "eps", "min-snr"), Run("denoising-diffusion-pytorch defaults", "v", peer=True))


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from ddpm_lib.data import load_image_folder

    if not (DATA / split).is_dir():
        raise SystemExit(f"{DATA / split} not found: run `make data/cifar10-jpeg` (it extracts ../shared's JPEG copy)")
    loaded = load_image_folder(DATA / split, size=32)
    return loaded.images, loaded.labels


def _tag(run: Run) -> str:
    return f"{run.name}-seed{run.seed}".replace(" ", "").replace(":", "").replace(",", "_")


# ----------------------------------------------------------------------------- training, in worker processes

class _Ours:
    """ddpm_lib's Trainer on the tiny net with the quick win's optimiser settings and this run's objective."""

    def __init__(self, run: Run):
        from ddpm_lib.recipes import RECIPES
        from ddpm_lib.train import Trainer
        from ddpm_lib.unet import unet_from_preset

        torch.manual_seed(run.seed)
        model = unet_from_preset("tiny")
        config = replace(RECIPES["quick-win"].train, seed=run.seed, out_dir=None, sample_every=0, checkpoint_every=0,
                         progress=False)
        self.trainer = Trainer(model, _schedule(run), config, _objective(run), device="cpu")

    @property
    def step(self) -> int:
        return self.trainer.step

    def fit(self, images, total: int) -> None:
        self.trainer.fit(images, train_steps=total)

    def ema_state(self) -> dict:
        return self.trainer.ema.state_dict()


class _Peer:
    """denoising-diffusion-pytorch's GaussianDiffusion with its defaults, trained as its Trainer does (batch 16,
    Adam lr 1e-4 betas (0.9, 0.99), gradient norm clipped to 1, ema_pytorch EMA 0.995 every 10 steps, flips)."""

    def __init__(self, run: Run):
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet
        from ema_pytorch import EMA

        torch.manual_seed(run.seed)
        self.diffusion = GaussianDiffusion(Unet(**PEER_NET), image_size=32, timesteps=1000)  # pred_v, sigmoid betas
        self.opt = torch.optim.Adam(self.diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
        self.ema = EMA(self.diffusion, beta=0.995, update_every=10)
        self.step, self.seed, self.batches = 0, run.seed, None

    def fit(self, images, total: int) -> None:
        from ddpm_lib.data import DeviceBatches

        self.batches = self.batches or DeviceBatches(images, 16, seed=self.seed)  # the same flips and shuffling
        while self.step < total:
            loss = self.diffusion((self.batches.batch(self.step) + 1) / 2)  # it takes [0, 1] and normalises itself
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.diffusion.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.ema.update()
            self.step += 1

    def ema_state(self) -> dict:
        return copy.deepcopy(self.ema.ema_model.state_dict())


def _objective(run: Run):
    """What the run's network predicts and its loss weighting (min-SNR's gamma: 5)."""
    from ddpm_lib.objective import Objective

    return Objective(prediction=run.prediction, weighting=run.weighting)


def _schedule(run: Run):
    from ddpm_lib.schedule import NoiseSchedule

    return {"linear": NoiseSchedule.paper, "cosine": NoiseSchedule.cosine, "flow": NoiseSchedule.flow}[run.schedule]()


def _cached(path: Path, settings: dict, compute):
    """What a run with these settings stored at `path` (an interrupted benchmark goes on from there), else
    compute() stored there with them."""
    settings = json.loads(json.dumps(settings))  # as stored: tuples as lists
    if path.exists():
        stored = json.loads(path.read_text())
        if stored["settings"] == settings:
            return stored["result"]
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "result": result}, indent=1) + "\n")
    return result


def train(run: Run, minutes: float, work: Path) -> dict:
    """`run` trained for BUDGETS x minutes of its process's CPU time, its EMA weights kept at each budget (or
    what an interrupted benchmark kept of it)."""
    result = _cached(work / _tag(run) / "trained.json", {"run": asdict(run), "minutes": minutes,
                                                         "budgets": BUDGETS}, lambda: _train(run, minutes, work))
    return {**result, "kept": {float(f): kept for f, kept in result["kept"].items()}}  # JSON keys are strings


def _train(run: Run, minutes: float, work: Path) -> dict:
    torch.set_num_threads(1)
    images, _ = load_split("train")
    trainer = (_Peer if run.peer else _Ours)(run)
    kept, start = {}, time.process_time()
    for fraction in BUDGETS:
        while time.process_time() - start < fraction * minutes * 60:
            trainer.fit(images, trainer.step + 10)  # 10 steps at a time: the budget is overshot by < 10 steps
        path = work / _tag(run) / f"ema_{fraction:g}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(trainer.ema_state(), path)
        kept[fraction] = {"path": str(path.relative_to(work)), "step": trainer.step,
                          "cpu_s": round(time.process_time() - start, 1)}
        print(f"{run.name} (seed {run.seed}): {fraction * minutes:g} CPU-min, {trainer.step} steps", flush=True)
    return {"run": asdict(run), "kept": kept}


# ----------------------------------------------------------------------------- sampling and scoring

class _PeerAsModel(torch.nn.Module):
    """The peer's Unet as a network of (x_t, t) with a UNetConfig for generate_images to read the image shape from
    (3 channels, 32x32; none of its other fields describe the peer's network). What it predicts (v) is the
    objective of its denoiser (_peer_denoiser)."""

    def __init__(self, unet):
        from ddpm_lib.unet import UNetConfig

        super().__init__()
        self.unet = unet
        self.config = UNetConfig(image_size=32)  # read for the image shape only: 3 channels, 32x32

    def forward(self, x_t, t):
        return self.unet(x_t, t)


def _peer_denoiser(unet, schedule):
    """The peer's Unet with its schedule, as ddpm_lib's denoiser of a v-predicting network."""
    from ddpm_lib.objective import Denoiser, Objective

    return Denoiser(_PeerAsModel(unet), schedule, Objective(prediction="v"))


def sample_and_score(result: dict, fraction: float, n: int, sample_steps: int, work: Path) -> dict:
    """The scores of `result`'s EMA weights at `fraction` of the budget (or what an interrupted benchmark scored)."""
    settings = {"run": result["run"], "kept": result["kept"][fraction], "n": n, "sample_steps": sample_steps}
    return _cached(work / _tag(Run(**result["run"])) / f"scores_{fraction:g}.json", settings,
                   lambda: _sample_and_score(result, fraction, n, sample_steps, work))


def _sample_and_score(result: dict, fraction: float, n: int, sample_steps: int, work: Path) -> dict:
    from cifar_scores import score

    from ddpm_lib.classifier import features_and_probabilities, load_cifar10_classifier
    from ddpm_lib.objective import Denoiser
    from ddpm_lib.samplers import generate_images
    from ddpm_lib.schedule import NoiseSchedule
    from ddpm_lib.unet import unet_from_preset
    from ddpm_lib.utils import to_uint8

    torch.set_num_threads(1)
    run, kept = Run(**result["run"]), result["kept"][fraction]
    state = torch.load(work / kept["path"], weights_only=True)
    classifier = load_cifar10_classifier("cpu")
    real = torch.load(work / "test_features.pt", weights_only=True)
    samples = {}
    if run.peer:
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet

        diffusion = GaussianDiffusion(Unet(**PEER_NET), image_size=32, timesteps=1000, sampling_timesteps=sample_steps)
        diffusion.load_state_dict(state)
        diffusion.eval()
        schedule = NoiseSchedule(diffusion.betas.double().clamp(1e-12, 0.999))
        samples["DPM-Solver++"] = generate_images(_peer_denoiser(diffusion.model, schedule), n, sampler="dpm-solver",
                                                  sample_steps=sample_steps, seed=0)
        torch.manual_seed(0)
        with torch.no_grad():
            ddim = torch.cat([diffusion.sample(batch_size=min(250, n - i)) for i in range(0, n, 250)])
        samples["its DDIM"] = to_uint8(ddim * 2 - 1)
    else:
        model = unet_from_preset("tiny")
        model.load_state_dict(state)
        samples["DPM-Solver++"] = generate_images(Denoiser(model, _schedule(run), _objective(run)), n,
                                                  sampler="dpm-solver", sample_steps=sample_steps, seed=0)
    scored = {}
    for sampler, images in samples.items():
        feats, probs = features_and_probabilities(classifier, images)
        scored[sampler] = score(feats, probs, real)
        torch.save(images[:64].clone(), (work / kept["path"]).with_name(f"samples_{fraction:g}_{sampler[:3]}.pt"))
    return {"tag": _tag(run), "fraction": fraction, "scores": scored}


# ----------------------------------------------------------------------------- the benchmark

def _pool():
    return ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn"))  # two 1-thread runs on two cores


def _stage(runs, args, results: dict) -> None:
    """Train `runs` two at a time, then score every kept budget of each; results[tag] = {"run", "kept", "scores"}."""
    with _pool() as pool:
        trained = list(pool.map(train, runs, [args.minutes] * len(runs), [args.work] * len(runs)))
        jobs = [(r, f) for r in trained for f in BUDGETS]
        k = len(jobs)
        scored = list(pool.map(sample_and_score, [r for r, _ in jobs], [f for _, f in jobs], [args.n] * k,
                               [args.sample_steps] * k, [args.work] * k))
    for r in trained:
        results[_tag(Run(**r["run"]))] = {**r, "scores": {}}
    for s in scored:
        results[s["tag"]]["scores"][s["fraction"]] = s["scores"]


def _fid_at(results: dict, run: Run, fraction: float) -> float:
    """Mean DPM-Solver++ FID over the seeds of `run`'s recipe at a budget."""
    values = [r["scores"][fraction]["DPM-Solver++"]["fid"] for r in results.values()
              if {**r["run"], "seed": 0} == {**asdict(run), "seed": 0}]
    return sum(values) / len(values)


def benchmark(args) -> None:
    from machine import machine

    from ddpm_lib.classifier import CLASSIFIER_WEIGHTS, features_and_probabilities, load_cifar10_classifier
    from ddpm_lib.shipped import read_card

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    start, measured_on = time.perf_counter(), machine()
    card = read_card(CLASSIFIER_WEIGHTS)
    print(f"classifier: test accuracy {card['test_accuracy']:.3f}", flush=True)
    test_images = load_split("test")[0]
    torch.save(features_and_probabilities(load_cifar10_classifier("cpu"), test_images)[0],
               args.work / "test_features.pt")
    del test_images
    results: dict = {}
    first = [r for r in STAGE_1 if not (args.quick and r.seed)]
    _stage(first, args, results)
    candidates = [r for r in first if not r.peer and r != PAPER and r.seed == 0]
    best = min(candidates, key=lambda r: _fid_at(results, r, 1.0))
    cosine = replace(best, name=f"{best.name}, cosine", schedule="cosine")
    _stage([cosine] + ([] if args.quick else [replace(best, seed=1)]), args, results)
    if not args.quick and _fid_at(results, cosine, 1.0) < _fid_at(results, best, 1.0):
        _stage([replace(cosine, seed=1)], args, results)
    summary = {"measured_on": measured_on, "minutes": args.minutes, "budgets": BUDGETS, "n": args.n,
               "sample_steps": args.sample_steps, "classifier_test_accuracy": card["test_accuracy"],
               "classifier_epochs": card["epochs"], "wall_minutes": round((time.perf_counter() - start) / 60, 1),
               "quick": args.quick, "note": args.note, "results": results}
    (out / "recipes.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_pictures(summary, out, args.work)
    write_table(out)


# ----------------------------------------------------------------------------- the table and the pictures

def _recipes(results: dict) -> dict:
    """{recipe name: [results of its seeds]} in the order the runs were made."""
    grouped: dict = {}
    for r in results.values():
        grouped.setdefault(r["run"]["name"], []).append(r)
    return grouped


def write_pictures(summary: dict, out: Path, work: Path) -> None:
    """FID against CPU-minutes for every recipe (seed means), and 64 samples of each recipe's first seed at the
    largest budget."""
    from matplotlib.figure import Figure
    from torchvision.utils import make_grid, save_image

    minutes = [f * summary["minutes"] for f in summary["budgets"]]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, rs in _recipes(summary["results"]).items():
        for sampler in rs[0]["scores"][1.0]:
            fids = [sum(r["scores"][f][sampler]["fid"] for r in rs) / len(rs) for f in summary["budgets"]]
            ax.plot(minutes, fids, marker="o", label=name + ("" if sampler == "DPM-Solver++" else f" ({sampler})"))
        grid = torch.load((work / rs[0]["kept"][1.0]["path"]).with_name("samples_1_DPM.pt"), weights_only=True)
        save_image(make_grid(grid.float() / 255, nrow=8, padding=1), out / f"samples_{_tag(Run(**rs[0]['run']))}.png")
    ax.set(xlabel="CPU-minutes of training (one core)", ylabel="FID (classifier features)", xticks=minutes)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fid_minutes.png", dpi=120)


def _cell(values: list, stds: list, digits: int = 1, scale: float = 1.0) -> str:
    """One seed: value +- its own spread (bootstrap or subsets); several: mean and the seeds' range."""
    values = [v * scale for v in values]
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f} ± {stds[0] * scale:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _minutes_to(fids: list, minutes: list, target: float) -> float | None:
    """The first budget (linear between the kept ones) at which the FID curve reaches `target`; None: never
    (the first budget itself when it is already there: then it took at most that long)."""
    if fids[0] <= target:
        return minutes[0]
    for (m0, f0), (m1, f1) in zip(zip(minutes, fids), zip(minutes[1:], fids[1:])):
        if f1 <= target:
            return m0 + (m1 - m0) * (f0 - target) / (f0 - f1)
    return None


def write_table(out: Path) -> None:
    summary = json.loads((out / "recipes.json").read_text())
    budgets = [str(float(f)) for f in summary["budgets"]]  # JSON's keys of the kept budgets
    minutes = [float(f) * summary["minutes"] for f in summary["budgets"]]
    grouped = _recipes(summary["results"])
    mean_fid = {name: [sum(r["scores"][b]["DPM-Solver++"]["fid"] for r in rs) / len(rs) for b in budgets]
                for name, rs in grouped.items()}
    target = mean_fid[PAPER.name][-1]
    head = " | ".join(f"FID at {m:g}" for m in minutes)
    lines = [f"| recipe | seeds | steps in {minutes[-1]:g} CPU-min | sampler | {head} | KID x 1e3 | IS-form | "
             f"CPU-min to the paper recipe's {minutes[-1]:g}-min FID | speed-up |",
             "|---|---:|---:|---|" + "---:|" * (len(minutes) + 4)]
    for name, rs in grouped.items():
        for sampler in rs[0]["scores"][budgets[-1]]:
            cells = [_cell([r["scores"][b][sampler]["fid"] for r in rs], [r["scores"][b][sampler]["fid_std"]
                                                                          for r in rs]) for b in budgets]
            last = [r["scores"][budgets[-1]][sampler] for r in rs]
            fids = [sum(r["scores"][b][sampler]["fid"] for r in rs) / len(rs) for b in budgets]
            reach = _minutes_to(fids, minutes, target)
            at_most = "≤ " if reach == minutes[0] and fids[0] < target else ""
            speed_up = "< 1x" if reach is None else ("≥ " if at_most else "") + f"{minutes[-1] / reach:.1f}x"
            lines.append(f"| {name} | {len(rs)} | {sum(r['kept'][budgets[-1]]['step'] for r in rs) // len(rs):,} | "
                         f"{sampler} | {' | '.join(cells)} | "
                         f"{_cell([s['kid'] for s in last], [s['kid_std'] for s in last], 2, 1e3)} | "
                         f"{_cell([s['is'] for s in last], [s['is_std'] for s in last], 2)} | "
                         f"{'> %g' % minutes[-1] if reach is None else at_most + '%.2g' % reach} | "
                         f"{speed_up} |")
    quick = " --quick" if summary["quick"] else ""
    command = (f"python benchmarks/recipes.py{quick} --minutes {summary['minutes']:g} --n {summary['n']} "
               f"--sample-steps {summary['sample_steps']}")
    note = f" {summary['note']}" if summary.get("note") else ""
    text = [f"# Training recipes side by side: real CIFAR-10, equal CPU budgets{quick}",
            "", f"Measured on {summary['measured_on']}; the whole run took {summary['wall_minutes']} minutes "
            f"(`{command}`).{note} Budgets are each run's own CPU time, so the steps a budget buys do not depend on "
            "what else runs on the machine; the wall time does.", "",
            f"Each run: {minutes[-1]:g} minutes of one core's CPU time (two runs at a time on the two cores), the tiny "
            f"network, scored at {', '.join(f'{m:g}' for m in minutes)} CPU-minutes from the EMA weights kept then. "
            f"{summary['n']:,} samples per score, {summary['sample_steps']} sample steps, against the 10,000 test "
            f"images, in the features of the small CIFAR-10 classifier that ships with ddpm_lib (ddpm_lib.classifier; "
            f"{summary['classifier_epochs']} epochs; test accuracy {summary['classifier_test_accuracy']:.1%}). "
            "FID and KID: lower is better; the IS-form score: higher is better. One seed: ± the bootstrap (FID) "
            "or subset (KID) or split (IS) spread; two seeds: their mean and range.", "", *lines, "",
            "![FID against CPU-minutes](fid_minutes.png)", "",
            f"Samples at {minutes[-1]:g} CPU-minutes (first seed, DPM-Solver++, {summary['sample_steps']} sample "
            f"steps):", "",
            *[f"**{name}**\n\n![{name}](samples_{_tag(Run(**rs[0]['run']))}.png)\n"
              for name, rs in _recipes(summary["results"]).items()]]
    (out / "recipes.md").write_text("\n".join(text))
    print("\n".join(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="run", choices=("run", "table", "flow", "flow-table"),
                        help="run: the recipes; flow: flow matching against their winner (recipes_flow.py); "
                        "table, flow-table: their pages again from the stored JSON")
    parser.add_argument("--quick", action="store_true", help="a first look: 1 CPU-minute per run, 256 samples, 1 seed")
    parser.add_argument("--minutes", type=float, help="CPU-minutes per run (default 10; --quick 1)")
    parser.add_argument("--n", type=int, help="samples per score (default 1,000; --quick 256)")
    parser.add_argument("--sample-steps", type=int, default=20, help="DPM-Solver++ / DDIM model evaluations per sample")
    parser.add_argument("--out", type=Path, help="results folder (default docs/recipes; --quick: docs/recipes/quick)")
    parser.add_argument("--n-sweep", type=int, help="flow: samples per score of the model-evaluation sweep "
                        "(default 500; --quick 128)")
    parser.add_argument("--note", help="a sentence on the conditions of the run (what else ran), kept in recipes.json "
                        "(flow.json) and printed above the table; with `table` (`flow-table`), replaces the stored one")
    args = parser.parse_args()
    args.minutes = args.minutes or (1.0 if args.quick else 10.0)
    args.n = args.n or (256 if args.quick else 1000)
    args.n_sweep = args.n_sweep or (128 if args.quick else 500)
    args.out = args.out or (DOCS / "quick" if args.quick else DOCS)
    args.work = WORK / "quick" if args.quick else WORK
    if args.minutes <= 0 or args.n < 20 or args.sample_steps < 1:
        parser.error("--minutes must be > 0, --n >= 20 and --sample-steps >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.what in ("table", "flow-table") and args.note is not None:
        path = args.out / ("recipes.json" if args.what == "table" else "flow.json")
        path.write_text(json.dumps({**json.loads(path.read_text()), "note": args.note}, indent=1) + "\n")
    if args.what in ("flow", "flow-table"):
        from recipes_flow import benchmark_flow, write_flow_table

        benchmark_flow(args) if args.what == "flow" else write_flow_table(args.out)
    elif args.what == "table":
        write_table(args.out)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
