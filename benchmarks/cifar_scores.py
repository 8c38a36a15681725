"""Sample quality in the feature space of a small CIFAR-10 classifier: FID, KID and an Inception-Score-form score.

The Inception network's weights cannot be downloaded everywhere (not on this project's CPU machine), so the
recipe benchmark trains a small classifier once on CIFAR-10's training split, keeps it, and scores samples in
its penultimate features against the test split:
  FID   Frechet distance between Gaussians fitted to the features (Heusel et al. 2017), with the spread of 10
        bootstrap resamples of the samples;
  KID   the unbiased squared MMD with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al.
        2018), mean and spread over subsets;
  IS    exp E_x KL(p(y | x) || p(y)) with this classifier's p(y | x) (Salimans et al. 2016's form), mean and
        spread over 10 splits: real CIFAR-10 scores high, noise and blobs near 1.
These numbers compare runs scored by the same classifier; they are not the papers' Inception FIDs.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lib.metrics import frechet_distance, inception_score
from ddpm_lib.utils import to_model_range


class SmallCNN(nn.Module):
    """Three conv stages (32, 64, 128 channels, batch norm, 2x pooling) and a 256-d feature layer; 0.32M weights."""

    def __init__(self, classes: int = 10, width: int = 32, features: int = 256):
        super().__init__()

        def stage(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.body = nn.Sequential(stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, features), nn.ReLU())
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations by up to 2 pixels (reflect padding), per image."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()  # one shift per batch: cheap and enough here
    return padded[:, :, dy:dy + 32, dx:dx + 32]


def accuracy(model: SmallCNN, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum((model(to_model_range(images[i:i + batch])).argmax(1) == labels[i:i + batch]).sum().item()
                   for i in range(0, len(images), batch))
    return hits / len(images)


def train_classifier(train: tuple, test: tuple, path: Path, epochs: int = 8, seed: int = 0) -> dict:
    """Train SmallCNN on (images uint8, labels) and keep it at `path` with its test accuracy; load it if it is there."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    torch.manual_seed(seed)
    model, g = SmallCNN(), torch.Generator().manual_seed(seed)
    images, labels = train
    steps = epochs * math.ceil(len(images) / 128)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    start, step = time.perf_counter(), 0
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(images), generator=g).split(128):
            loss = F.cross_entropy(model(_augment(to_model_range(images[idx]), g)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        print(f"classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    kept = {"state": model.state_dict(), "test_accuracy": accuracy(model, *test), "epochs": epochs,
            "train_seconds": time.perf_counter() - start}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(kept, path)
    return kept


def load_classifier(kept: dict) -> SmallCNN:
    model = SmallCNN()
    model.load_state_dict(kept["state"])
    return model.eval()


def embed(model: SmallCNN, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float64 (N, 256), class probabilities float64 (N, 10)) of uint8 images."""
    feats, probs = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            f = model.features(to_model_range(images[i:i + batch]))
            feats.append(f.double())
            probs.append(model.head(f).double().softmax(1))
    return torch.cat(feats), torch.cat(probs)


def _mean_std(values: list) -> tuple:
    """(mean, sample standard deviation) in float64; a single value has no spread: 0."""
    v = torch.tensor(values, dtype=torch.float64)
    return v.mean().item(), (v.std().item() if len(v) > 1 else 0.0)


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 50, size: int = 500, seed: int = 0) -> tuple:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 over `subsets` random subsets of `size` of each: (mean, std)."""
    d, size = real.shape[1], min(size, len(real), len(fake))
    g, values = torch.Generator().manual_seed(seed), []
    for _ in range(subsets):
        a = real[torch.randperm(len(real), generator=g)[:size]]
        b = fake[torch.randperm(len(fake), generator=g)[:size]]
        k_aa, k_bb, k_ab = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
        off = size * (size - 1)
        values.append(((k_aa.sum() - k_aa.diagonal().sum()) / off + (k_bb.sum() - k_bb.diagonal().sum()) / off
                       - 2 * k_ab.mean()).item())
    return _mean_std(values)


def score(fake_feats: torch.Tensor, fake_probs: torch.Tensor, real_feats: torch.Tensor, seed: int = 0) -> dict:
    """FID (with the std of 10 bootstrap resamples of the samples), KID and the IS-form score of one set of samples."""
    g = torch.Generator().manual_seed(seed)
    boot = [frechet_distance(real_feats, fake_feats[torch.randint(0, len(fake_feats), (len(fake_feats),),
                                                                   generator=g)]) for _ in range(10)]
    kid_mean, kid_std = kid(real_feats, fake_feats, seed=seed)
    is_mean, is_std = inception_score(fake_probs)  # the classifier's classes in place of Inception's
    return {"fid": frechet_distance(real_feats, fake_feats), "fid_std": _mean_std(boot)[1],
            "kid": kid_mean, "kid_std": kid_std, "is": is_mean, "is_std": is_std, "n": len(fake_feats)}
