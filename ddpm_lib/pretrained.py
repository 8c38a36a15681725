"""The official DDPM CIFAR-10 weights (diffusers' google/ddpm-cifar10-32) as a ddpm_lib UNet.

Note: the google/ddpm-cifar10-32 checkpoint is reported to hold the non-EMA weights: its samples score an
FID of about 12, where the paper's EMA weights give 3.17.
"""
import os
import re
from pathlib import Path

import torch

from .device import cache_dir as default_cache
from .unet import UNet, unet_from_preset

REPO_ID = "google/ddpm-cifar10-32"
FILENAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # tried in this order

# diffusers name -> ddpm_lib name, applied in order (old diffusers names for attention included)
_RENAMES = [
    (r"^time_embedding\.linear_1\.", "time_mlp.0."), (r"^time_embedding\.linear_2\.", "time_mlp.2."),
    (r"^down_blocks\.", "down."), (r"^up_blocks\.", "up."), (r"^mid_block\.", "mid."),
    (r"^conv_norm_out\.", "norm_out."), (r"\.resnets\.", ".res."), (r"\.attentions\.", ".attn."),
    (r"\.(down|up)samplers\.0\.", ".resample."), (r"\.time_emb_proj\.", ".temb_proj."),
    (r"\.conv_shortcut\.", ".skip."), (r"\.group_norm\.", ".norm."), (r"\.(to_out\.0|proj_attn)\.", ".proj_out."),
    (r"\.(to_q|query)\.", ".q."), (r"\.(to_k|key)\.", ".k."), (r"\.(to_v|value)\.", ".v."),
]
# config values of a diffusers UNet2DModel that change the function without changing any weight's name or shape
_EXPECTED_CONFIG = {"flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6, "act_fn": "silu",
                    "time_embedding_type": "positional", "center_input_sample": False, "downsample_padding": 0,
                    "mid_block_scale_factor": 1, "resnet_time_scale_shift": "default"}


def unet_from_diffusers(model_or_state_dict) -> UNet:
    """A diffusers UNet2DModel (or its state dict) in the google/ddpm-cifar10-32 layout -> the "ddpm-cifar10" UNet.

    q, k, v (Linear layers there) become the stacked 1x1 conv `qkv`; the output Linear becomes the 1x1 `proj_out`.
    """
    config = getattr(model_or_state_dict, "config", None)
    if config is not None:
        wrong = {k: config.get(k) for k, v in _EXPECTED_CONFIG.items() if k in config and config.get(k) != v}
        if config.get("attention_head_dim") not in (None, 256):  # one head of 256 channels
            wrong["attention_head_dim"] = config.get("attention_head_dim")
        if wrong:
            raise ValueError(f"model_or_state_dict: config {wrong} differs from google/ddpm-cifar10-32's")
    state = model_or_state_dict.state_dict() if hasattr(model_or_state_dict, "state_dict") else model_or_state_dict
    renamed = {}
    for key, value in state.items():
        for pattern, new in _RENAMES:
            key = re.sub(pattern, new, key)
        renamed[key] = value
    for key in [k for k in renamed if re.search(r"\.q\.(weight|bias)$", k)]:  # (C, C) x 3 -> (3C, C)
        prefix, kind = key.rsplit(".q.", 1)
        renamed[f"{prefix}.qkv.{kind}"] = torch.cat([renamed.pop(f"{prefix}.{n}.{kind}") for n in "qkv"])
    with torch.device("meta"):  # no time spent initialising weights that are about to be replaced
        model = unet_from_preset("ddpm-cifar10")
    target = model.state_dict()
    missing, unexpected = sorted(set(target) - set(renamed)), sorted(set(renamed) - set(target))
    if missing or unexpected:
        raise ValueError(f"model_or_state_dict is not in the google/ddpm-cifar10-32 layout: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]} ({len(missing)} and {len(unexpected)} in all, ddpm_lib names)")
    for key, value in renamed.items():
        if value.ndim == 2 and target[key].ndim == 4:
            renamed[key] = value[:, :, None, None]  # Linear over channels == 1x1 conv
        if renamed[key].shape != target[key].shape:
            raise ValueError(f"model_or_state_dict: {key} has shape {tuple(renamed[key].shape)}, "
                             f"expected {tuple(target[key].shape)}")
        renamed[key] = renamed[key].detach().to(torch.float32, copy=True)  # never shares memory with the source
    model.load_state_dict(renamed, assign=True)
    return model


def _download(folder: Path) -> Path:
    from huggingface_hub import hf_hub_download

    errors = []
    for name in FILENAMES:
        try:
            return Path(hf_hub_download(REPO_ID, name, local_dir=folder))
        except Exception as e:  # offline, file absent in the repo, hub down: all end in the message below
            errors.append(f"{name}: {type(e).__name__}: {e}")
    raise FileNotFoundError(
        f"could not download the DDPM CIFAR-10 weights from https://huggingface.co/{REPO_ID} ({'; '.join(errors)}).\n"
        f"To place them by hand: download {FILENAMES[0]} (or {FILENAMES[1]}) from "
        f"https://huggingface.co/{REPO_ID}/tree/main on a machine that is online and copy it to {folder}/ "
        f"(or pass cache_dir=DIR and put it in DIR/{folder.name}/).")


def load_ddpm_cifar10(cache_dir: str | os.PathLike | None = None) -> UNet:
    """The paper's CIFAR-10 network with the google/ddpm-cifar10-32 weights (the non-EMA ones, see module doc).

    Looks in cache_dir/ddpm-cifar10-32/ (cache_dir defaults to ddpm_lib.device.cache_dir()) and downloads there with
    huggingface_hub when the file is absent; offline, raises FileNotFoundError saying where to put it.
    """
    folder = (Path(cache_dir) if cache_dir is not None else default_cache()) / "ddpm-cifar10-32"
    path = next((folder / n for n in FILENAMES if (folder / n).is_file()), None) or _download(folder)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return unet_from_diffusers(state)
