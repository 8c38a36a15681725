"""Classifier-free guidance on CIFAR-10, measured: how often a sample shows the class asked for, and what guidance
costs in sample quality (a benchmark, not a test).

    python benchmarks/guidance_cifar10.py                  # runs/cifar10-cond, scales 1 ... 6, 1,000 samples each
    python benchmarks/guidance_cifar10.py --ckpt shipped   # the model that ships with ddpm_lib (ddpm_lib.shipped)
    python benchmarks/guidance_cifar10.py --n 40 --scales 1,3 --out /tmp/guidance   # a first look
    python benchmarks/guidance_cifar10.py table            # OUT/guidance.md again from guidance.json

At each guidance scale s (ddpm_lib.guidance: s = 1 is the conditional model alone, a larger s pushes further
towards the class) the class-conditional model draws n samples with balanced labels (sample i asks for class
i % 10), every scale from the same noise (one seed). The small CIFAR-10 classifier that ships with the package
(ddpm_lib.classifier) then says which class each sample shows: the share assigned to the class asked for, with
its 95% Wilson interval, overall and per class. The classifier's accuracy on the 10,000 real test images is what
real photographs score (strongly guided samples can score higher: guidance draws what is typical of a class),
chance (1 in 10) the floor. Sample quality: FID, KID and the Inception-Score-form score in
the classifier's 256-d features against the test images (benchmarks/cifar_scores.py), and n real training images
scored the same way: what a perfect model would reach at this n. Writes OUT/guidance.md (the tables),
guidance.json (the numbers), scales.png (share and FID against s) and grid.png (samples at the scale of lowest
FID, one row per class).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from statistics import NormalDist

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = ROOT / "data" / "cifar10-jpeg"
Z95 = NormalDist().inv_cdf(0.975)   # 1.959963984540054: the z of a 95% interval
CHANCE = 0.1                        # one class in ten


def parse_scales(text: str) -> list[float]:
    """'1,1.5,2' -> [1.0, 1.5, 2.0]: distinct finite guidance scales >= 0 (0: the unconditional model)."""
    try:
        scales = [float(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas (1,1.5,2), got {text!r}") from None
    if not all(0 <= s < float("inf") for s in scales) or len(set(scales)) != len(scales):
        raise argparse.ArgumentTypeError(f"expected distinct finite scales >= 0, got {text!r}")
    return scales


def load_generator(ckpt: str, device) -> tuple:
    """(the denoiser of its EMA UNet, what it is: checkpoint, step, recipe, training minutes, class names) of a
    checkpoint file or run folder, or of "shipped": the package's model. Only the shipped model's card records its
    training minutes (a checkpoint does not: None)."""
    from ddpm_lib.checkpoint import load_model, read_checkpoint, resolve_checkpoint
    from ddpm_lib.record import data_info_of
    from ddpm_lib.shipped import SHIPPED_MODEL, load_shipped_model

    if ckpt == "shipped":
        denoiser, card = load_shipped_model(device=device)
        path, minutes = SHIPPED_MODEL, card.get("train_minutes")
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        path, minutes = resolve_checkpoint(ckpt), None
        denoiser = load_model(path, device=device)
        state = read_checkpoint(path)
    num_classes = denoiser.net.config.num_classes
    if num_classes != 10:
        raise ValueError(f"--ckpt {ckpt}: expected a class-conditional CIFAR-10 model (10 classes), got one with "
                         f"num_classes={num_classes}")
    info = data_info_of(state, path)
    return denoiser, {"checkpoint": ckpt, "step": state["step"], "recipe": state["train_config"].get("recipe"),
                      "train_minutes": minutes, "class_names": info.class_names if info else None}


def _shown(path: Path) -> str:
    """A path as the repository's own (data/cifar10-jpeg) when it lies inside it, else as given."""
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def share(hits: torch.Tensor) -> dict:
    """k hits of n with the share's 95% Wilson interval."""
    from ddpm_lib.metrics import wilson_interval

    k, n = int(hits.sum()), len(hits)
    low, high = wilson_interval(k, n, z=Z95)
    return {"k": k, "n": n, "share": k / n, "low": low, "high": high}


