"""The reverse chain as an animated GIF: every state x_t a sampler passed through, tiled, one frame each.

`chain_gif(trajectory, path)` takes what `ddpm_lib.sampler_steps.Trajectory.result(x0)` returns and writes a looping
GIF (Pillow, which matplotlib brings): frame i shows the batch at the i-th timestep visited, the last frame the
samples, held longer. GIF stores 256 colours a frame, so the frames are the states up to that palette's rounding.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..utils import to_uint8


def tile(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> one uint8 (rows H + rows - 1, nrow W + nrow - 1, 3) picture, rows of nrow images with a
    one-pixel white gap; one channel is shown as grey."""
    N, C, H, W = images.shape
    images = images.expand(N, 3, H, W) if C == 1 else images
    rows = -(-N // nrow)
    out = torch.full((rows * (H + 1) - 1, nrow * (W + 1) - 1, 3), 255, dtype=torch.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, nrow)
        out[r * (H + 1):r * (H + 1) + H, c * (W + 1):c * (W + 1) + W] = image.permute(1, 2, 0)
    return out


def chain_gif(trajectory: dict, path, nrow: int = 8, scale: int = 2, frame_ms: int = 80,
              last_ms: int = 1500) -> Path:
    """Write the states x_t of `trajectory` ({"t", "x_t" (S+1, B, C, H, W) in [-1, 1], ...}: Trajectory.result) as
    a looping GIF at `path`, each frame the batch tiled `nrow` a row and enlarged `scale` times (nearest), shown
    `frame_ms`, the last (the samples) `last_ms`. Returns the path."""
    states = trajectory["x_t"]
    if states.ndim != 5 or len(states) < 2:
        raise ValueError(f"trajectory['x_t'] must be (S+1, B, C, H, W) with S >= 1, got {tuple(states.shape)}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    frames = []
    for x in states:
        picture = Image.fromarray(tile(to_uint8(x), nrow).numpy())
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
        frames.append(picture.quantize(256, dither=Image.Dither.NONE))  # its own 256-colour palette, not dithered
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], loop=0,
                   duration=[frame_ms] * (len(frames) - 1) + [last_ms])
    return path
