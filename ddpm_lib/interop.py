"""The official DDPM CIFAR-10 weights (diffusers' google/ddpm-cifar10-32) as a ddpm_lib UNet, and the way back:
a ddpm_lib UNet as a diffusers UNet2DModel, a NoiseSchedule as a DDPMScheduler (a flow-matching network's as a
FlowMatchEulerDiscreteScheduler), a checkpoint as a DDPMPipeline.

Note: the google/ddpm-cifar10-32 checkpoint is reported to hold the non-EMA weights: its samples score an
FID of about 12, where the paper's EMA weights give 3.17.
"""
import os
import re
from pathlib import Path

import torch

from .utils import cache_dir as default_cache
from .objective import Denoiser, Objective
from .schedule import NoiseSchedule
from .unet import PRESETS, UNet, UNetConfig, attention_channels

REPO_ID = "google/ddpm-cifar10-32"
# what the network predicts, in diffusers' words (DDPMScheduler's prediction_type)
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
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
# UNet2DModel settings that change the function without changing any weight's name or shape; ddpm_lib's UNet
# (the paper's TF code) always computes these
_FIXED_CONFIG = {"flip_sin_to_cos": False, "freq_shift": 1, "act_fn": "silu", "time_embedding_type": "positional",
                 "center_input_sample": False, "downsample_padding": 0, "mid_block_scale_factor": 1,
                 "resnet_time_scale_shift": "default", "downsample_type": "conv", "upsample_type": "conv",
                 "mid_block_type": "UNetMidBlock2D", "class_embed_type": None, "num_class_embeds": None,
                 "attn_norm_num_groups": None}


def _ours(key: str) -> tuple:
    """A diffusers parameter name -> (ddpm_lib name, index of its third of the stacked `qkv`, or None)."""
    for pattern, new in _RENAMES:
        key = re.sub(pattern, new, key)
    m = re.fullmatch(r"(.*)\.([qkv])\.(weight|bias)", key)
    return (f"{m[1]}.qkv.{m[3]}", "qkv".index(m[2])) if m else (key, None)


def diffusers_config(config: UNetConfig) -> dict:
    """The UNet2DModel arguments that compute the same function as UNet(config); ValueError saying why there are none.

    diffusers' UNet2DModel always maps the sinusoid of block_out_channels[0] entries through Linear-SiLU-Linear,
    resamples with convolutions and has one attention head size for every level.
    """
    levels, why = config.ch_list[1:], []
    if getattr(config, "num_classes", None) is not None:
        why.append(f"num_classes={config.num_classes} (class-conditional networks are not exported)")
    if config.time_mlp_dim == 0:
        why.append("time_mlp_dim=0 (diffusers always applies a Linear-SiLU-Linear to the time embedding)")
    if config.temb_dim != levels[0]:
        why.append(f"temb_dim={config.temb_dim} != ch_list[1]={levels[0]} (diffusers' sinusoid has as many "
                   f"entries as the first level's channels)")
    if not config.resample_with_conv:
        why.append("resample_with_conv=False (diffusers resamples with convolutions)")
    attn_ch, head_dim = config.attention_channels, None
    if config.num_heads > 1 and attn_ch:
        if len(set(attn_ch)) > 1:
            why.append(f"num_heads={config.num_heads} on attention levels of channels {attn_ch} (diffusers has "
                       f"one attention_head_dim for every level: use num_heads=1 or equal channels)")
        head_dim = attn_ch[0] // config.num_heads
    if why:
        raise ValueError("config: diffusers' UNet2DModel cannot express " + "; ".join(why))
    attn = set(config.attention_layer)
    return dict(sample_size=config.image_size, in_channels=config.ch_list[0], out_channels=config.ch_list[0],
                block_out_channels=levels, layers_per_block=config.num_res_blocks,
                down_block_types=tuple("AttnDownBlock2D" if i in attn else "DownBlock2D"
                                       for i in range(1, len(levels) + 1)),
                up_block_types=tuple("AttnUpBlock2D" if i in attn else "UpBlock2D" for i in range(len(levels), 0, -1)),
                attention_head_dim=head_dim, norm_num_groups=config.norm_groups, norm_eps=config.norm_eps,
                dropout=config.dropout, time_embedding_dim=config.time_mlp_dim, add_attention=config.mid_attention,
                **_FIXED_CONFIG)


