"""Sample quality in the feature space of a small CIFAR-10 classifier: FID, KID and an Inception-Score-form score.

The Inception network's weights cannot be downloaded everywhere (not on this project's CPU machine), so the
benchmarks score samples in the penultimate features of the small CIFAR-10 classifier that ships with the
package (ddpm_lib.classifier; `features_and_probabilities` gives them) against the test split:
  FID   Frechet distance between Gaussians fitted to the features (Heusel et al. 2017), with the spread of 10
        bootstrap resamples of the samples;
  KID   the unbiased squared MMD with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al.
        2018), mean and spread over subsets;
  IS    exp E_x KL(p(y | x) || p(y)) with this classifier's p(y | x) (Salimans et al. 2016's form), mean and
        spread over 10 splits: real CIFAR-10 scores high, noise and blobs near 1.
These numbers compare runs scored by the same classifier; they are not the papers' Inception FIDs.
"""
from __future__ import annotations

import torch

from ddpm_lib.metrics import frechet_distance, inception_score


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
