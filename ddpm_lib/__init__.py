"""ddpm_lib: Denoising Diffusion Probabilistic Models (Ho et al. 2020) on CIFAR-10."""
from .device import default_device

__version__ = "0.1.0"
