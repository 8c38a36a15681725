"""ddpm_lib.shapes: shape_score (the data passes, noise and broken shapes fail, each rule on its own) and
shape_kind (recovers make_shapes' labels)."""
import pytest
import torch

from ddpm_lib.data import make_shapes
from ddpm_lib.shapes import shape_kind, shape_score


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(200, seed=3)[0]


def test_the_data_passes_every_rule(shapes):
    score = shape_score(shapes)
    assert score.summary() == {"plain_background": 1.0, "one_shape": 1.0, "shape_size": 1.0, "solid_fill": 1.0,
                               "passed": 1.0}


def test_the_data_passes_at_16x16_too():
    """The quick-win recipe trains at 16x16, where a triangle of r = 0.15 size covers ~11 pixels (measured here:
    499 of 500 images pass)."""
    assert shape_score(make_shapes(500, size=16, seed=99)[0]).share >= 0.99


def test_noise_fails():
    noise = torch.randint(0, 256, (50, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    score = shape_score(noise)
    assert score.share == 0.0
    assert not score.plain_background.any()


def test_each_rule_catches_its_defect(shapes):
    x = shapes[:20].clone()
    bg = x[:, :, 0, 0]  # (20, 3) the corner is background
    two = x.clone()
    for img, colour in zip(two, bg):  # a second, smaller blob (25 pixels) in a corner the shape leaves free
        corner = next((r, c) for r in (1, 26) for c in (1, 26)
                      if (img[:, r - 1:r + 6, c - 1:c + 6] == colour[:, None, None]).all())
        img[:, corner[0]:corner[0] + 5, corner[1]:corner[1] + 5] = 255 - colour[:, None, None]
    assert not shape_score(two).one_shape.any()

    stripes = x.clone()
    stripes[:, :, 0, ::2] = 255 - bg[:, :, None]  # half of the top border in another colour
    stripes[:, :, -1, ::2] = 255 - bg[:, :, None]
    assert not shape_score(stripes).plain_background.any()

    blank = bg[:, :, None, None].expand_as(x).contiguous()
    assert not shape_score(blank).shape_size.any()  # no shape at all

    speckled = x.clone()
    inside = (x != bg[:, :, None, None]).any(1)  # (20, H, W) the shape's pixels
    noise = torch.randint(0, 256, x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    speckled = torch.where(inside[:, None] & (torch.rand(20, 1, 32, 32) < 0.5), noise, speckled)
    assert shape_score(speckled).solid_fill.float().mean() < 0.2


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="images must be a uint8"):
        shape_score(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="tol"):
        shape_score(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), tol=300)


def test_shape_kind_recovers_make_shapes_labels():
    images, labels = make_shapes(300, seed=7)
    assert torch.equal(shape_kind(images), labels)


def test_shape_kind_of_a_plain_image_is_minus_one_and_bad_input_is_refused():
    plain = torch.full((2, 3, 32, 32), 90, dtype=torch.uint8)
    assert shape_kind(plain).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="images must be a uint8 tensor"):
        shape_kind(plain.float())
