"""python -m ddpm_lib train | sample | fid | nll | export   (torchrun --nproc_per_node=K -m ddpm_lib train ... for DDP).

Every usage or input error is one line `error: ...` on stderr and a non-zero exit (2: usage, 1: input,
130: interrupted), without a traceback. This module holds the parser, `sample`, `fid`, `nll`,
`export` and `main`; the `train` command lives in cli_train.py (its flags in cli_train_flags.py), the argparse types
all use in cli_args.py.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from .cli_args import arg_type, device_arg, image_file, non_negative_float, positive_int, where
from .cli_train import train
from .cli_train_flags import add_train_parser
from .samplers import SAMPLERS, resolve_sample_steps
from .schedule import VARIANCES
from .utils import check_labels

SAMPLE_STEPS_HELP = "the sampler's model evaluations (default: " + ", ".join(
    f"{name} {entry.default_sample_steps or 'T'}" for name, entry in SAMPLERS.items()) + "; at most T)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like every other CLI error."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


_fid_samples = arg_type(where(int, lambda v: v >= 2), "an integer >= 2 (FID needs two samples)")


# -- the parser -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The `python -m ddpm_lib` parser; each sub-command sets `run`, the function main() calls with the args."""
    parser = _Parser(prog="python -m ddpm_lib",
                     description="Train, sample, evaluate and export DDPMs (Ho et al. 2020).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,fid,nll,export}")
    add_train_parser(sub).set_defaults(run=train)
    ckpt_help = "a checkpoint file written by train, or its run folder"

    p = sub.add_parser("sample", help="sample a grid of images from a checkpoint")
    p.add_argument("--ckpt", required=True, help=ckpt_help)
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default="ddim", help="(default ddim)")
    p.add_argument("--sample-steps", type=positive_int, help=SAMPLE_STEPS_HELP)
    p.add_argument("--n", type=positive_int, default=64, help="number of images (default 64)")
    p.add_argument("--out", required=True, type=image_file, help="image file for the grid (.png, .jpg, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class", dest="label", type=int, metavar="K",
                   help="class-conditional models: every image of class K (default: the classes in turn)")
    p.add_argument("--guidance", type=non_negative_float, default=1.0, metavar="S",
                   help="classifier-free guidance scale: 0 unconditional, 1 conditional (default), > 1 guided")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per sampler call")
    p.add_argument("--device", type=device_arg)
    p.set_defaults(run=_sample)

    p = sub.add_parser("fid", help="FID and KID of a checkpoint's EMA samples")
    p.add_argument("--ckpt", required=True, help=ckpt_help)
    p.add_argument("--n", type=_fid_samples, default=50_000, help="samples to draw (paper: 50,000)")
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default="ddim", help="(default ddim)")
    p.add_argument("--sample-steps", type=positive_int, help=SAMPLE_STEPS_HELP)
    p.add_argument("--ref", default="cifar10", help="cifar10 (training split) or a folder of images")
    p.add_argument("--data-root", default="data", help="CIFAR-10 root for --ref cifar10")
    p.add_argument("--guidance", type=non_negative_float, default=1.0, metavar="S",
                   help="class-conditional models: guidance scale (labels balanced over the classes)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device_arg)
    p.set_defaults(run=_fid)

    p = sub.add_parser("nll", help="the variational bound (Eq. 5) in bits/dim on held-out images")
    p.add_argument("--ckpt", required=True, help=ckpt_help)
    p.add_argument("--n", type=positive_int, default=1000, help="images (default 1000; the paper: all 10,000)")
    p.add_argument("--data", default="cifar10", help="cifar10 or shapes (their test split), or a folder of images "
                   "(its first N) (default cifar10)")
    p.add_argument("--data-root", default="data", help="CIFAR-10 root for --data cifar10")
    p.add_argument("--n-t", type=positive_int, metavar="K", help="KL terms per image, one t drawn per stratum of "
                   "geometrically spaced strata: an unbiased estimate (default: all T - 1, exact)")
    p.add_argument("--variance", choices=VARIANCES, default="beta", help="sigma_t^2 of the reverse process: beta "
                   "(the paper's CIFAR-10 choice) or posterior (beta_tilde) (default beta)")
    p.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--batch-size", type=positive_int, default=256, help="(image, t) rows per network call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device_arg)
    p.set_defaults(run=_nll)

    p = sub.add_parser("export", help="write a diffusers DDPMPipeline folder (safetensors) of a checkpoint")
    p.add_argument("--ckpt", required=True, help=ckpt_help)
    p.add_argument("--out", required=True, help="folder for DDPMPipeline.from_pretrained")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder, with a model card (README.md), "
                   "to this Hugging Face Hub model repository (huggingface_hub's upload_folder; your token)")
    p.set_defaults(run=_export)
    return parser


