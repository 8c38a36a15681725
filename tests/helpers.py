"""Pieces several test modules share: `from helpers import MICRO, perturbed, Payload` (tests/ is on sys.path).

Fixtures live in conftest.py; plain objects and functions live here, because two files named conftest.py
(the repository's and this folder's) cannot both be imported by name.
"""
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import torch
from torch import nn

from ddpm_lib.objective import Denoiser, Objective
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


def write_image_folder(folder, images):
    """Save uint8 images (N, 3, H, W) as PNG files 000.png, 001.png, ... in a new folder; returns the folder."""
    from PIL import Image

    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return folder


class ChannelMeans(nn.Module):
    """A stand-in for Inception (whose weights would be downloaded): uint8 (N,3,H,W) -> (N, 3) channel means."""

    def forward(self, images):
        return images.float().mean(dim=(2, 3))


class Payload:
    """A pickle that runs `touch pwned` when loaded by an unsafe unpickler: loaders must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


# ---- Gaussian data, whose ideal noise predictor is known in closed form

MU, S = 0.2, 0.25                      # Gaussian data x0 ~ N(MU, S^2), per element


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def fake_model(x_t, t):
    """A fixed nonlinear 'network' predicting eps (Denoiser(fake_model, schedule), the default objective): eps depends
    on x_t and t; its x0 predictions leave [-1, 1] at large t."""
    return torch.tanh(1.3 * x_t) * 0.9 + 0.1 * torch.cos(t.to(x_t.dtype) / 37.0).view(-1, 1, 1, 1)


def gaussian_eps(abar, x_t, mu, s):
    """E[eps | x_t] for x0 ~ N(mu, s^2) and x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (both Gaussian)."""
    return (1 - abar).sqrt() * (x_t - abar.sqrt() * mu) / (abar * s ** 2 + 1 - abar)


def gaussian_x0(abar, x_t, mu, s):
    """E[x0 | x_t] for x0 ~ N(mu, s^2): the Gaussian's regression of x0 on x_t."""
    return mu + abar.sqrt() * s ** 2 / (abar * s ** 2 + 1 - abar) * (x_t - abar.sqrt() * mu)


class IdealEps:
    """The ideal network for x0 ~ N(MU, S^2), alpha_bar taken from the betas alone (float64): a plain function of
    (x_t, t) whose output is E[eps | x_t], or with prediction="x0" E[x0 | x_t], with "v" E[v | x_t] =
    sqrt(abar) E[eps | x_t] - sqrt(1 - abar) E[x0 | x_t] (v is linear in eps and x0), with "flow" E[eps - x0 | z_s]
    of z_s = x_t / (sqrt(abar) + sqrt(1 - abar)) at time s T, alpha_bar = (1 - s)^2 / ((1 - s)^2 + s^2) (what a flow
    network is called with, Objective.net_input). The network does not know what it predicts (a UNet does not
    either): `denoiser()` is it on its schedule with the matching objective, Denoiser(net, schedule,
    Objective(prediction))."""

    def __init__(self, schedule, prediction="eps"):
        self.schedule, self.prediction = schedule, prediction
        self.abar = torch.cumprod(1 - schedule.state_dict()["betas"], 0)

    def __call__(self, x_t, t):
        if self.prediction == "flow":                                     # x_t is z_s, t is s T
            s = (t.to(x_t.dtype) / len(self.abar)).view(-1, 1, 1, 1)
            abar = (1 - s) ** 2 / ((1 - s) ** 2 + s ** 2)
            x_t = x_t * (abar.sqrt() + (1 - abar).sqrt())
            return gaussian_eps(abar, x_t, MU, S) - gaussian_x0(abar, x_t, MU, S)
        abar = self.abar.to(x_t.device)[t].to(x_t.dtype).view(-1, 1, 1, 1)
        eps, x0 = gaussian_eps(abar, x_t, MU, S), gaussian_x0(abar, x_t, MU, S)
        return {"eps": eps, "x0": x0, "v": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[self.prediction]

    def denoiser(self) -> Denoiser:
        """This network on its schedule, its output read as `prediction`."""
        return Denoiser(self, self.schedule, Objective(prediction=self.prediction))


def check_moments(x, tol_mean, tol_sd, mu=MU, s=S):
    """x's mean and sd within the tolerances of (mu, s), plus 4 standard errors of their estimates."""
    n = x.numel()
    assert abs(x.mean().item() - mu) < tol_mean + 4 * s / math.sqrt(n)
    assert abs(x.std().item() - s) < tol_sd + 4 * s / math.sqrt(2 * n)


# For the local servers the tests start (JupyterLab): urllib's global opener keeps the proxies of the environment
# of its first use, and a test that sets an unreachable proxy (test_cli's OFFLINE) may have been first in this
# process; localhost never goes through a proxy.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))

REPO = Path(__file__).resolve().parents[1]


def run_ok(*cmd, **kwargs) -> str:
    """Run a command; its stdout, or an assertion error with its output."""
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def package_source(tmp: Path) -> Path:
    """A copy of what ddpm_lib's build reads (the package, pyproject.toml, README.md): builds write nothing into
    the checkout."""
    src = tmp / "src"
    shutil.copytree(REPO / "ddpm_lib", src / "ddpm_lib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    return src


def venv_reusing_this_one(env: Path, leave_out: tuple[str, ...], pip: bool = False) -> tuple[Path, Path]:
    """A fresh venv at `env` that sees this environment's installed packages after its own, less the
    distributions whose names start with `leave_out`; returns (its python, its site-packages)."""
    run_ok(sys.executable, "-m", "venv", *(() if pip else ("--without-pip",)), env)
    python = env / "bin" / "python"
    site = Path(run_ok(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    view = env / "reused-site-packages"  # this environment's site-packages, less what the venv has of its own
    view.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().replace("-", "_").startswith(leave_out):
            (view / entry.name).symlink_to(entry)
    (site / "zz-reused.pth").write_text(f"{view}\n")  # after the venv's own packages
    return python, site
