"""Evaluating a model, with the formulas of ddpm_lib.metrics: a checkpoint by the paper's protocol
(`evaluate_checkpoint`, what `python -m ddpm_lib fid` runs), and evaluation while training (TrainConfig.eval_every),
whose numbers are comparable from one evaluation to the next.

At every evaluation the EMA model draws `eval_n` samples with a few-step sampler from the same seed, scored by FID
and KID against the features of the training images (extracted once and cached, `metrics.cached_features`), and
a validation loss is taken on held-out images at fixed timesteps with fixed noise. The feature extractor is the
standard Inception network (`metrics.inception_extractor`) unless another one is passed; each result names it.
"""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch

from .metrics import check_images, extract_features, extractor_name, fid_kid, inception_extractor, inception_score
from .samplers import generate_images, resolve_sample_steps
from .objective import Denoiser, diffusion_loss
from .utils import check_int, to_model_range

VAL_IMAGES = 256  # held-out images the validation loss is taken on (at most)


class Evaluator:
    """Evaluates a Trainer's EMA model: FID and KID of `n` samples against `reference` (uint8 (N, 3, H, W), the
    training images; their features cached under `reference_key`), and the training objective on up to `loss_n`
    images of `held_out` (uint8, not trained on; `held_out_labels` for a class-conditional model, else the
    unconditional label; `held_out_name` says what they are) at timesteps spread evenly over 0..T-1, with noise
    drawn once from `seed`."""

    def __init__(self, reference, held_out, feature_extractor=None, reference_key: str = "train",
                 held_out_labels=None, held_out_name: str = "held-out images", sampler: str = "dpm-solver",
                 sample_steps: int = 20, loss_n: int = VAL_IMAGES, seed: int = 0, cache_dir=None,
                 batch_size: int = 256):
        check_images("reference", reference)
        check_images("held_out", held_out, minimum=1)
        check_int(loss_n, "loss_n"), check_int(sample_steps, "sample_steps"), check_int(batch_size, "batch_size")
        self.reference, self.reference_key = reference, reference_key
        self.held_out = held_out[:loss_n]
        self.held_out_labels = None if held_out_labels is None else held_out_labels[:loss_n]
        self.held_out_name = held_out_name
        self.extractor = feature_extractor if feature_extractor is not None else inception_extractor()
        self.extractor_name = extractor_name(self.extractor)
        self.sampler, self.sample_steps, self.seed = sampler, sample_steps, seed
        self.cache_dir, self.batch_size = cache_dir, batch_size

    @torch.no_grad()
    def validation_loss(self, denoiser: Denoiser) -> float:
        """The mean loss of the denoiser's network (under its objective) on the held-out images, t_i = i T / m for
        image i of m, and the noise of `seed`: the same inputs at every evaluation."""
        model, schedule = denoiser.net, denoiser.schedule
        device = next(model.parameters()).device
        m = len(self.held_out)
        x0 = to_model_range(self.held_out).to(device)
        t = (torch.arange(m) * schedule.num_timesteps // m).to(device)                    # evenly over 0..T-1
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(self.seed)).to(device)
        net = model
        if model.config.num_classes is not None:  # the held-out labels, else the unconditional label -1
            y = self.held_out_labels if self.held_out_labels is not None else torch.full((m,), -1)
            net = partial(model, y=y.to(device))
        was_training = model.training
        try:
            model.eval()  # no dropout: the same loss at every evaluation
            loss = diffusion_loss(net, schedule.to(device), x0, denoiser.objective, t=t, noise=noise)
        finally:
            model.train(was_training)
        return loss.item()

    def __call__(self, denoiser: Denoiser, n: int) -> dict:
        """FID, KID and the validation loss of the denoiser (the EMA network's), with the seconds they took."""
        check_int(n, "n", 2)
        start = time.perf_counter()
        K = denoiser.net.config.num_classes
        samples = generate_images(denoiser, n, sampler=self.sampler, sample_steps=self.sample_steps, seed=self.seed,
                                  batch_size=self.batch_size, y=None if K is None else torch.arange(n) % K)
        device = next(denoiser.net.parameters()).device
        scores = fid_kid(self.reference, samples, self.extractor, real_key=self.reference_key,
                         cache_dir=self.cache_dir, batch_size=self.batch_size, device=device, seed=self.seed)
        val_loss = self.validation_loss(denoiser)
        return {"fid": scores["fid"], "kid": scores["kid_mean"], "kid_std": scores["kid_std"], "val_loss": val_loss,
                "val_on": f"{len(self.held_out)} of the {self.held_out_name}", "n": n, "sampler": self.sampler,
                "sample_steps": self.sample_steps, "extractor": self.extractor_name,
                "eval_s": time.perf_counter() - start}


