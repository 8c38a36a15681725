"""Notebook support: what every notebook sets up, which model it shows, and (in submodules) its pictures.

`ddpm_lib.nb.widgets` (ipywidgets) and `ddpm_lib.nb.render` (matplotlib) draw the series' figures and sliders;
`ddpm_lib.nb.guidance_toy` is notebook 08's exact toy. They need the notebooks' extra: pip install "ddpm_lib[nb]".
"""
from .runs import MODEL_CHOICES, find_model, is_cifar10, own_checkpoints, training_data_of, training_run
from .session import NotebookSetup, load_training_images, setup_notebook

__all__ = ["MODEL_CHOICES", "NotebookSetup", "find_model", "own_checkpoints", "is_cifar10", "load_training_images",
           "setup_notebook",
           "training_data_of", "training_run"]
