"""benchmarks/cifar_scores.py, the benchmarks' scores in the shipped classifier's features: KID against
torchmetrics' polynomial MMD, the IS-form score at its closed-form ends, FID's bootstrap spread."""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from cifar_scores import kid, score  # noqa: E402


def test_kid_is_torchmetrics_unbiased_polynomial_mmd_on_each_subset():
    kid_module = pytest.importorskip("torchmetrics.image.kid")
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(300, 16, generator=g, dtype=torch.float64), 0.5 + torch.randn(300, 16, generator=g,
                                                                                           dtype=torch.float64)
    mean, std = kid(real, fake, subsets=1, size=300)  # one subset of everything: a permutation, the same MMD
    assert std == 0  # one value: no spread to report
    expected = kid_module.poly_mmd(real, fake, degree=3, gamma=1 / 16, coef=1.0).item()
    assert mean == pytest.approx(expected, rel=1e-12)
    same, _ = kid(real, real.clone(), subsets=20, size=100)
    assert abs(same) < 0.1 * mean  # unbiased: near 0 for one distribution, far below the shifted pair's


def test_score_of_the_reference_itself_is_near_zero_and_of_a_shift_is_its_square():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(4000, 8, generator=g, dtype=torch.float64)
    fake = torch.randn(4000, 8, generator=g, dtype=torch.float64) + 1.0  # FID = ||mu_a - mu_b||^2 = 8 exactly
    probs = torch.full((4000, 10), 0.1, dtype=torch.float64)
    shifted = score(fake, probs, real)
    assert shifted["fid"] == pytest.approx(8, abs=8 * 5 * math.sqrt(2 / 4000) + 0.05)
    assert 0 < shifted["fid_std"] < 0.5 and shifted["n"] == 4000 and shifted["is"] == pytest.approx(1)
    assert score(real[:2000], probs[:2000], real[2000:])["fid"] < 0.05

