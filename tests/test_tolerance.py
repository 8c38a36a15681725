"""The notebooks' shared check (ddpm_lib.tolerance): wide enough for any summation order, narrow enough for slips.

Wide enough: each float32 path is compared with the float64 value of the same formula, which stands for the
exact one; a bound that covers half the tolerance for every path covers any two of them (another CPU's MKL
code path, a fused kernel). Narrow enough: the typical slips of an inline formula fail the same check, also
with the TF32 bound of a CUDA card.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.tolerance import assert_close, relative_growth, tolerance

C, HW = 128, 256  # notebook 02's level-2 feature map: 128 channels, 16x16 pixels
ATTENTION_TERMS = C + HW  # q k^T sums C products, A v sums HW


def _qkv(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(1, HW, C, generator=g, dtype=torch.float64)
    W = torch.randn(C, C, generator=g, dtype=torch.float64) / math.sqrt(C)
    q, v = tokens @ W.T, tokens @ torch.randn(C, C, generator=g, dtype=torch.float64).T / math.sqrt(C)
    return q.to(dtype), q.to(dtype).clone(), v.to(dtype)  # k = q, as in notebook 02: large diagonal logits


def _attention(q, k, v, scale=True, transpose=False):
    logits = q @ k.transpose(-1, -2) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    A = torch.softmax(logits, dim=-1)  # (B, HW, HW)
    return (A.transpose(-1, -2) if transpose else A) @ v


def _normwise(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp(min=1)).item()


@pytest.mark.parametrize("seed", range(5))
def test_every_float32_path_is_within_half_the_tolerance_of_the_exact_value(seed, one_thread):
    exact = _attention(*_qkv(seed, torch.float64))
    q, k, v = _qkv(seed)
    half = tolerance(ATTENTION_TERMS) / 2
    for path in (F.scaled_dot_product_attention(q, k, v), _attention(q, k, v),
                 F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]):
        assert _normwise(path.double(), exact) <= half
    assert_close(F.scaled_dot_product_attention(q, k, v), _attention(q, k, v), reduction=ATTENTION_TERMS)


def _tf32(x):
    """x rounded to TF32 (10 mantissa bits, to nearest), as a CUDA card rounds matmul inputs; kept as float64."""
    bits = x.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).double()


@pytest.fixture
def tf32_on():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield tolerance(ATTENTION_TERMS, device="cuda", layers=2)
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("seed", range(5))
def test_emulated_tf32_attention_is_within_half_the_tf32_tolerance(seed, tf32_on):
    q, k, v = _qkv(seed, torch.float64)
    A = torch.softmax(_tf32(q) @ _tf32(k).transpose(-1, -2) / math.sqrt(C), dim=-1)  # (1, HW, HW)
    assert _normwise(_tf32(A) @ _tf32(v), _attention(q, k, v)) <= tf32_on / 2


@pytest.mark.parametrize("layers", [2, 8, 32])
def test_emulated_tf32_through_a_chain_of_layers_is_within_half_the_tf32_tolerance(layers):
    """Linear layers, each followed by GroupNorm and a SiLU residual, computed with TF32-rounded matmul inputs
    against float64: the error grows with depth, and the bound grows linearly in `layers` with it."""
    g = torch.Generator().manual_seed(layers)
    weights = [torch.randn(C, C, generator=g, dtype=torch.float64) / math.sqrt(C) for _ in range(layers)]
    exact = emulated = torch.randn(64, C, generator=g, dtype=torch.float64)
    for W in weights:
        exact = F.group_norm((exact @ W.T)[:, :, None], 8)[:, :, 0]
        emulated = F.group_norm((_tf32(emulated) @ _tf32(W).T)[:, :, None], 8)[:, :, 0]
        exact, emulated = exact + F.silu(exact), emulated + F.silu(emulated)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        bound = tolerance(C * layers, device="cuda", layers=layers)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert _normwise(emulated, exact) <= bound / 2


def test_slips_in_attention_fail_the_check_also_with_the_tf32_bound(tf32_on):
    q, k, v = _qkv(0)
    right = _attention(q, k, v)
    slips = {"missing square root": _attention(q, k, v, scale=False),
             "transposed attention matrix": _attention(q, k, v, transpose=True)}
    assert tf32_on > 10 * tolerance(ATTENTION_TERMS, layers=2)  # the GPU bound is the far looser one
    for name, wrong in slips.items():
        with pytest.raises(AssertionError, match="summed terms"):
            assert_close(wrong, right, reduction=ATTENTION_TERMS, layers=2, why=name)
        assert _normwise(wrong, right) > 2 * tf32_on, name


def test_an_off_by_one_timestep_fails_the_check():
    schedule = NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    for t_value in (0, 10, 500, 998):
        t = torch.full((4,), t_value)
        a_bar = schedule.alphas_cumprod[t + 1].view(-1, 1, 1, 1)  # the slip: alpha_bar of t + 1
        wrong = a_bar.sqrt() * x0 + (1 - a_bar).sqrt() * eps
        assert_close(schedule.q_sample(x0, t, eps), schedule.q_sample(x0, t, eps))
        with pytest.raises(AssertionError):
            assert_close(wrong, schedule.q_sample(x0, t, eps))


def test_no_reduction_keeps_torchs_defaults():
    expected = torch.ones(10)
    assert_close(expected + 1e-6, expected)
    with pytest.raises(AssertionError):
        assert_close(expected + 3e-5, expected)  # beyond torch's float32 atol 1e-5 + rtol 1.3e-6
    assert_close(expected + 3e-5, expected, reduction=1000)  # 1,000 terms: 2 * 1000 * 2^-24 = 1.2e-4


def test_growth_multiplies_the_bound():
    expected = torch.ones(10)  # allowed: atol + rtol * 1, each growth * 2 * 2^-24 here
    with pytest.raises(AssertionError, match="grown 300x"):
        assert_close(expected + 1e-4, expected, growth=300)  # 2 * 300 * 1.19e-7 = 7.2e-5 < 1e-4
    assert_close(expected + 1e-4, expected, growth=600)  # 1.4e-4


@pytest.mark.parametrize("bad", [0.5, 0, float("nan"), float("inf"), True, "2"])
def test_a_bad_growth_is_refused(bad):
    with pytest.raises(ValueError, match="growth"):
        assert_close(torch.ones(2), torch.ones(2), growth=bad)


def test_relative_growth_of_a_cancellation_is_its_condition_number():
    x = torch.ones(3)
    # f(x) = 1000 (x - 0.999) at x = 1: a relative change d of x moves f by 1000 d (f(1) = 1)
    assert relative_growth(lambda v: 1000 * (v - 0.999), x) == pytest.approx(1000, rel=1e-3)
    assert relative_growth(lambda v: 4 * v, x) == 1.0  # scaling (exactly, by a power of 2) keeps relative errors
    assert relative_growth(torch.round, x) == 1.0  # an error that vanishes is not grown (at least 1)


def test_the_bound_is_higham_gamma_n_twice():
    u = 2.0 ** -24
    n = 384
    assert tolerance(n) == pytest.approx(2 * n * u / (1 - n * u))
    assert tolerance(n, dtype=torch.float64) == pytest.approx(2 * n * 2.0 ** -53 / (1 - n * 2.0 ** -53))
    assert tolerance(n, device="cpu", layers=5) == tolerance(n)  # layers matter for TF32 only


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_a_bad_count_is_refused(bad):
    with pytest.raises(ValueError, match="reduction"):
        tolerance(bad)
    with pytest.raises(ValueError, match="layers"):
        tolerance(8, layers=bad)
