"""A procedural data set, "shapes": one solid circle, square or triangle on a plain background per image.

Offline, instant and learnable by a small UNet in minutes on a CPU; the kind of shape is its class label.
Re-exported by ddpm_lib.data (`from ddpm_lib.data import make_shapes`).

`shape_score` says how shape-like images are (a model's samples), by the generator's own rules:
  1. plain background: the border pixels share one colour (within `tol`);
  2. one shape: the pixels that differ from the background form one 4-connected blob (stray specks aside);
  3. of a shape's size: the blob's area lies within the generator's range of areas (with a margin);
  4. solid fill: the blob's pixels share one colour (within `tol`).
The share of passing images is 1.0 for the data and 0.0 for noise (tests/test_shapes_score.py).
"""
from dataclasses import dataclass

import numpy as np
import torch

from .utils import check_int

SHAPE_KINDS = ("circle", "square", "triangle")  # make_shapes' labels, in label order
_PALETTE = torch.tensor([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                         [145, 30, 180], [240, 240, 240], [20, 20, 20]], dtype=torch.uint8)  # (P, 3) RGB


def _shape_mask(kind, dx, dy, r):
    """Pixels inside a circle (0), square (1) or triangle (2) of radius r, at offsets dx, dy from its centre."""
    if kind == 0:
        return dx ** 2 + dy ** 2 <= r ** 2
    if kind == 1:
        return (dx.abs() <= 0.8 * r) & (dy.abs() <= 0.8 * r)
    return (dy <= r) & (dx.abs() <= (dy + r) / 2)  # apex (0, -r), base of width 2r at dy = r


def make_shapes(n, size=32, seed=0):
    """(images uint8 (n, 3, size, size), labels int64 (n,)): one solid circle, square or triangle on a plain
    background per image, its label the kind of shape (SHAPE_KINDS[label]).

    Kind, colours (two distinct palette colours), radius r in [0.15, 0.3] * size and a centre that
    keeps the shape inside the image (corners stay background) are drawn with a CPU generator seeded by `seed`.
    """
    check_int(n, "n"), check_int(size, "size", 8)
    g = torch.Generator().manual_seed(seed)
    P = len(_PALETTE)
    kind = torch.randint(0, len(SHAPE_KINDS), (n,), generator=g)  # 0 circle, 1 square, 2 triangle
    bg = torch.randint(0, P, (n,), generator=g)
    fg = (bg + torch.randint(1, P, (n,), generator=g)) % P
    r = size * (0.15 + 0.15 * torch.rand(n, generator=g))
    cx, cy = ((r + 1) + (size - 2 * r - 2) * torch.rand(2, n, generator=g)).view(2, n, 1, 1)
    grid = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    dx, dy, r = grid.view(1, 1, size) - cx, grid.view(1, size, 1) - cy, r.view(n, 1, 1)  # (n,1,W), (n,H,1)
    inside = torch.empty(n, size, size, dtype=torch.bool)
    for k in range(len(SHAPE_KINDS)):
        s = kind == k
        inside[s] = _shape_mask(k, dx[s], dy[s], r[s])
    fg, bg = _PALETTE[fg].view(n, 3, 1, 1), _PALETTE[bg].view(n, 3, 1, 1)
    images = torch.where(inside.unsqueeze(1), fg, bg)  # (n, 3, size, size)
    return images, kind


# ----------------------------------------------------------------------------- scoring samples

# Areas of the generator's shapes as a fraction of size**2: the smallest is a triangle of r = 0.15 size
# (2 r^2), the largest a circle of r = 0.3 size (pi r^2); the margins allow for blurred edges.
MIN_AREA, MAX_AREA = 0.7 * 2 * 0.15 ** 2, 1.3 * np.pi * 0.3 ** 2


@dataclass(frozen=True)
class ShapeScore:
    plain_background: torch.Tensor  # bool (N,): >= 95% of the border within tol of its median colour
    one_shape: torch.Tensor          # bool (N,): >= 90% of the non-background pixels in one 4-connected blob,
                                     # and no second blob of half the smallest shape's area
    shape_size: torch.Tensor         # bool (N,): that blob's area within the generator's range
    solid_fill: torch.Tensor         # bool (N,): >= 90% of the blob within tol of its median colour

    @property
    def passed(self) -> torch.Tensor:
        """bool (N,): all four rules hold."""
        return self.plain_background & self.one_shape & self.shape_size & self.solid_fill

    @property
    def share(self) -> float:
        """The share of images that pass: the number to report."""
        return self.passed.float().mean().item()

    def summary(self) -> dict:
        return {name: getattr(self, name).float().mean().item()
                for name in ("plain_background", "one_shape", "shape_size", "solid_fill", "passed")}