def _config_from_diffusers(config) -> UNetConfig:
    """The UNetConfig of a UNet2DModel's config (the inverse of diffusers_config); ValueError where there is none."""
    wrong = {k: config.get(k) for k, v in _FIXED_CONFIG.items() if k in config and config.get(k) != v}
    levels = tuple(config.get("block_out_channels", ()))
    down, up = tuple(config.get("down_block_types", ())), tuple(config.get("up_block_types", ()))
    attention_layer = tuple(i for i, kind in enumerate(down, start=1) if kind == "AttnDownBlock2D")
    expected_up = tuple("AttnUpBlock2D" if i in attention_layer else "UpBlock2D" for i in range(len(down), 0, -1))
    if set(down) - {"DownBlock2D", "AttnDownBlock2D"} or up != expected_up or len(down) != len(levels):
        wrong.update(down_block_types=down, up_block_types=up)
    if config.get("in_channels") != config.get("out_channels"):
        wrong["out_channels"] = config.get("out_channels")
    size = config.get("sample_size") or 32
    if isinstance(size, (tuple, list)):
        wrong.update({} if size[0] == size[-1] else {"sample_size": size})
        size = size[0]
    mid_attention = config.get("add_attention", True)
    head_dim = config.get("attention_head_dim")
    attn_ch = attention_channels((0, *levels), [i for i in attention_layer if i <= len(levels)], mid_attention)
    heads = {1} if head_dim is None else {c // head_dim for c in attn_ch if c % head_dim == 0}
    if len(heads) > 1 or (attn_ch and any(c % (head_dim or c) for c in attn_ch)):
        wrong["attention_head_dim"] = head_dim
    if wrong:
        raise ValueError(f"model_or_state_dict: config {wrong} differs from what ddpm_lib's UNet computes")
    return UNetConfig(ch_list=(config.get("in_channels", 3), *levels), attention_layer=attention_layer,
                      num_heads=heads.pop() if heads else 1, temb_dim=levels[0],
                      num_res_blocks=config.get("layers_per_block"), dropout=config.get("dropout", 0.0),
                      norm_groups=config.get("norm_num_groups"), norm_eps=config.get("norm_eps"),
                      time_mlp_dim=config.get("time_embedding_dim") or 4 * levels[0], mid_attention=mid_attention,
                      resample_with_conv=True, image_size=size)


def objective_from_diffusers(prediction_type: str = "epsilon") -> Objective:
    """The Objective of a diffusers scheduler's prediction_type ("epsilon", "sample" or "v_prediction"; diffusers
    keeps what the network outputs there, not in the UNet): eps, x0 or v."""
    ours = {v: k for k, v in PREDICTION_TYPES.items()}
    if prediction_type not in ours:
        raise ValueError(f"prediction_type must be one of {tuple(ours)} (diffusers' names), got {prediction_type!r}")
    return Objective(prediction=ours[prediction_type])


def unet_from_diffusers(model_or_state_dict) -> UNet:
    """A diffusers UNet2DModel -> the UNet of the same layout (its config read); a bare state dict -> "ddpm-cifar10".

    q, k, v (Linear layers there) become the stacked 1x1 conv `qkv`; the output Linear becomes the 1x1 `proj_out`.
    What the output means is the scheduler's prediction_type (objective_from_diffusers).
    The result is a trainable copy in float32.
    """
    config = getattr(model_or_state_dict, "config", None)
    layout = "its config's layout" if config is not None else "the google/ddpm-cifar10-32 layout"
    config = _config_from_diffusers(config) if config is not None else PRESETS["ddpm-cifar10"]
    state = model_or_state_dict.state_dict() if hasattr(model_or_state_dict, "state_dict") else model_or_state_dict
    renamed: dict[str, torch.Tensor] = {}
    thirds: dict[str, dict[int, torch.Tensor]] = {}  # q, k, v of one attention block
    for key, value in state.items():
        name, third = _ours(key)
        if third is None:
            renamed[name] = value
        else:
            thirds.setdefault(name, {})[third] = value
    for name, parts in thirds.items():  # (C, C) x 3 -> (3C, C)
        if len(parts) == 3:
            renamed[name] = torch.cat([parts[i] for i in range(3)])
    with torch.device("meta"):  # no time spent initialising weights that are about to be replaced
        model = UNet(config)
    target = model.state_dict()
    missing, unexpected = sorted(set(target) - set(renamed)), sorted(set(renamed) - set(target))
    if missing or unexpected:
        raise ValueError(f"model_or_state_dict is not in {layout}: missing {missing[:5]}, "
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


def unet_to_diffusers(unet: UNet):
    """The diffusers UNet2DModel computing the same function as `unet` (float32, on unet's device, its train/eval
    mode); ValueError when diffusers cannot express the network (see diffusers_config)."""
    from diffusers import UNet2DModel

    config = diffusers_config(unet.config)
    ours = unet.state_dict()
    model = UNet2DModel(**config)
    state, used = {}, set()
    for key, like in model.state_dict().items():
        name, third = _ours(key)
        value = ours[name] if third is None else ours[name].chunk(3)[third]  # (3C, C, 1, 1) -> (C, C, 1, 1)
        state[key] = value.reshape(like.shape).detach().to("cpu", torch.float32, copy=True)  # 1x1 conv -> Linear
        used.add(name)
    if set(ours) - used:
        raise ValueError(f"unet: parameters {sorted(set(ours) - used)[:5]} have no place in diffusers' UNet2DModel")
    model.load_state_dict(state)
    return model.to(next(unet.parameters()).device).train(unet.training)


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

    Looks in cache_dir/ddpm-cifar10-32/ (cache_dir defaults to ddpm_lib.utils.cache_dir()) and downloads there with
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


def scheduler_config(schedule: NoiseSchedule, objective: Objective | None = None) -> dict:
    """DDPMScheduler arguments for `schedule` and a network trained for `objective` (default: eps): diffusers' names
    for linear and cosine betas, else the betas themselves.

    variance_type "fixed_large" is sigma_t^2 = beta_t, Algorithm 2 as the paper ran it on CIFAR-10 (ddpm_sample's
    variance="beta"); clip_sample clips the predicted x0 to [-1, 1] at every step as ddpm_lib's samplers do.
    """
    prediction = (objective or Objective()).prediction
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"objective: a {prediction!r} network has no DDPMScheduler (expected one of "
                         f"{tuple(PREDICTION_TYPES)}); save_diffusers_pipeline gives a flow network its scheduler")
    config = dict(num_train_timesteps=schedule.num_timesteps, variance_type="fixed_large", clip_sample=True,
                  clip_sample_range=1.0, prediction_type=PREDICTION_TYPES[prediction])
    if schedule.kind == "linear":
        return {**config, "beta_schedule": "linear", "beta_start": schedule.params["beta_min"],
                "beta_end": schedule.params["beta_max"]}
    if schedule.kind == "cosine" and schedule.params["s"] == 0.008:
        return {**config, "beta_schedule": "squaredcos_cap_v2"}  # Nichol & Dhariwal's cosine, betas capped at 0.999
    return {**config, "trained_betas": schedule.state_dict()["betas"].tolist()}


def save_diffusers_pipeline(denoiser: Denoiser, out_dir) -> Path:
    """Write a diffusers DDPMPipeline folder (safetensors weights) of a UNet's denoiser (its network, schedule and
    prediction type) that DDPMPipeline.from_pretrained(out_dir) loads.

    A flow-matching network (prediction "flow" on the flow schedule) gets diffusers' FlowMatchEulerDiscreteScheduler:
    its timesteps s T on the grid s = (t + 1) / T are what the network was trained to see (Objective.net_input), and
    its step is euler_sample's, except that it starts at s = 1 where the flow schedule's last s is 1 - 3.2e-5
    (T = 1000; flow_betas)."""
    from diffusers import DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {str(out_dir)!r} is a file; expected a folder for the pipeline")
    if denoiser.objective.prediction == "flow":
        if denoiser.schedule.kind != "flow":
            raise ValueError(f"schedule: a flow network exports with diffusers' flow-matching scheduler, whose times "
                             f"are evenly spaced: it needs the flow schedule, got a {denoiser.schedule.kind} one")
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=denoiser.schedule.num_timesteps, shift=1.0)
    else:
        scheduler = DDPMScheduler(**scheduler_config(denoiser.schedule, denoiser.objective))
    pipeline = DDPMPipeline(unet=unet_to_diffusers(denoiser.net).eval(), scheduler=scheduler)
    pipeline.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
