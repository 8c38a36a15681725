"""ddpm_lib: Denoising Diffusion Probabilistic Models (Ho et al. 2020) on CIFAR-10.

The public API, re-exported. Notebook viewers live in `ddpm_lib.nb.widgets`.
"""
from .attention import MultiHeadSelfAttention2d
from .checkpoint import load_model, read_checkpoint, resolve_checkpoint
from .data import (CIFAR10_CLASSES, SHAPE_KINDS, DataInfo, DeviceBatches, ImageSet, load_cifar10, load_dataset,
                   load_image_folder, make_shapes, reload_dataset)
from .utils import default_device
from .evaluation import evaluate_checkpoint
from .metrics import fid_kid, frechet_distance, nearest_neighbours
from .interop import load_ddpm_cifar10, objective_from_diffusers, unet_from_diffusers, unet_to_diffusers
from .guidance import guided
from .sampler_steps import Trajectory
from .samplers import (SAMPLERS, ddim_sample, ddpm_sample, dpm_solver_sample, euler_sample, generate_images,
                       heun_sample)
from .objective import Denoiser, Objective, diffusion_loss
from .schedule import NoiseSchedule, cosine_betas, flow_betas, linear_betas
from .shapes import shape_score
from .cifar10 import write_cifar10_format
from .runtime import autocast_dtype
from .train import Trainer
from .train_config import TrainConfig
from .recipes import RECIPES, Recipe
from .summary import model_summary
from .unet import PRESETS, UNet, UNetConfig, unet_from_preset

__version__ = "0.2.0"  # the release's version, read by pyproject.toml (tool.setuptools.dynamic)

__all__ = [
    "MultiHeadSelfAttention2d",
    "CIFAR10_CLASSES", "SHAPE_KINDS", "DataInfo", "DeviceBatches", "ImageSet", "load_cifar10", "load_dataset",
    "load_image_folder", "make_shapes", "reload_dataset", "shape_score", "write_cifar10_format",
    "default_device",
    "evaluate_checkpoint", "fid_kid", "frechet_distance", "nearest_neighbours",
    "load_ddpm_cifar10", "objective_from_diffusers", "unet_from_diffusers", "unet_to_diffusers",
    "SAMPLERS", "Trajectory", "ddim_sample", "ddpm_sample", "dpm_solver_sample", "euler_sample", "heun_sample",
    "generate_images", "guided",
    "Denoiser", "Objective", "diffusion_loss", "NoiseSchedule", "cosine_betas", "flow_betas", "linear_betas",
    "load_model", "read_checkpoint", "resolve_checkpoint",
    "TrainConfig", "Trainer", "autocast_dtype", "RECIPES", "Recipe",
    "PRESETS", "UNet", "UNetConfig", "model_summary", "unet_from_preset",
]
