"""The recipe benchmark's flow stage: flow matching against the winner of docs/recipes/recipes.md (x0-prediction,
min-SNR-5, cosine betas) at equal CPU budgets, and sample quality against model evaluations (run by recipes.py).

    python benchmarks/recipes.py flow           # docs/recipes/flow.md, flow.json and its pictures
    python benchmarks/recipes.py flow --quick   # a first look: 1 CPU-minute per run, few samples, one seed
    python benchmarks/recipes.py flow-table     # docs/recipes/flow.md again from flow.json (no training)

Both recipes train side by side in one run of this script, as recipes.py trains its runs (the tiny network, the same
initialisation, data and optimiser settings, two seeds, each 10 minutes of one core's CPU time with its EMA weights
kept at 2.5, 5 and 10), and are scored the same way (DPM-Solver++(2M), 20 model evaluations, 1,000 samples against
the 10,000 test images in the shipped classifier's features). Flow matching: the straight path z_s = (1 - s) x0 + s
eps with s uniform on the grid (t + 1) / T (NoiseSchedule.flow), the velocity u = eps - x0 as the target, uniform
weights (Objective(prediction="flow")). Then the 10-minute EMA weights of each recipe's first seed are sampled with
DPM-Solver++, Euler and Heun at 5, 10 and 20 model evaluations (500 samples each).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from recipes import BUDGETS, Run, _cached, _cell, _pool, _recipes, _stage, _tag, load_split

WINNER = Run("x0, min-SNR, cosine", "x0", "min-snr", "cosine")
FLOW = Run("flow matching", "flow", "uniform", "flow")
SWEEP_SAMPLERS = {"dpm-solver": "DPM-Solver++", "euler": "Euler", "heun": "Heun"}  # registry name -> table name
SWEEP_NFE = (5, 10, 20)  # model evaluations per sample in the sweep


def sweep_score(result: dict, sampler: str, nfe: int, n: int, work: Path) -> dict:
    """The scores of `result`'s last EMA weights sampled by `sampler` with `nfe` model evaluations (cached)."""
    settings = {"run": result["run"], "kept": result["kept"][1.0], "sampler": sampler, "nfe": nfe, "n": n}
    return _cached(work / _tag(Run(**result["run"])) / f"sweep_{sampler}_{nfe}.json", settings,
                   lambda: _sweep_score(result, sampler, nfe, n, work))


def _sweep_score(result: dict, sampler: str, nfe: int, n: int, work: Path) -> dict:
    from cifar_scores import score
    from recipes import _objective, _schedule

    from ddpm_lib.classifier import features_and_probabilities, load_cifar10_classifier
    from ddpm_lib.objective import Denoiser
    from ddpm_lib.samplers import generate_images
    from ddpm_lib.unet import unet_from_preset

    torch.set_num_threads(1)
    run = Run(**result["run"])
    model = unet_from_preset("tiny")
    model.load_state_dict(torch.load(work / result["kept"][1.0]["path"], weights_only=True))
    images = generate_images(Denoiser(model, _schedule(run), _objective(run)), n, sampler=sampler,
                             sample_steps=nfe, seed=0)
    feats, probs = features_and_probabilities(load_cifar10_classifier("cpu"), images)
    return {"tag": _tag(run), "sampler": sampler, "nfe": nfe,
            "scores": score(feats, probs, torch.load(work / "test_features.pt", weights_only=True))}