def training_evaluator(loaded, data_root, size: int, seed: int, extractor) -> Evaluator:
    """The Evaluator of a training run (`train --eval-every`): `extractor`'s features of its training images
    (`loaded`, an ImageSet), the loss on held-out ones: the test split of CIFAR-10 or the shapes; a folder has none,
    so its first images (the Evaluator's held_out_name says so)."""
    from .data import load_dataset
    from .runtime import rank_zero_first

    info = loaded.info
    if info.name in ("cifar10", "shapes"):
        with rank_zero_first():
            held = load_dataset(info.name, root=data_root, n=VAL_IMAGES, seed=info.seed or seed, size=size,
                                split="test")
        held_out, labels, name = held.images, held.labels, f"{info.name} test split"
    else:
        held_out, labels = loaded.images, loaded.labels
        name = f"{info.name}: training images (a folder has no test split)"
    return Evaluator(loaded.images, held_out, extractor, reference_key=f"{info.name}-{info.split}-{size}",
                     held_out_labels=labels, held_out_name=name, seed=seed)


def load_reference(ref="cifar10", data_root="data", size=32):
    """(uint8 images (N,3,size,size), cache key): "cifar10" = its training split, else an image folder."""
    from . import data

    if ref == "cifar10":
        return data.load_cifar10(data_root, train=True)[0], "cifar10-train"
    folder = Path(ref)
    if not folder.is_dir():
        raise FileNotFoundError(f"ref must be 'cifar10' or an image folder, got {ref!r} (no such directory)")
    return data.load_image_folder(folder, size=size).images, f"folder-{folder.resolve().name}"


def evaluate_checkpoint(ckpt, n=50_000, sampler="ddim", sample_steps=None, ref="cifar10", data_root="data",
                        batch_size=256, device=None, seed=0, guidance_scale=1.0, feature_extractor=None,
                        cache_dir=None, progress=True, classifier=None) -> dict:
    """FID/KID of a checkpoint's (file or run folder) EMA model: n samples against `ref` (default: the paper's
    protocol), and its Inception Score from `classifier` (uint8 images -> class logits; default Inception's, when
    the features are Inception's too; None with another feature_extractor: no IS). A class-conditional model
    samples balanced labels (i % num_classes) with `guidance_scale`."""
    from .checkpoint import load_model
    from .utils import default_device

    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (FID needs two samples; the paper uses 50,000), got {n!r}")
    device = torch.device(device) if device is not None else default_device()
    denoiser = load_model(ckpt, ema=True, device=device)
    sample_steps = resolve_sample_steps(sampler, sample_steps, denoiser.schedule.num_timesteps)  # before sampling
    num_classes = denoiser.net.config.num_classes
    if num_classes is None and guidance_scale != 1:
        raise ValueError(f"guidance_scale={guidance_scale!r} needs a class-conditional model; {ckpt} is "
                         f"unconditional (use guidance_scale=1)")
    y = None if num_classes is None else torch.arange(n) % num_classes          # balanced labels
    extractor = feature_extractor if feature_extractor is not None else inception_extractor()
    if classifier is None and feature_extractor is None:
        classifier = inception_extractor(output="logits_unbiased")
    real, key = load_reference(ref, data_root, size=denoiser.net.config.image_size)
    fake = generate_images(denoiser, n, sampler=sampler, sample_steps=sample_steps, batch_size=batch_size, seed=seed,
                           y=y, guidance_scale=guidance_scale, device=device, progress=progress)
    scores = fid_kid(real, fake, extractor, real_key=key, cache_dir=cache_dir, batch_size=batch_size,
                     device=device, seed=seed, progress=progress)
    is_mean = is_std = None
    if classifier is not None:
        logits = extract_features(fake, classifier, batch_size, device, progress)
        is_mean, is_std = inception_score(logits.double().softmax(1), splits=min(10, n))
    return {**scores, "is_mean": is_mean, "is_std": is_std, "n": n, "sampler": sampler, "sample_steps": sample_steps,
            "guidance_scale": guidance_scale, "ref": ref}