# -- sample, fid, export ----------------------------------------------------------------------------------------
def _check_guidance(args, num_classes: int | None) -> None:
    """--class and --guidance need a class-conditional network; --class must name one of its classes."""
    label = getattr(args, "label", None)
    if num_classes is None:
        if label is not None or args.guidance != 1:
            flag = "--class" if label is not None else "--guidance"
            raise ValueError(f"{flag}: the checkpoint's network is unconditional (train with --class-cond)")
    elif label is not None:
        check_labels([label], num_classes, name="--class", low=0)


def _sample_steps(args, T: int) -> int:
    """--sample-steps of --sampler on the checkpoint's schedule of T timesteps: left out, the sampler's default
    capped at T (resolve_sample_steps, as generate_images and evaluate_checkpoint count them); given, checked
    against T."""
    try:
        return resolve_sample_steps(args.sampler, args.sample_steps, T)
    except ValueError:
        if SAMPLERS[args.sampler].default_sample_steps is None:
            raise ValueError(f"--sample-steps {args.sample_steps}: --sampler {args.sampler} runs all T={T} "
                             f"timesteps of the checkpoint; leave --sample-steps out, or use --sampler ddim or "
                             f"dpm-solver") from None
        raise ValueError(f"--sample-steps {args.sample_steps}: expected at most T={T}, the checkpoint's "
                         f"timesteps") from None


def _sample(args) -> None:
    from torchvision.utils import save_image

    from .checkpoint import load_model
    from .utils import default_device
    from .samplers import generate_images

    device = args.device if args.device is not None else default_device()
    denoiser = load_model(args.ckpt, ema=not args.no_ema, device=device)
    K = denoiser.net.config.num_classes
    _check_guidance(args, K)
    sample_steps = _sample_steps(args, denoiser.schedule.num_timesteps)
    y = None  # labels (n,): --class K for all, else the classes in turn
    if K is not None:
        y = torch.full((args.n,), args.label) if args.label is not None else torch.arange(args.n) % K
    images = generate_images(denoiser, args.n, sampler=args.sampler, sample_steps=sample_steps,
                             batch_size=args.batch_size, seed=args.seed, y=y, guidance_scale=args.guidance,
                             device=device, progress=True)  # uint8 (n, 3, H, W)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float() / 255, out, nrow=math.ceil(math.sqrt(args.n)))
    print(f"wrote {out} ({args.n} images, {args.sampler} with {sample_steps} sample steps)", file=sys.stderr)


