"""Evaluation while training (TrainConfig.eval_every): numbers that are comparable from one evaluation to the next.

At every evaluation the EMA model draws `eval_n` samples with a few-step sampler from the same seed, scored by FID
and KID against the features of the training images (extracted once and cached, `metrics.cached_features`), and
a validation loss is taken on held-out images at fixed timesteps with fixed noise. The feature extractor is the
standard Inception network (`metrics.inception_extractor`) unless another one is passed; each result names it.
"""
from __future__ import annotations

import time
from functools import partial

import torch

from .metrics import _check_images, _extractor_name, fid_kid, inception_extractor
from .samplers import generate_images
from .schedule import diffusion_loss
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
                 steps: int = 20, loss_n: int = VAL_IMAGES, seed: int = 0, cache_dir=None, batch_size: int = 256):
        _check_images("reference", reference)
        _check_images("held_out", held_out, minimum=1)
        check_int(loss_n, "loss_n"), check_int(steps, "steps"), check_int(batch_size, "batch_size")
        self.reference, self.reference_key = reference, reference_key
        self.held_out = held_out[:loss_n]
        self.held_out_labels = None if held_out_labels is None else held_out_labels[:loss_n]
        self.held_out_name = held_out_name
        self.extractor = feature_extractor if feature_extractor is not None else inception_extractor()
        self.extractor_name = _extractor_name(self.extractor)
        self.sampler, self.steps, self.seed = sampler, steps, seed
        self.cache_dir, self.batch_size = cache_dir, batch_size

    @torch.no_grad()
    def validation_loss(self, model, schedule, weighting: str = "uniform", snr_gamma: float = 5.0) -> float:
        """The mean loss of `model` (its prediction, this weighting) on the held-out images, t_i = i T / m for
        image i of m, and the noise of `seed`: the same inputs at every evaluation."""
        device = next(model.parameters()).device
        m = len(self.held_out)
        x0 = to_model_range(self.held_out).to(device)
        t = (torch.arange(m) * schedule.steps // m).to(device)                    # evenly over 0..T-1
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(self.seed)).to(device)
        net = model
        if model.config.num_classes is not None:  # the held-out labels, else the unconditional label -1
            y = self.held_out_labels if self.held_out_labels is not None else torch.full((m,), -1)
            net = partial(model, y=y.to(device))
        was_training = model.training
        try:
            model.eval()  # no dropout: the same loss at every evaluation
            loss = diffusion_loss(net, schedule.to(device), x0, t=t, noise=noise, prediction=model.config.prediction,
                                  weighting=weighting, snr_gamma=snr_gamma)
        finally:
            model.train(was_training)
        return loss.item()

    def __call__(self, model, schedule, n: int, weighting: str = "uniform", snr_gamma: float = 5.0) -> dict:
        """FID, KID and the validation loss of `model` (the EMA), with the seconds they took."""
        check_int(n, "n", 2)
        start = time.perf_counter()
        K = model.config.num_classes
        samples = generate_images(model, schedule, n, sampler=self.sampler, steps=self.steps, seed=self.seed,
                                  batch_size=self.batch_size, y=None if K is None else torch.arange(n) % K)
        device = next(model.parameters()).device
        scores = fid_kid(self.reference, samples, self.extractor, real_key=self.reference_key,
                         cache_dir=self.cache_dir, batch_size=self.batch_size, device=device, seed=self.seed)
        val_loss = self.validation_loss(model, schedule, weighting, snr_gamma)
        return {"fid": scores["fid"], "kid": scores["kid_mean"], "kid_std": scores["kid_std"], "val_loss": val_loss,
                "val_on": f"{len(self.held_out)} of the {self.held_out_name}", "n": n, "sampler": self.sampler,
                "steps": self.steps, "extractor": self.extractor_name, "eval_s": time.perf_counter() - start}