def measure(images: torch.Tensor, labels: torch.Tensor, classifier, real_feats: torch.Tensor, seed: int) -> dict:
    """The share of images the classifier assigns to their label (overall and per class), FID, KID and IS-form."""
    from cifar_scores import score

    from ddpm_lib.classifier import features_and_probabilities

    feats, probs = features_and_probabilities(classifier, images)
    hits = probs.argmax(1) == labels
    return {**score(feats, probs, real_feats, seed=seed), **share(hits),
            "per_class": [share(hits[labels == c]) for c in range(probs.shape[1])]}


def benchmark(args) -> None:
    from machine import machine

    from ddpm_lib.classifier import CLASSIFIER_WEIGHTS, features_and_probabilities, load_cifar10_classifier
    from ddpm_lib.data import load_image_folder
    from ddpm_lib.samplers import generate_images
    from ddpm_lib.shipped import read_card
    from ddpm_lib.utils import default_device

    device = torch.device(args.device) if args.device else default_device()
    start, measured_on = time.perf_counter(), machine(device)
    denoiser, about = load_generator(args.ckpt, device)
    test, train = (load_image_folder(args.data / split, size=32) for split in ("test", "train"))
    if about["class_names"] is not None and list(about["class_names"]) != list(test.info.class_names):
        raise ValueError(f"the model's classes {about['class_names']} are not the test folder's "
                         f"{test.info.class_names}: the shares would compare the wrong labels")
    classifier = load_cifar10_classifier(device)
    real_feats, real_probs = features_and_probabilities(classifier, test.images)
    real_hits = real_probs.argmax(1) == test.labels
    ceiling = {**share(real_hits), "per_class": [share(real_hits[test.labels == c]) for c in range(10)]}
    real_train = measure(train.images[:args.n], train.labels[:args.n], classifier, real_feats, args.seed)  # balanced
    del train
    labels = torch.arange(args.n) % 10
    results, best_images = [], None
    for s in args.scales:
        t0 = time.perf_counter()
        images = generate_images(denoiser, args.n, sampler=args.sampler, sample_steps=args.sample_steps,
                                 batch_size=args.batch_size, seed=args.seed, y=labels, guidance_scale=s, device=device,
                                 progress=args.progress)
        seconds = time.perf_counter() - t0
        results.append({"scale": s, "seconds": seconds, **measure(images, labels, classifier, real_feats, args.seed)})
        r = results[-1]
        print(f"s = {s:g}: share {r['share']:.1%} ({r['low']:.1%}-{r['high']:.1%}), FID {r['fid']:.2f}, "
              f"KID {r['kid']:.4f}, IS-form {r['is']:.2f} ({seconds / args.n:.2f} s a sample)", flush=True)
        if r["fid"] == min(x["fid"] for x in results):
            best_images = images
    command = shlex.join(["python", "benchmarks/guidance_cifar10.py", *sys.argv[1:]])
    summary = {"measured_on": measured_on, "command": command, "model": about, "n": args.n, "sampler": args.sampler,
               "sample_steps": args.sample_steps, "seed": args.seed, "batch_size": args.batch_size,
               "reference": f"{len(test.images):,} test images ({_shown(args.data)}/test)",
               "classifier": {"sha256": read_card(CLASSIFIER_WEIGHTS)["sha256"], **ceiling},
               "chance": CHANCE, "class_names": list(test.info.class_names), "real_train": real_train,
               "scales": results, "best_scale": min(results, key=lambda r: r["fid"])["scale"],
               "wall_minutes": round((time.perf_counter() - start) / 60, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guidance.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_pictures(summary, best_images, labels, args.out)
    write_table(args.out)


def write_pictures(summary: dict, images: torch.Tensor, labels: torch.Tensor, out: Path) -> None:
    """scales.png: the share (95% intervals, the ceiling and chance) and FID against s; grid.png: up to ten samples
    of each class at the scale of lowest FID, one row per class, the class names on the left."""
    from matplotlib.figure import Figure
    from torchvision.utils import make_grid

    rs, ceiling = summary["scales"], summary["classifier"]["share"]
    scales = [r["scale"] for r in rs]
    fig = Figure(figsize=(9, 3.6))
    ax, ax_fid = fig.subplots(1, 2)
    ax.errorbar(scales, [r["share"] for r in rs], yerr=[[r["share"] - r["low"] for r in rs],
                                                        [r["high"] - r["share"] for r in rs]], marker="o", capsize=3,
                label="samples of the class asked for")
    ax.axhline(ceiling, ls="--", c="gray", label=f"real test images ({ceiling:.1%})")
    ax.axhline(summary["chance"], ls=":", c="gray", label=f"chance ({summary['chance']:.0%})")
    ax.set(xlabel="guidance scale s", ylabel="share (95% Wilson interval)", ylim=(0, 1.05), xticks=scales)
    ax.legend(fontsize=7, loc="best")
    ax_fid.errorbar(scales, [r["fid"] for r in rs], yerr=[r["fid_std"] for r in rs], marker="o", capsize=3)
    ax_fid.axhline(summary["real_train"]["fid"], ls="--", c="gray", label=f"{summary['n']:,} real training images")
    ax_fid.set(xlabel="guidance scale s", ylabel="FID (classifier features)", xticks=scales)
    ax_fid.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scales.png", dpi=120)

    cols = min(10, summary["n"] // 10)
    rows = torch.cat([images[labels == c][:cols] for c in range(10)])                 # (10 cols, 3, 32, 32)
    grid = make_grid(rows, nrow=cols, padding=2, pad_value=255).permute(1, 2, 0)       # (H, W, 3) uint8
    fig = Figure(figsize=(1.6 + 0.45 * cols, 4.8))
    ax = fig.add_subplot()
    ax.imshow(grid.numpy())
    ax.set_yticks([2 + 16 + 34 * c for c in range(10)], summary["class_names"])
    ax.set_xticks([])
    ax.tick_params(length=0)
    ax.set_frame_on(False)
    ax.set_title(f"s = {summary['best_scale']:g} (lowest FID)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "grid.png", dpi=120)


def _share(r: dict) -> str:
    return f"{r['share']:.1%} [{r['low']:.1%}, {r['high']:.1%}]"


def write_table(out: Path) -> None:
    summary = json.loads((out / "guidance.json").read_text())
    m, rs, real = summary["model"], summary["scales"], summary["real_train"]
    trained = f", about {m['train_minutes']:g} minutes of training" if m["train_minutes"] is not None else ""
    rows = [f"| {r['scale']:g} | {_share(r)} | {r['fid']:.2f} ± {r['fid_std']:.2f} | "
            f"{r['kid'] * 1e3:.2f} ± {r['kid_std'] * 1e3:.2f} | {r['is']:.2f} ± {r['is_std']:.2f} | "
            f"{r['seconds'] / r['n']:.2f} |" for r in rs]
    per_class = [f"| {name} | {summary['classifier']['per_class'][c]['share']:.0%} | "
                 + " | ".join(f"{r['per_class'][c]['share']:.0%}" for r in rs) + " |"
                 for c, name in enumerate(summary["class_names"])]
    text = [
        "# Classifier-free guidance on CIFAR-10: the class asked for, and what it costs", "",
        f"Measured on {summary['measured_on']}; the whole run took {summary['wall_minutes']} minutes "
        f"(`{summary['command']}`).", "",
        f"Model: `{m['checkpoint']}`, EMA weights at step {m['step']:,} (recipe {m['recipe']}{trained}). "
        f"{summary['n']:,} samples per scale, sample i asking for class i % 10 ({summary['n'] // 10} per class), "
        f"{summary['sampler']} with {summary['sample_steps']} sample steps, seed {summary['seed']} "
        f"(batch {summary['batch_size']}): "
        "every scale starts from the same noise.", "",
        f"Share: the samples that the small CIFAR-10 classifier shipped with ddpm_lib (`ddpm_lib.classifier`) "
        f"assigns to the class asked for, with its 95% Wilson interval. Real photographs score that classifier's "
        f"accuracy on the {summary['reference']}: {_share(summary['classifier'])}; strongly guided samples can "
        "score higher, since guidance draws what is typical of a class, which is easier to recognise than a "
        f"photograph and is not the same as a better image. Chance is {summary['chance']:.0%}. "
        "FID, KID and the IS-form score are computed in the same classifier's 256-d features against those test "
        "images (benchmarks/cifar_scores.py; FID ± the spread of 10 bootstrap resamples, KID ± its subsets', IS ± its "
        "splits'); they compare models scored by this classifier and are not the papers' Inception FIDs. FID and "
        "KID: lower is better; the IS-form score: higher is better. The last row scores "
        f"{summary['n']:,} real training images the same way: what a perfect model would reach at this n.", "",
        "| guidance scale s | share of the class asked for [95% CI] | FID | KID × 1e3 | IS-form | seconds a sample |",
        "|---:|---|---:|---:|---:|---:|", *rows,
        f"| real training images | {_share(real)} | {real['fid']:.2f} ± {real['fid_std']:.2f} | "
        f"{real['kid'] * 1e3:.2f} ± {real['kid_std'] * 1e3:.2f} | {real['is']:.2f} ± {real['is_std']:.2f} | |", "",
        f"Per class ({summary['n'] // 10} samples each; the classifier's accuracy on the real test images of the "
        "class first):", "",
        "| class | real test images | " + " | ".join(f"s = {r['scale']:g}" for r in rs) + " |",
        "|---|---:|" + "---:|" * len(rs), *per_class, "",
        "![share and FID against the guidance scale](scales.png)", "",
        f"Samples at s = {summary['best_scale']:g}, the scale of lowest FID (one row per class asked for):", "",
        "![samples, one row per class](grid.png)", ""]
    (out / "guidance.md").write_text("\n".join(text))
    print("\n".join(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", default="run", choices=("run", "table"))
    parser.add_argument("--ckpt", default="runs/cifar10-cond",
                        help="a class-conditional checkpoint file or run folder, or 'shipped' (the package's model)")
    parser.add_argument("--scales", type=parse_scales, default=parse_scales("1,1.5,2,3,4,6"),
                        help="guidance scales, separated by commas (default 1,1.5,2,3,4,6)")
    parser.add_argument("--n", type=int, default=1000, help="samples per scale (default 1,000; at least 20)")
    parser.add_argument("--sampler", default="dpm-solver", help="a ddpm_lib sampler (default dpm-solver: DPM-Solver++)")
    parser.add_argument("--sample-steps", type=int, default=20, help="the sampler's model evaluations (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="the noise of every scale (default 0)")
    parser.add_argument("--batch-size", type=int, default=250, help="samples drawn at a time (default 250)")
    parser.add_argument("--device", help="where to sample and classify (default: CUDA, MPS, else the CPU)")
    parser.add_argument("--data", type=Path, default=DATA, help="CIFAR-10 as test/ and train/ image folders with a "
                        "sub-folder per class (default data/cifar10-jpeg: `make data/cifar10-jpeg`)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "cifar10_cond", help="results folder "
                        "(default docs/cifar10_cond)")
    parser.add_argument("--progress", action="store_true", help="a progress bar while sampling")
    args = parser.parse_args()
    if args.n < 20 or args.sample_steps < 1 or args.batch_size < 1:
        parser.error("--n must be >= 20, --sample-steps and --batch-size >= 1")
    if args.what == "table":
        write_table(args.out)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
