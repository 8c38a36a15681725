"""How close two float computations of one formula must agree: a tolerance that follows from the arithmetic.

An inline version of a formula and the library's version compute the same numbers in a different order
(another BLAS kernel, a fused attention kernel, MKL's code path for this CPU, TF32 on a CUDA card), so
they agree only up to rounding. How far apart they may be follows from how many terms are summed on the
way and from the unit roundoff u of the arithmetic:

- A sum of n terms computed in any order is within gamma_n = n u / (1 - n u) of the exact value, relative
  to the sum of the terms' magnitudes (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
  Eq. 3.5). Two orders are within 2 gamma_n of each other.
- TF32 (CUDA, Ampere and newer, when allowed) rounds both inputs of every product in a matmul or
  convolution to 10 mantissa bits (u = 2^-11), which moves each product by at most 2u relative to its size
  and so each layer's sum by at most 2u relative to the sum of its terms' magnitudes; `layers` such layers
  in a chain add up.

`reduction` is the number of terms summed along the longest path from the inputs to one output entry
(a matmul over C channels then over HW pixels: C + HW), `layers` the matmuls and convolutions on that
path (2 there). The bound is applied relative to the largest entry of the expected tensor (a normwise
bound) and is never tighter than torch.testing's defaults for the dtype, so a comparison that needs no
loosening is not loosened.
"""
from __future__ import annotations

import torch

TF32_UNIT_ROUNDOFF = 2.0 ** -11  # TF32 keeps 10 mantissa bits


def tf32_active(device: torch.device | str | None) -> bool:
    """True where float32 matmuls or convolutions on `device` run in TF32."""
    if device is None or torch.device(device).type != "cuda":
        return False
    return torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32


def _check_count(value, name: str, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int ({what}), got {value!r}")


def tolerance(reduction: int = 1, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None, layers: int = 1) -> float:
    """Relative bound on the difference of two computations of one formula, each summing `reduction` terms
    through `layers` matmuls or convolutions."""
    _check_count(reduction, "reduction", "terms summed per output entry")
    _check_count(layers, "layers", "matmuls and convolutions on the path")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating-point dtype, got {dtype}")
    u = torch.finfo(dtype).eps / 2  # unit roundoff: 2^-24 for float32
    bound = 2 * reduction * u / (1 - reduction * u)  # two orders, each within gamma_n (Higham Eq. 3.5)
    if dtype == torch.float32 and tf32_active(device):
        bound += 2 * layers * 2 * TF32_UNIT_ROUNDOFF  # two computations, 2u per TF32 layer
    return bound


def assert_close(actual: torch.Tensor, expected: torch.Tensor, reduction: int = 1, layers: int = 1,
                 why: str | None = None, growth: float = 1.0) -> None:
    """torch.testing.assert_close with the tolerance of `reduction` summed terms through `layers` matmuls or
    convolutions, in `expected`'s dtype and on its device.

    why: one line saying what the longer reduction is (shown when the check fails).
    growth: how much the computation after the roundings can grow a relative error (>= 1; for an iterated
    map such as an ODE solver, measured by nudging its input by a rounding: `relative_growth`); the bound is
    multiplied by it.
    """
    if isinstance(growth, bool) or not isinstance(growth, (int, float)) or not 1.0 <= growth < float("inf"):
        raise ValueError(f"growth: expected a finite number >= 1 (the growth of a relative error), got {growth!r}")
    expected = torch.as_tensor(expected)
    actual = torch.as_tensor(actual, device=expected.device)
    default_rtol, default_atol = _torch_defaults(expected.dtype)
    bound = growth * tolerance(reduction, expected.dtype, expected.device, layers)
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    rtol, atol = max(default_rtol, bound), max(default_atol, bound * scale)

    def message(default: str) -> str:
        grown = f", grown {growth:.3g}x" if growth > 1 else ""
        allowed = f"{reduction} summed terms in {expected.dtype}{grown} (rtol {rtol:.2g}, atol {atol:.2g})"
        return f"{default}\nTolerance: {allowed}" + (f": {why}" if why else "")

    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=message)


def _torch_defaults(dtype: torch.dtype) -> tuple[float, float]:
    """torch.testing.assert_close's own (rtol, atol) for `dtype`."""
    return {torch.float16: (1e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-5), torch.float32: (1.3e-6, 1e-5),
            torch.float64: (1e-7, 1e-7)}.get(dtype, (0.0, 0.0))


def relative_growth(f, x: torch.Tensor) -> float:
    """How much `f` grows a relative error of its input, measured: the normwise relative change of f(x) when x
    moves by a few roundings (x (1 + 4u)), over that of x; at least 1. A deterministic f (an ODE solver from a
    fixed x_T) is what it is for: a rounding at a later step has fewer steps left to grow, so about this much
    at most."""
    u = torch.finfo(x.dtype).eps / 2
    nudged = x * (1 + 4 * u)
    y, y_nudged = f(x), f(nudged)
    moved_in = ((nudged - x).abs().max() / x.abs().max().clamp_min(1.0)).item()
    moved_out = ((y_nudged - y).abs().max() / y.abs().max().clamp_min(1.0)).item()
    return max(1.0, moved_out / moved_in) if moved_in > 0 else 1.0