def _within(pixels: np.ndarray, colour: np.ndarray, tol: int) -> np.ndarray:
    """(..., 3) pixels whose every channel is within tol of colour."""
    return np.asarray((np.abs(pixels.astype(np.int16) - colour.astype(np.int16)) <= tol).all(-1))


def _blobs(img: np.ndarray, tol: int):
    """The border pixels, their median colour and the 4-connected blobs of the pixels that differ from it (by more
    than tol) of img (H, W, 3) uint8 -> (border (4 size - 4, 3), background (3,), labels (H, W), blob areas largest
    first, count)."""
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])  # (4 size - 4, 3)
    background = np.median(border, axis=0)
    from scipy import ndimage  # only shape scoring needs it

    labels, count = ndimage.label(~_within(img, background, tol))  # 4-connectivity
    return border, background, labels, np.sort(np.bincount(labels.ravel())[1:])[::-1], count


def _largest(labels: np.ndarray) -> np.ndarray:
    """bool (H, W): the largest labelled blob."""
    return labels == 1 + np.bincount(labels.ravel())[1:].argmax()


def _score_one(img: np.ndarray, tol: int) -> tuple[bool, bool, bool, bool]:
    size = img.shape[0]  # img: (H, W, 3) uint8
    border, background, labels, areas, count = _blobs(img, tol)
    plain = _within(border, background, tol).mean() >= 0.95
    if count == 0:
        return bool(plain), False, False, False
    blob = _largest(labels)
    second = areas[1] if count > 1 else 0
    one = areas[0] >= 0.9 * areas.sum() and second < 0.5 * MIN_AREA * size ** 2
    sized = MIN_AREA * size ** 2 <= areas[0] <= MAX_AREA * size ** 2
    fill = _within(img[blob], np.median(img[blob], axis=0), tol).mean() >= 0.9
    return bool(plain), bool(one), bool(sized), bool(fill)


def _hwc_images(images: torch.Tensor, tol: int) -> np.ndarray:
    """Checked uint8 images (N, 3, H, W) -> numpy (N, H, W, 3)."""
    if not (torch.is_tensor(images) and images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3):
        got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor (N, 3, H, W), got {got}")
    if not isinstance(tol, int) or not 0 <= tol <= 255:
        raise ValueError(f"tol must be an int in [0, 255], got {tol!r}")
    return images.permute(0, 2, 3, 1).cpu().numpy()


def shape_score(images: torch.Tensor, tol: int = 40) -> ShapeScore:
    """Score uint8 images (N, 3, H, W) against the rules of `make_shapes`; tol is in 0-255 colour units."""
    rows = torch.tensor([_score_one(img, tol) for img in _hwc_images(images, tol)], dtype=torch.bool).reshape(-1, 4)
    return ShapeScore(*rows.unbind(1))


# ----------------------------------------------------------------------------- which shape is it

# Share of its bounding box a shape of make_shapes fills, in SHAPE_KINDS order: circle pi r^2 / (2r)^2,
# square 1, triangle (apex, base 2r, height 2r) 2 r^2 / (2r)^2.
FILL_RATIOS = (np.pi / 4, 1.0, 0.5)


def _kind_of(img: np.ndarray, tol: int) -> int:
    """SHAPE_KINDS index of the largest blob off the border's colour in img (H, W, 3) uint8; -1 if there is none."""
    _, _, labels, _, count = _blobs(img, tol)
    if count == 0:
        return -1
    rows, cols = np.nonzero(_largest(labels))
    fill = len(rows) / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))  # area / bounding box
    return int(np.abs(np.array(FILL_RATIOS) - fill).argmin())


def shape_kind(images: torch.Tensor, tol: int = 40) -> torch.Tensor:
    """int64 (N,) shape kinds (SHAPE_KINDS index; -1: no shape) of uint8 images (N, 3, H, W), by fill ratio."""
    return torch.tensor([_kind_of(img, tol) for img in _hwc_images(images, tol)], dtype=torch.long)
