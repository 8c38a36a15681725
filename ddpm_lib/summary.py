"""model_summary: a UNet's parameters per level and the FLOPs of one forward pass (notebook 03's table).

It reads the UNet's parts by name (time_mlp, label_emb, conv_in, down, mid, up, norm_out, conv_out); ddpm_lib.unet
is imported for type checking only, so the network never depends on its summary.
"""
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from .unet import UNet


@dataclass
class ModelSummary:
    rows: list            # (part, channels, resolution, parameters), from input to output
    total_params: int     # all trainable parameters
    flops_per_image: int  # one forward pass at image_size, by torch.utils.flop_counter (a multiply-add counts 2)
    image_size: int       # the resolution the FLOPs were counted at

    def __str__(self) -> str:
        lines = [f"{'part':<16}{'channels':>9}{'resolution':>12}{'parameters':>14}"]
        lines += [f"{p:<16}{c:>9}{r:>12}{n:>14,}" for p, c, r, n in self.rows]
        lines.append(f"{'total':<37}{self.total_params:>14,}")
        lines.append(f"forward GFLOPs per {self.image_size}x{self.image_size} image: {self.flops_per_image / 1e9:.2f}")
        return "\n".join(lines)


def model_summary(model: "UNet", image_size: int | None = None) -> ModelSummary:
    """Parameters per level of `model` and the FLOPs of one forward pass per image (unconditional)."""
    cfg, size = model.config, image_size or model.config.image_size
    L = len(cfg.ch_list) - 1

    def count(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    def res(i):
        return f"{size >> (i - 1)}x{size >> (i - 1)}"

    rows = [("time embedding", cfg.time_mlp_dim or cfg.temb_dim, "-", count(model.time_mlp))]
    if cfg.num_classes is not None:
        rows.append(("label embedding", cfg.time_mlp_dim or cfg.temb_dim, "-", count(model.label_emb)))
    rows += [("conv_in", cfg.ch_list[1], res(1), count(model.conv_in))]
    rows += [(f"down {i}", cfg.ch_list[i], res(i), count(lvl)) for i, lvl in enumerate(model.down, start=1)]
    rows.append(("mid", cfg.ch_list[-1], res(L), count(model.mid)))
    rows += [(f"up {L - k}", cfg.ch_list[L - k], res(L - k), count(lvl)) for k, lvl in enumerate(model.up)]
    rows.append(("out", cfg.ch_list[0], res(1), count(model.norm_out, model.conv_out)))
    p = next(model.parameters())
    x = torch.zeros(1, cfg.ch_list[0], size, size, device=p.device, dtype=p.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.zeros(1, dtype=torch.long, device=p.device))
    return ModelSummary(rows, count(model), counter.get_total_flops(), size)
