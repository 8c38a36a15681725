"""Named training recipes: a preset, its data and resolution, and the TrainConfig fields it sets.

`QUICK_WIN` is notebook 05's CPU default and the training guide's first command (docs/training.md) (measured by
`benchmarks/knobs.py quick`, docs/knobs/quick_win.md); `FAST` is the Colab recipe; the others are notebook 05's
runs. Every field a
recipe leaves out is TrainConfig's default, the paper's (Adam, grad clip 1, flips, EMA warm-up).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from types import MappingProxyType

from .objective import Objective
from .schedule import NoiseSchedule
from .train_config import TrainConfig
from .unet import PRESETS, UNetConfig
from .utils import check_int

# Recipe.schedule: the paper's linear betas, Nichol & Dhariwal's cosine, or flow matching's evenly spaced s, T = 1000
SCHEDULES = ("linear", "cosine", "flow")
# the recipe benchmark's winning objective on the tiny network (docs/recipes/recipes.md): x0-prediction, min-SNR-5
X0_MIN_SNR = Objective(prediction="x0", weighting="min-snr", snr_gamma=5.0)


@dataclass(frozen=True)
class Recipe:
    preset: str                                 # the UNet preset (PRESETS) it trains
    data: str                                   # its training data by name (load_dataset): "cifar10" or "shapes"
    image_size: int                             # training resolution, pixels a side
    train_steps: int                            # TrainConfig.train_steps: optimizer steps to reach
    batch_size: int                             # TrainConfig.batch_size: the global batch
    lr: float                                   # TrainConfig.lr: Adam's learning rate
    warmup_steps: int                           # TrainConfig.warmup_steps: linear learning-rate warm-up
    ema_decay: float = TrainConfig.ema_decay    # TrainConfig.ema_decay (with the EMA warm-up)
    objective: Objective = Objective()          # what the network predicts and the loss weighting (the paper's: eps,
                                                # uniform, L_simple)
    schedule: str = "linear"                    # the noise schedule (SCHEDULES): the paper's linear betas, cosine, flow
    class_cond: bool = False                    # condition on the data's labels, dropped at cond_drop_prob (guidance)
    name: str | None = None                     # its name in RECIPES, recorded as TrainConfig.recipe (None: ad hoc)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"Recipe.preset: expected one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.data not in ("cifar10", "shapes"):
            raise ValueError(f"Recipe.data: expected 'cifar10' or 'shapes', got {self.data!r}")
        check_int(self.image_size, "Recipe.image_size", 8)
        if not isinstance(self.objective, Objective):
            raise ValueError(f"Recipe.objective: expected an Objective, got {self.objective!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Recipe.schedule: expected one of {SCHEDULES}, got {self.schedule!r}")
        _ = self.train  # TrainConfig checks the fields it sets

    @property
    def train(self) -> TrainConfig:
        """The TrainConfig of this recipe (TrainConfig's defaults elsewhere); `dataclasses.replace` sets the rest."""
        return TrainConfig(train_steps=self.train_steps, batch_size=self.batch_size, lr=self.lr,
                           warmup_steps=self.warmup_steps, ema_decay=self.ema_decay, recipe=self.name)

    @property
    def network(self) -> UNetConfig:
        """The UNetConfig it trains: its preset at its image size."""
        return replace(PRESETS[self.preset], image_size=self.image_size)

    def noise_schedule(self, num_timesteps: int = 1000) -> NoiseSchedule:
        """Its noise schedule with T = `num_timesteps`: the paper's linear betas (scaled by 1000 / T,
        NoiseSchedule.paper), the cosine schedule (Nichol & Dhariwal 2021, Eq. 17) or flow matching's
        (NoiseSchedule.flow)."""
        return {"linear": NoiseSchedule.paper, "cosine": NoiseSchedule.cosine,
                "flow": NoiseSchedule.flow}[self.schedule](num_timesteps)


# The CPU quick win: the tiny preset on 16x16 procedural shapes, which a learner recognises after a few CPU minutes
# (its minutes and share of shape-like samples: docs/knobs/quick_win.md); 10x the paper's learning rate (a small
# network tolerates it), an EMA over the last few hundred steps.
QUICK_WIN = Recipe("tiny", "shapes", 16, train_steps=2200, batch_size=32, lr=2e-3, warmup_steps=50, ema_decay=0.995,
                   objective=X0_MIN_SNR, schedule="cosine", name="quick-win")
# The quick win's settings on real CIFAR-10 at 32x32: what a few CPU minutes make of photographs. Its objective is
# the recipe benchmark's winner (docs/recipes/recipes.md): x0-prediction, min-SNR-5 and the cosine schedule reach
# the paper objective's FID in a fraction of its CPU time.
QUICK_CIFAR10 = Recipe("tiny", "cifar10", 32, train_steps=700, batch_size=32, lr=2e-3, warmup_steps=50, ema_decay=0.995,
                       objective=X0_MIN_SNR, schedule="cosine", name="quick-cifar10")
# The CPU's CIFAR-10 model, shown by notebooks 06-08: quick-cifar10's network and objective, conditioned on the ten
# classes (a label dropped 10% of the time, so one network is also the unconditional model classifier-free guidance
# needs), trained 5,000 steps at batch 64 (6.4 epochs, 14 times quick-cifar10's images) with an EMA over the last
# ~1,000 steps.
CIFAR10_COND = Recipe("tiny", "cifar10", 32, train_steps=5000, batch_size=64, lr=2e-3, warmup_steps=100,
                      ema_decay=0.999, objective=X0_MIN_SNR, schedule="cosine", class_cond=True,
                      name="cifar10-cond")
# The walkthrough's experiment: its network for 3 epochs of CIFAR-10's 50,000 training images at batch 128.
WALKTHROUGH_3_EPOCHS = Recipe("walkthrough", "cifar10", 32, train_steps=math.ceil(3 * 50_000 / 128),
                              batch_size=128, lr=2e-4, warmup_steps=100, name="walkthrough")
# The paper's CIFAR-10 run (Ho et al. 2020, Appendix B): its network, 800,000 steps at batch 128, eps and L_simple.
PAPER_CIFAR10 = Recipe("ddpm-cifar10", "cifar10", 32, train_steps=800_000, batch_size=128, lr=2e-4, warmup_steps=5000,
                       name="paper")
# The Colab recipe: the paper's network at half its width (a quarter of its FLOPs, so about four times the steps per
# session) for 20 epochs at batch 128, the length after which a report on another DDPM code base saw good CIFAR-10
# images (zoubohao/DenoisingDiffusionProbabilityModel-ddpm- #8); one 30-minute T4 session by FLOPs (an estimate,
# notebook 05). lr 5e-4 lies between the paper's 2e-4 and the CPU benchmark's 2e-3, each scaled as 1 / width to
# width 64 (4e-4 and 1e-3); not measured at this size. An EMA over about the last 1,000 steps. The objective is the
# recipe benchmark's winner on the tiny network (QUICK_CIFAR10's), carried over: not measured at this size either.
FAST = Recipe("ddpm-cifar10-half", "cifar10", 32, train_steps=20 * math.ceil(50_000 / 128), batch_size=128, lr=5e-4,
              warmup_steps=500, ema_decay=0.999, objective=X0_MIN_SNR, schedule="cosine",
              name="fast")

RECIPES = MappingProxyType({name: r for r in (QUICK_WIN, QUICK_CIFAR10, CIFAR10_COND, FAST, WALKTHROUGH_3_EPOCHS,
                                               PAPER_CIFAR10) if (name := r.name) is not None})