def _fid(args) -> None:
    from .checkpoint import read_checkpoint, resolve_checkpoint
    from .evaluation import evaluate_checkpoint
    from .schedule import NoiseSchedule

    ckpt_path = resolve_checkpoint(args.ckpt)
    if args.ref != "cifar10" and not Path(args.ref).is_dir():
        raise FileNotFoundError(f"--ref {args.ref}: no such folder (expected cifar10 or a folder of images)")
    ckpt = read_checkpoint(ckpt_path)  # a clear error before any sampling
    _check_guidance(args, ckpt["unet_config"].get("num_classes"))
    sample_steps = _sample_steps(args, NoiseSchedule.from_state_dict(ckpt["schedule"]).num_timesteps)
    result = evaluate_checkpoint(ckpt_path, n=args.n, sampler=args.sampler, sample_steps=sample_steps, ref=args.ref,
                                 data_root=args.data_root, batch_size=args.batch_size, device=args.device,
                                 seed=args.seed, guidance_scale=args.guidance)
    guided = f"_cfg{args.guidance:g}" if args.guidance != 1 else ""
    path = ckpt_path.with_name(f"{ckpt_path.stem}_fid_{args.sampler}{sample_steps}{guided}_n{args.n}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    inception = f"  IS {result['is_mean']:.2f} +- {result['is_std']:.2f}" if result["is_mean"] is not None else ""
    print(f"FID {result['fid']:.3f}  KID {result['kid_mean']:.5f} +- {result['kid_std']:.5f}{inception}  ({path})")


def _nll(args) -> None:
    from .checkpoint import load_model, resolve_checkpoint
    from .data import load_dataset
    from .likelihood import bound_summary, variational_bound
    from .utils import default_device, to_model_range

    ckpt_path = resolve_checkpoint(args.ckpt)
    device = args.device if args.device is not None else default_device()
    denoiser = load_model(ckpt_path, ema=not args.no_ema, device=device)  # a clear error before any data is read
    config, T = denoiser.net.config, denoiser.schedule.num_timesteps
    if args.n_t is not None and args.n_t > T - 1:
        raise ValueError(f"--n-t {args.n_t}: expected at most T - 1 = {T - 1} KL terms (leave it out for all)")
    if args.data not in ("cifar10", "shapes") and not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data}: no such folder (expected cifar10, shapes or a folder of images)")
    data = load_dataset(args.data, root=args.data_root, n=args.n, seed=args.seed, size=config.image_size,
                        split="train" if Path(args.data).is_dir() else "test")
    y = None if config.num_classes is None else torch.full((len(data.images),), -1)   # p(x): no label
    result = variational_bound(denoiser, to_model_range(data.images).to(device), variance=args.variance,
                               n_t=args.n_t, y=y, generator=torch.Generator().manual_seed(args.seed),
                               batch_size=args.batch_size)
    n, summary = len(data.images), bound_summary(result)
    what = data.info.name if Path(args.data).is_dir() else f"{data.info.name} test split"
    terms = "all T - 1" if result["n_t"] == T - 1 else f"{result['n_t']} strata of the T - 1 (an estimate)"
    out = {"bits_per_dim": summary, "n": n, "data": what, "kl_terms": terms, "T": T, "variance": args.variance,
           "unconditional": config.num_classes is not None, "ema": not args.no_ema, "seed": args.seed}
    path = ckpt_path.with_name(f"{ckpt_path.stem}_nll_n{n}_t{result['n_t']}_{args.variance}.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    cond = "; class-conditional network scored without labels, p(x)" if config.num_classes is not None else ""
    print(f"NLL bound {summary['total']['mean']:.3f} bits/dim (+- {summary['total']['sem'] or 0:.3f} s.e.) on {n} "
          f"{what} images, KL terms: {terms} of T = {T}, sigma^2 = {args.variance}{cond}: L_T "
          f"{summary['prior']['mean']:.4f} + sum L_t-1 {summary['kl']['mean']:.3f} + L_0 "
          f"{summary['decoder']['mean']:.3f}  ({path})")


def _export(args) -> None:
    from .checkpoint import load_model
    from .interop import save_diffusers_pipeline

    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ValueError("export needs diffusers: pip install diffusers") from None
    if args.push_to_hub is not None:  # checked before anything is written
        from .hub import check_repo_id

        check_repo_id(args.push_to_hub)
    out = save_diffusers_pipeline(load_model(args.ckpt, ema=not args.no_ema, device="cpu"), args.out)
    print(f"wrote {out} (DDPMPipeline.from_pretrained({str(out)!r}))", file=sys.stderr)
    if args.push_to_hub is not None:
        from .checkpoint import read_checkpoint, resolve_checkpoint
        from .hub import model_card, push_to_hub

        ckpt_path = resolve_checkpoint(args.ckpt)
        (out / "README.md").write_text(model_card(read_checkpoint(ckpt_path), ckpt_path, args.push_to_hub,
                                                  ema=not args.no_ema))
        print(f"uploaded to {push_to_hub(out, args.push_to_hub)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); the exit status (a usage error exits 2 itself)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError, FloatingPointError) as e:  # FileNotFoundError is an OSError
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
