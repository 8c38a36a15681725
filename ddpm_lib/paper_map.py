"""The paper in the library: each equation and algorithm of Ho et al. (2020) that the series implements, the library
object that implements it and the notebook that builds it; then what the series adds past the paper.

`table(entries)` renders them as notebook 11 shows them, each object's first docstring line read from the code
itself; `verify(entries)` checks that every object resolves and that, for the paper's rows, its source still cites
that equation (tests/test_paper_map.py also checks the notebooks), so the table cannot drift from the code.
"""
from __future__ import annotations

import importlib
import inspect
import re
from typing import NamedTuple


PAPER_CITES = ("Eq. ", "Algorithm ")  # how a row of the paper's is cited


class Entry(NamedTuple):
    cite: str      # as the code cites it: "Eq. 4", "Algorithm 1" (past the paper: the source, e.g. "Song et al. 2021")
    what: str      # what it is, in a few words
    target: str    # the object that implements it, "module:qualname" in ddpm_lib
    notebook: str  # the notebook that builds it, its file name without .ipynb


PAPER = (
    Entry("Eq. 4", "q(x_t | x0): x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps",
          "schedule:NoiseSchedule.q_sample", "01_noise_schedule"),
    Entry("Eq. 5", "the variational bound L, in bits per dimension", "likelihood:variational_bound", "07_evaluation"),
    Entry("Eq. 7", "the posterior q(x_{t-1} | x_t, x0) (Eqs. 6-7): mean mu_tilde, variance beta_tilde",
          "schedule:NoiseSchedule.q_posterior", "04_reverse_process"),
    Entry("Eq. 11", "the model's mean mu_theta from eps_theta", "samplers:ddpm_sample", "06_sampling"),
    Entry("Eq. 12", "L_{t-1} as a weighted error of eps_theta", "likelihood:terms_bpd", "04_reverse_process"),
    Entry("Eq. 13", "the discretised Gaussian decoder p_theta(x0 | x_1)",
          "likelihood:discretized_gaussian_log_likelihood", "07_evaluation"),
    Entry("Eq. 14", "L_simple: the unweighted eps error", "objective:diffusion_loss", "05_training"),
    Entry("Eq. 15", "x0 predicted from x_t and eps_theta", "schedule:NoiseSchedule.predict_x0", "06_sampling"),
    Entry("Algorithm 1", "training", "objective:diffusion_loss", "05_training"),
    Entry("Algorithm 2", "sampling", "samplers:ddpm_sample", "06_sampling"),
)

BEYOND = (
    Entry("Vaswani et al. 2017", "multi-head self-attention on feature maps", "attention:MultiHeadSelfAttention2d",
          "02_attention"),
    Entry("Ho et al. 2020, App. B", "the U-Net with its time embedding", "unet:UNet", "03_unet"),
    Entry("Song et al. 2021", "DDIM, eta between the ODE and Algorithm 2", "samplers:ddim_sample", "06_sampling"),
    Entry("Lu et al. 2022", "DPM-Solver++(2M), a second-order few-step solver", "samplers:dpm_solver_sample",
          "06_sampling"),
    Entry("Heusel et al. 2017", "FID", "metrics:frechet_distance", "07_evaluation"),
    Entry("Ho & Salimans 2022", "classifier-free guidance", "guidance:guided", "08_guidance"),
    Entry("Salimans & Ho 2022; Hang et al. 2023", "x0 and v targets, min-SNR weighting", "objective:Objective",
          "09_prediction_targets"),
    Entry("Karras et al. 2022", "Heun's method on the probability-flow ODE", "samplers:heun_sample",
          "10_continuous_time_and_flow_matching"),
    Entry("Lipman et al. 2023; Liu et al. 2023", "flow matching: the straight path and its time grid",
          "schedule:NoiseSchedule.flow", "10_continuous_time_and_flow_matching"),
)


def resolve(target: str):
    """The object of "module:qualname" in ddpm_lib; a ValueError naming what is missing."""
    module_name, _, qualname = target.partition(":")
    obj = importlib.import_module(f"ddpm_lib.{module_name}")
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{target}: ddpm_lib.{module_name} has no {qualname}")
        obj = getattr(obj, part)
    return obj


def verify(entries=PAPER + BEYOND) -> None:
    """Every entry's object resolves; a row of the paper's (cited "Eq. N" or "Algorithm N") has its object cite that
    in its source (docstring or comments)."""
    for entry in entries:
        obj = resolve(entry.target)
        if entry.cite.startswith(PAPER_CITES) and entry.cite not in inspect.getsource(obj):
            raise ValueError(f"{entry.target} no longer cites {entry.cite} in its source")


def summary(obj) -> str:
    """The first sentence of an object's docstring: its first paragraph up to a full stop before a capital letter or
    a name in backticks (so "Eq. 4" and "et al. 2023" do not end it)."""
    paragraph = " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())
    return re.split(r"(?<=\.)\s+(?=[A-Z`])", paragraph)[0]


def table(entries=PAPER) -> str:
    """A markdown table of `entries`: citation, what it is, the library object with the first sentence of its
    docstring, and the notebook."""
    rows = ["| | what | in the library | notebook |", "|---|---|---|---|"]
    for entry in entries:
        name = "ddpm_lib." + entry.target.replace(":", ".")
        cells = (entry.cite, entry.what, f"`{name}`: {summary(resolve(entry.target))}", entry.notebook)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")  # a | inside a cell
    return "\n".join(rows)
