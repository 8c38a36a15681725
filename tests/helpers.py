"""Pieces several test modules share: `from helpers import MICRO, perturbed, Payload` (tests/ is on sys.path).

Fixtures live in conftest.py; plain objects and functions live here, because two files named conftest.py
(the repository's and this folder's) cannot both be imported by name.
"""
import os

import torch
from torch import nn

from ddpm_lib.unet import UNetConfig

# A 158k-parameter UNet on 16x16 images: seconds per training run on two CPU cores.
MICRO = UNetConfig(ch_list=(3, 16, 32), attention_layer=(2,), num_heads=2, temb_dim=16, num_res_blocks=1,
                   dropout=0.1, norm_groups=8, image_size=16)


def perturbed(model: nn.Module, seed=0, std=0.05) -> nn.Module:
    """All parameters random (norm scales around 1): the near-zero init of the output layers hides bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if is_norm_scale else 0.0))
    return model.eval()


class Payload:
    """A pickle that runs `touch pwned` when loaded by an unsafe unpickler: loaders must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))
