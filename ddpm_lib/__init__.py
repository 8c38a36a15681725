"""ddpm_lib: Denoising Diffusion Probabilistic Models (Ho et al. 2020) on CIFAR-10.

The public API, re-exported. Notebook viewers live in `ddpm_lib.widgets`.
"""
from .attention import MultiHeadSelfAttention2d
from .data import DeviceBatches, load_cifar10, load_dataset, load_image_folder, make_shapes, write_cifar10_format
from .device import default_device
from .metrics import evaluate_checkpoint, fid_kid, frechet_distance, generate_images
from .pretrained import load_ddpm_cifar10, unet_from_diffusers
from .samplers import ddim_sample, ddpm_sample, dpm_solver_sample
from .schedule import NoiseSchedule, cosine_betas, diffusion_loss, linear_betas
from .train import TrainConfig, Trainer, load_model
from .unet import PRESETS, UNet, UNetConfig, model_summary, unet_from_preset

__version__ = "0.1.0"

__all__ = [
    "MultiHeadSelfAttention2d",
    "DeviceBatches", "load_cifar10", "load_dataset", "load_image_folder", "make_shapes", "write_cifar10_format",
    "default_device",
    "evaluate_checkpoint", "fid_kid", "frechet_distance", "generate_images",
    "load_ddpm_cifar10", "unet_from_diffusers",
    "ddim_sample", "ddpm_sample", "dpm_solver_sample",
    "NoiseSchedule", "cosine_betas", "diffusion_loss", "linear_betas",
    "TrainConfig", "Trainer", "load_model",
    "PRESETS", "UNet", "UNetConfig", "model_summary", "unet_from_preset",
]
