"""chain_gif: a real reverse chain written as a GIF and read back with Pillow, frame by frame."""
import numpy
import pytest
import torch
from helpers import MICRO, perturbed
from PIL import Image, ImageSequence

from ddpm_lib.nb.animation import chain_gif, tile
from ddpm_lib.objective import Denoiser
from ddpm_lib.sampler_steps import Trajectory
from ddpm_lib.samplers import ddim_sample
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.unet import UNet
from ddpm_lib.utils import to_uint8


def test_tile_places_each_image_in_its_row_and_column():
    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 2, 2) * 40
    out = tile(images, nrow=2)                                      # 3 rows of 2, one-pixel gaps
    assert out.shape == (3 * 3 - 1, 2 * 3 - 1, 3)
    for i in range(5):
        r, c = divmod(i, 2)
        assert (out[r * 3:r * 3 + 2, c * 3:c * 3 + 2] == 40 * i).all()
    assert (out[2, :] == 255).all() and (out[-2:, 3:] == 255).all()  # the gap and the empty sixth place


def test_the_gif_holds_every_state_of_the_chain(tmp_path):
    torch.manual_seed(0)
    denoiser = Denoiser(perturbed(UNet(MICRO)).eval(), NoiseSchedule.cosine(50))
    trajectory = Trajectory()
    x0 = ddim_sample(denoiser, (4, 3, 16, 16), 6, generator=torch.Generator().manual_seed(1), callback=trajectory)
    states = trajectory.result(x0)
    path = chain_gif(states, tmp_path / "chain.gif", nrow=2, scale=1, frame_ms=50, last_ms=700)
    with Image.open(path) as gif:
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]
        durations = [frame.info["duration"] for frame in ImageSequence.Iterator(Image.open(path))]
    assert len(frames) == 7 and durations[:-1] == [50] * 6 and durations[-1] == 700
    tiles = [tile(to_uint8(x), 2).float() for x in states["x_t"]]
    for i, frame in enumerate(frames):
        got = torch.from_numpy(numpy.asarray(frame)).float()
        errors = [(got - expected).abs().mean().item() for expected in tiles]
        # 256 colours split the RGB cube into cells about 40 levels a side: a mean error of at most 10 a channel
        assert got.shape == tiles[i].shape and errors[i] < 10, errors
        assert errors[i] == min(errors)  # each frame is its own state, in the chain's order
    first_vs_last = (torch.from_numpy(numpy.asarray(frames[0])).float()
                     - tile(to_uint8(x0), 2).float()).abs().mean()
    assert first_vs_last > 20  # the chain moves: noise first, the samples last
    with Image.open(chain_gif(states, tmp_path / "big.gif", nrow=2, scale=3)) as big:
        assert big.size == (3 * frames[0].width, 3 * frames[0].height) and big.n_frames == 7
    with pytest.raises(ValueError, match="S >= 1"):
        chain_gif({"x_t": states["x_t"][:1]}, tmp_path / "x.gif")
