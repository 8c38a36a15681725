"""The network of the paper's eps_theta(x_t, t): a U-Net with a sinusoidal time embedding and self-attention.

What its output means (eps, x0 or v) is the objective's (ddpm_lib.objective), not the network's.

Parts to whole: time embedding, the blocks of a level (ddpm_lib.unet_blocks: ResBlock, resampling, Level),
UNetConfig, UNet, presets.
The structure follows the DDPM paper's TensorFlow code (diffusion_tf/models/unet.py), which diffusers'
google/ddpm-cifar10-32 mirrors; the walkthrough's knobs (ch_list, attention_layer, num_heads, temb_dim) set its numbers.
With `num_classes` set, a learned label embedding is added to the time embedding (class conditioning, as in
improved-diffusion), with one extra "null" label for classifier-free guidance.
model_summary (parameters per level, FLOPs) lives in ddpm_lib.summary.
"""
import math
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadSelfAttention2d
from .unet_blocks import Downsample, Level, ResBlock, Upsample
from .cli_args import FieldError, channel_counts, flag, level_indices, positive_int, probability
from .utils import check_labels


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): [sin(t * f_i), cos(t * f_i)], f_i = 10000^(-i / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def attention_channels(ch_list, attention_layer, mid_attention: bool) -> tuple:
    """The channels of the levels with self-attention: ch_list[i] for i in attention_layer, then the middle's
    (ch_list[-1]) when mid_attention. One definition for UNetConfig and the diffusers conversion."""
    return tuple(ch_list[i] for i in attention_layer) + ((ch_list[-1],) if mid_attention else ())


@dataclass(frozen=True)
class UNetConfig:
    ch_list: tuple = field(  # image channels, then each level's channels (H, W halve between levels)
        default=(3, 64, 128, 256, 512),
        metadata=flag("--ch-list", channel_counts, "image channels, then each level's", metavar="C,C,..."))
    attention_layer: tuple = field(  # levels with self-attention, as indices into ch_list: level i has ch_list[i]
        # channels at resolution image_size / 2**(i-1); attention follows every res block of that level, going down
        # and going up (1: the first, full-size level)
        default=(1, 2), metadata=flag("--attention-layer", level_indices, "levels with self-attention, indices into "
                                      "--ch-list, or none", metavar="L,L"))
    num_heads: int = field(  # attention heads; each sees channels / num_heads of the channels
        default=4, metadata=flag("--heads", positive_int, "attention heads", metavar="H"))
    temb_dim: int = field(  # size of the sinusoidal time embedding (even)
        default=256, metadata=flag("--temb-dim", positive_int, "size of the sinusoidal time embedding", metavar="D"))
    num_res_blocks: int = 1          # res blocks per level going down; one more per level going up
    dropout: float = field(  # dropout inside every res block
        default=0.1, metadata=flag("--dropout", probability, "dropout in the res blocks"))
    norm_groups: int = 32            # GroupNorm groups; must divide every level's channels
    norm_eps: float = 1e-5           # GroupNorm epsilon (the paper's TF code: 1e-6)
    time_mlp_dim: int = 0            # 0: blocks map the sinusoid directly; > 0: Linear-SiLU-Linear-SiLU to it first
    mid_attention: bool = False      # self-attention between the two res blocks at the bottom
    resample_with_conv: bool = True  # 3x3 convs in down/up-sampling (else average pool / plain nearest)
    image_size: int = field(  # resolution it is built for (summaries, samplers); multiples of 2**(levels-1) run
        default=32, metadata=flag("--image-size", positive_int, "training resolution; data is resized "
                                                          "to it (a folder without it: its images' own size)"))
    num_classes: int | None = None   # None: unconditional; K: labels 0..K-1 (-1: no label) added to the time embedding

    @property
    def attention_channels(self) -> tuple:
        """The channels of each self-attention layer's level, down the network (the middle's last)."""
        return attention_channels(self.ch_list, self.attention_layer, self.mid_attention)

    def __post_init__(self):
        for name in ("ch_list", "attention_layer"):  # lists from checkpoints (JSON) -> tuples; frozen, hence setattr
            object.__setattr__(self, name, tuple(getattr(self, name)))
        levels = self.ch_list[1:]
        if len(self.ch_list) < 2 or any(not isinstance(c, int) or c < 1 for c in self.ch_list):
            raise FieldError("UNetConfig", "ch_list", f"must be >= 2 positive ints (image channels, then levels); got "
                             f"{self.ch_list}")
        if self.norm_groups < 1 or any(c % self.norm_groups for c in levels):
            raise FieldError("UNetConfig", "norm_groups", f"must divide every level's channels {levels} (ch_list); "
                             f"got {self.norm_groups}", ("ch_list",))
        bad = [i for i in self.attention_layer if not isinstance(i, int) or not 1 <= i < len(self.ch_list)]
        if bad:
            raise FieldError("UNetConfig", "attention_layer", f"must name levels 1..{len(self.ch_list) - 1} of "
                             f"ch_list; {bad} outside them", ("ch_list",))
        attn_ch = self.attention_channels
        if self.num_heads < 1 or any(c % self.num_heads for c in attn_ch):
            raise FieldError("UNetConfig", "num_heads", f"must divide the channels {list(attn_ch)} of the attention "
                             f"levels; got {self.num_heads}", ("attention_layer", "ch_list"))
        if self.temb_dim < 4 or self.temb_dim % 2:
            raise FieldError("UNetConfig", "temb_dim", f"must be even and >= 4; got {self.temb_dim}")
        if self.num_res_blocks < 1:
            raise FieldError("UNetConfig", "num_res_blocks", f"must be >= 1; got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise FieldError("UNetConfig", "dropout", f"must be in [0, 1); got {self.dropout}")
        if self.norm_eps <= 0:
            raise FieldError("UNetConfig", "norm_eps", f"must be > 0; got {self.norm_eps}")
        if self.time_mlp_dim < 0:
            raise FieldError("UNetConfig", "time_mlp_dim", f"must be >= 0 (0: no MLP); got {self.time_mlp_dim}")
        if self.image_size < 1 or self.image_size % self.downsample_factor:
            raise FieldError("UNetConfig", "image_size", f"must be a multiple of {self.downsample_factor} (the "
                             f"{len(levels)} levels of ch_list halve it {len(levels) - 1} times); got "
                             f"{self.image_size}", ("ch_list",))
        if self.num_classes is not None and (type(self.num_classes) is not int or self.num_classes < 1):
            raise FieldError("UNetConfig", "num_classes", f"must be None (unconditional) or a positive int; got "
                             f"{self.num_classes!r}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_list) - 2)


class UNet(nn.Module):
    """(B, C, H, W) float x_t, (B,) int64 timesteps and optional (B,) int64 labels -> (B, C, H, W): the paper's
    eps_theta, or x0 or v under another objective (ddpm_lib.objective)."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        cfg = self.config = config if config is not None else UNetConfig()
        levels, nrb = cfg.ch_list[1:], cfg.num_res_blocks
        temb_ch = cfg.time_mlp_dim or cfg.temb_dim
        self.time_mlp = nn.Identity() if not cfg.time_mlp_dim else nn.Sequential(
            nn.Linear(cfg.temb_dim, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch), nn.SiLU())
        if cfg.num_classes is not None:  # row num_classes: the "null" label (-1), learned like the others
            self.label_emb = nn.Embedding(cfg.num_classes + 1, temb_ch)

        def res(in_ch, out_ch):
            return ResBlock(in_ch, out_ch, temb_ch, cfg.dropout, cfg.norm_groups, cfg.norm_eps)

        def attn(ch, used):
            return MultiHeadSelfAttention2d(ch, cfg.num_heads, cfg.norm_groups, cfg.norm_eps) if used else nn.Identity()

        self.conv_in = nn.Conv2d(cfg.ch_list[0], levels[0], 3, padding=1)
        ch, skips, down = levels[0], [levels[0]], []
        for i, out_ch in enumerate(levels, start=1):  # i indexes ch_list, as attention_layer does
            blocks = []
            for _ in range(nrb):
                blocks.append(res(ch, out_ch))
                ch = out_ch
                skips.append(ch)
            last = i == len(levels)
            down.append(Level("down", blocks, [attn(ch, i in cfg.attention_layer) for _ in blocks],
                              None if last else Downsample(ch, cfg.resample_with_conv)))
            skips += [] if last else [ch]
        self.down = nn.ModuleList(down)
        self.mid = Level("mid", [res(ch, ch), res(ch, ch)], [attn(ch, cfg.mid_attention), nn.Identity()], None)
        up = []
        for i in reversed(range(1, len(levels) + 1)):
            blocks = []
            for _ in range(nrb + 1):
                blocks.append(res(ch + skips.pop(), levels[i - 1]))
                ch = levels[i - 1]
            up.append(Level("up", blocks, [attn(ch, i in cfg.attention_layer) for _ in blocks],
                            None if i == 1 else Upsample(ch, cfg.resample_with_conv)))
        self.up = nn.ModuleList(up)  # deepest level first
        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch, cfg.ch_list[0], 3, padding=1)
        self._init_weights()

    def _init_weights(self):
        """The TF code's init: Xavier-uniform weights, zero biases, last layer of each residual branch ~ 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            if isinstance(m, MultiHeadSelfAttention2d):
                for w in m.qkv.weight.chunk(3):  # q, k, v are three separate 1x1 layers there
                    nn.init.xavier_uniform_(w)
        outs = [m.conv2 for m in self.modules() if isinstance(m, ResBlock)] + [self.conv_out] + [
            m.proj_out for m in self.modules() if isinstance(m, MultiHeadSelfAttention2d)]
        for m in outs:
            nn.init.xavier_uniform_(m.weight, gain=1e-5)  # TF default_init(scale=1e-10)

    def _check_input(self, x: torch.Tensor, t: torch.Tensor):
        """Shapes only (Python ints): no host synchronisation."""
        cfg, f = self.config, self.config.downsample_factor
        if x.ndim != 4 or x.shape[1] != cfg.ch_list[0]:
            raise ValueError(f"x must be (B, {cfg.ch_list[0]}, H, W); got shape {tuple(x.shape)}")
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"x's height and width must be multiples of {f} ({len(cfg.ch_list) - 1} levels in "
                             f"ch_list halve them {len(cfg.ch_list) - 2} times); got {x.shape[2]}x{x.shape[3]}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), one timestep per image; got {tuple(t.shape)}")

    def _label_index(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """Labels (B,) in [-1, num_classes) -> rows of label_emb, -1 (and y=None: all rows) -> the null row."""
        K = self.config.num_classes
        assert K is not None, "_label_index is for class-conditional networks"
        if y is None:
            return torch.full((batch,), K, dtype=torch.long, device=device)
        y = check_labels(y, K, batch, name="y").to(device)
        return torch.where(y < 0, K, y)

    @property
    def checkpointing(self) -> bool:
        """Activation checkpointing of the res blocks (torch.utils.checkpoint): their activations are recomputed
        in the backward pass instead of kept, for less memory at about a third more compute; same outputs."""
        return all(level.checkpointing for level in (*self.down, self.mid, *self.up))

    @checkpointing.setter
    def checkpointing(self, on: bool) -> None:
        for level in (*self.down, self.mid, *self.up):
            level.checkpointing = bool(on)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1]; t int64 (B,) or an int; y int64 (B,) labels, -1 = no label (None: none at all)."""
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        self._check_input(x, t)
        if y is not None and self.config.num_classes is None:
            raise ValueError("y: this UNet is unconditional (config.num_classes is None); pass y=None")
        temb = self.time_mlp(timestep_embedding(t, self.config.temb_dim).to(self.conv_in.weight.dtype))
        if self.config.num_classes is not None:
            temb = temb + self.label_emb(self._label_index(y, x.shape[0], x.device))  # in the space the blocks use
        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            h = level(h, temb, skips)  # pushes every output
        h = self.mid(h, temb, skips)
        for level in self.up:
            h = level(h, temb, skips)  # pops a skip before every res block
        return self.conv_out(F.silu(self.norm_out(h)))


# The paper's CIFAR-10 network (ch=128, ch_mult=(1, 2, 2, 2), 2 res blocks, attention at 16x16): 35,746,307 params.
_PAPER = UNetConfig(ch_list=(3, 128, 256, 256, 256), attention_layer=(2,), num_heads=1, temb_dim=128, num_res_blocks=2,
                    dropout=0.1, norm_groups=32, norm_eps=1e-6, time_mlp_dim=512, mid_attention=True)
PRESETS = MappingProxyType({  # read-only: change a copy, unet_from_preset(name, **overrides)
    # The walkthrough's network: ch_list [3, 64, 128, 256, 512], 4-head attention on the 64- and 128-channel levels.
    "walkthrough": UNetConfig(),
    "ddpm-cifar10": _PAPER,
    # The paper's network at half its width (ch=64): 8,952,067 params and 3.2 forward GFLOPs per 32x32 image, a
    # quarter of the paper's 12.4, so about four times the steps per GPU session (the `fast` recipe's network).
    "ddpm-cifar10-half": replace(_PAPER, ch_list=(3, 64, 128, 128, 128), temb_dim=64, time_mlp_dim=256),
    # Small enough to learn the shapes data set on a laptop CPU in minutes.
    "tiny": UNetConfig(ch_list=(3, 32, 64, 64), attention_layer=(3,), num_heads=4, temb_dim=64, num_res_blocks=1,
                       dropout=0.0, norm_groups=8, time_mlp_dim=128, mid_attention=True),
})


def unet_from_preset(name: str, **overrides) -> UNet:
    """UNet(PRESETS[name] with `overrides` replacing fields), e.g. unet_from_preset("walkthrough", num_heads=8)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    unknown = set(overrides) - {f.name for f in fields(UNetConfig)}
    if unknown:
        raise ValueError(f"unknown UNetConfig fields {sorted(unknown)}")
    return UNet(replace(PRESETS[name], **overrides))