def benchmark_flow(args) -> None:
    from machine import machine

    from ddpm_lib.classifier import CLASSIFIER_WEIGHTS, features_and_probabilities, load_cifar10_classifier
    from ddpm_lib.shipped import read_card

    out, work = args.out, args.work
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    start, measured_on = time.perf_counter(), machine()
    card = read_card(CLASSIFIER_WEIGHTS)
    if not (work / "test_features.pt").exists():
        torch.save(features_and_probabilities(load_cifar10_classifier("cpu"), load_split("test")[0])[0],
                   work / "test_features.pt")
    seeds = (0,) if args.quick else (0, 1)
    runs = [Run(**{**r.__dict__, "seed": s}) for s in seeds for r in (WINNER, FLOW)]
    results: dict = {}
    _stage(runs, args, results)
    firsts = [results[_tag(r)] for r in runs if r.seed == 0]
    nfes = SWEEP_NFE[:2] if args.quick else SWEEP_NFE
    jobs = [(r, sampler, nfe) for r in firsts for sampler in SWEEP_SAMPLERS for nfe in nfes]
    with _pool() as pool:
        swept = list(pool.map(sweep_score, *zip(*jobs), [args.n_sweep] * len(jobs), [work] * len(jobs)))
    summary = {"measured_on": measured_on, "minutes": args.minutes, "budgets": BUDGETS, "n": args.n,
               "sample_steps": args.sample_steps, "n_sweep": args.n_sweep,
               "classifier_test_accuracy": card["test_accuracy"], "classifier_epochs": card["epochs"],
               "wall_minutes": round((time.perf_counter() - start) / 60, 1), "quick": args.quick,
               "results": results, "sweep": swept}
    (out / "flow.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_flow_pictures(summary, out, work)
    write_flow_table(out)


def write_flow_pictures(summary: dict, out: Path, work: Path) -> None:
    """FID against CPU-minutes (seed means) and against model evaluations, and 64 samples of each recipe's first
    seed at the largest budget."""
    from matplotlib.figure import Figure
    from torchvision.utils import make_grid, save_image

    minutes = [f * summary["minutes"] for f in summary["budgets"]]
    fig = Figure(figsize=(10, 3.8))
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, rs in _recipes(summary["results"]).items():
        fids = [sum(r["scores"][f]["DPM-Solver++"]["fid"] for r in rs) / len(rs) for f in summary["budgets"]]
        ax.plot(minutes, fids, marker="o", label=f"{name} ({len(rs)} seed{'s' * (len(rs) > 1)})")
        tag = _tag(Run(**rs[0]["run"]))
        grid = torch.load((work / rs[0]["kept"][1.0]["path"]).with_name("samples_1_DPM.pt"), weights_only=True)
        save_image(make_grid(grid.float() / 255, nrow=8, padding=1), out / f"flow_samples_{tag}.png")
        for sampler, label in SWEEP_SAMPLERS.items():
            points = sorted((s["nfe"], s["scores"]["fid"]) for s in summary["sweep"]
                            if s["tag"] == tag and s["sampler"] == sampler)
            bx.plot(*zip(*points), marker="o", label=f"{name}, {label}")
    ax.set(xlabel="CPU-minutes of training (one core)", ylabel="FID (classifier features)", xticks=minutes,
           title="DPM-Solver++, 20 evaluations")
    bx.set(xlabel="model evaluations per sample", ylabel="FID (classifier features)", xscale="log",
           title=f"after {minutes[-1]:g} CPU-minutes (first seed)")
    bx.set_xticks(sorted({s["nfe"] for s in summary["sweep"]}), [str(k) for k in sorted({s["nfe"] for s in
                                                                                           summary["sweep"]})])
    ax.legend(fontsize=7)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "flow_fid.png", dpi=120)


def _verdict(name_a: str, a: list, name_b: str, b: list) -> str:
    """Which recipe's FID is lower at one budget, from the seeds' values: a win only when every seed of one is
    below every seed of the other (with one seed each, when the gap exceeds twice the larger bootstrap spread)."""
    (lo_name, lo), (hi_name, hi) = sorted(((name_a, a), (name_b, b)), key=lambda p: sum(v for v, _ in p[1]))
    gap = sum(v for v, _ in hi) / len(hi) - sum(v for v, _ in lo) / len(lo)
    if len(lo) > 1 and len(hi) > 1:
        clear = max(v for v, _ in lo) < min(v for v, _ in hi)
    else:
        clear = gap > 2 * max(s for _, s in lo + hi)
    return (f"{lo_name} lower by {gap:.1f}" + ("" if clear else ", within the seeds' spread: a tie")
            if gap else "equal")


