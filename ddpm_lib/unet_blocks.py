"""The parts a U-Net level is made of: the residual block with its time (and label) embedding, the resampling
layers, and one Level (res blocks, attention after each where asked, then the resampling), as the paper's
TensorFlow code (diffusion_tf/models/unet.py) builds them. ddpm_lib.unet puts the levels together.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint



class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, add the time embedding (a Linear to this block's channels), GroupNorm-SiLU-dropout-conv,
    add the input (through a 1x1 conv when the channels change)."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(temb)[:, :, None, None]  # (B, C) -> (B, C, 1, 1), broadcast over H, W
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W: 3x3 conv with stride 2 and TF's 'SAME' padding (pad right/bottom by 1), or 2x2 average pool."""

    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest neighbour, then (optionally) a 3x3 conv."""

    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Level(nn.Module):
    """One resolution: res blocks, each followed by its attention (or nn.Identity), then an optional resample.

    kind "down": every output (each block's, then the downsampled one) is pushed onto `skips`;
    kind "up": a skip is popped and concatenated to the input of every res block; kind "mid": no skips.
    """

    def __init__(self, kind: str, res: list, attn: list, resample: nn.Module | None):
        super().__init__()
        self.kind = kind
        self.res, self.attn, self.resample = nn.ModuleList(res), nn.ModuleList(attn), resample
        self.checkpointing = False  # recompute each res block's activations in the backward (UNet.checkpointing)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, skips: list) -> torch.Tensor:
        for res, attn in zip(self.res, self.attn):
            if self.kind == "up":
                h = torch.cat([h, skips.pop()], dim=1)  # skip connection: (B, C + C_skip, H, W)
            if self.checkpointing and torch.is_grad_enabled():  # the same function; dropout's RNG is replayed
                h = attn(checkpoint(res, h, temb, use_reentrant=False))
            else:
                h = attn(res(h, temb))
            if self.kind == "down":
                skips.append(h)
        if self.resample is not None:
            h = self.resample(h)
            if self.kind == "down":
                skips.append(h)
        return h