def write_flow_table(out: Path) -> None:
    summary = json.loads((out / "flow.json").read_text())
    budgets = [str(float(f)) for f in summary["budgets"]]
    minutes = [float(f) * summary["minutes"] for f in summary["budgets"]]
    grouped = _recipes(summary["results"])
    lines = [f"| recipe | seeds | steps in {minutes[-1]:g} CPU-min | "
             + " | ".join(f"FID at {m:g}" for m in minutes) + " | KID x 1e3 | IS-form |",
             "|---|---:|---:|" + "---:|" * (len(minutes) + 2)]
    for name, rs in grouped.items():
        last = [r["scores"][budgets[-1]]["DPM-Solver++"] for r in rs]
        cells = [_cell([r["scores"][b]["DPM-Solver++"]["fid"] for r in rs],
                       [r["scores"][b]["DPM-Solver++"]["fid_std"] for r in rs]) for b in budgets]
        lines.append(f"| {name} | {len(rs)} | {sum(r['kept'][budgets[-1]]['step'] for r in rs) // len(rs):,} | "
                     f"{' | '.join(cells)} | {_cell([s['kid'] for s in last], [s['kid_std'] for s in last], 2, 1e3)} | "
                     f"{_cell([s['is'] for s in last], [s['is_std'] for s in last], 2)} |")
    (a_name, a_runs), (b_name, b_runs) = list(grouped.items())[:2]
    verdicts = [f"at {m:g} CPU-minutes, " + _verdict(
        a_name, [(r["scores"][b]["DPM-Solver++"]["fid"], r["scores"][b]["DPM-Solver++"]["fid_std"]) for r in a_runs],
        b_name, [(r["scores"][b]["DPM-Solver++"]["fid"], r["scores"][b]["DPM-Solver++"]["fid_std"]) for r in b_runs])
        for m, b in zip(minutes, budgets)]
    nfes = sorted({s["nfe"] for s in summary["sweep"]})
    sweep = ["| recipe | sampler | " + " | ".join(f"FID at {k}" for k in nfes) + " |",
             "|---|---|" + "---:|" * len(nfes)]
    for name, rs in grouped.items():
        tag = _tag(Run(**rs[0]["run"]))
        for sampler, label in SWEEP_SAMPLERS.items():
            by_nfe = {s["nfe"]: s["scores"] for s in summary["sweep"] if s["tag"] == tag and s["sampler"] == sampler}
            sweep.append(f"| {name} | {label} | " + " | ".join(
                f"{by_nfe[k]['fid']:.1f} ± {by_nfe[k]['fid_std']:.1f}" for k in nfes) + " |")
    quick = " --quick" if summary["quick"] else ""
    note = f" {summary['note']}" if summary.get("note") else ""
    text = [f"# Flow matching against the recipe benchmark's winner{quick}", "",
            f"Measured side by side in one run on {summary['measured_on']}; the whole run took "
            f"{summary['wall_minutes']} minutes (`python benchmarks/recipes.py flow{quick} --minutes "
            f"{summary['minutes']:g} --n {summary['n']}`).{note} Budgets are each run's own CPU time (one core each, "
            "two runs at a time). How it is run and scored: the docstring of benchmarks/recipes_flow.py and "
            "[recipes.md](recipes.md).", "",
            f"Both recipes train the tiny network with the same optimiser settings; scored by DPM-Solver++(2M) with "
            f"{summary['sample_steps']} model evaluations, {summary['n']:,} samples against the 10,000 test images in "
            f"the shipped classifier's features ({summary['classifier_epochs']} epochs; test accuracy "
            f"{summary['classifier_test_accuracy']:.1%}). FID and KID: lower is better; IS-form: higher is better. "
            "One seed: ± the bootstrap spread; two seeds: their mean and range.", "", *lines, "",
            "Which is lower (a win only when every seed of one is below every seed of the other): "
            + "; ".join(verdicts) + ".", "",
            f"Quality against model evaluations, each recipe's first seed after {minutes[-1]:g} CPU-minutes, "
            f"{summary['n_sweep']:,} samples per cell (± the bootstrap spread):", "", *sweep, "",
            "![FID against CPU-minutes and against model evaluations](flow_fid.png)", "",
            f"Samples after {minutes[-1]:g} CPU-minutes (first seed, DPM-Solver++, {summary['sample_steps']} "
            "evaluations):", "",
            *[f"**{name}**\n\n![{name}](flow_samples_{_tag(Run(**rs[0]['run']))}.png)\n"
              for name, rs in grouped.items()]]
    (out / "flow.md").write_text("\n".join(text))
    print("\n".join(text))
