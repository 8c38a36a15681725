"""An exported pipeline on the Hugging Face Hub: its model card, and the upload (`export --push-to-hub REPO_ID`).

The card (the folder's README.md) says what the model is: the network, the schedule, what it predicts, the
recipe and the training steps it ran, its data, the evaluations `python -m ddpm_lib fid` wrote next to the
checkpoint, and how to load it with diffusers. The upload is huggingface_hub's `upload_folder` (the interop
extra); when it fails (offline, no token, no access) the error is one line and the local folder stays.
"""
from __future__ import annotations

import json
from pathlib import Path

from .interop import PREDICTION_TYPES


def _evaluations(ckpt_path: Path) -> list[dict]:
    """The score files `fid` wrote next to the checkpoint (<stem>_fid_<sampler><sample_steps>..._n<N>.json)."""
    rows = []
    for path in sorted(ckpt_path.parent.glob(f"{ckpt_path.stem}_fid_*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # not a score file after all: the card lists what it can read
    return rows


def model_card(ckpt: dict, ckpt_path: Path, repo_id: str, ema: bool = True) -> str:
    """The README.md of the pipeline folder for the Hub: metadata header, what the model is, how to load it."""
    unet, train, schedule, objective = ckpt["unet_config"], ckpt["train_config"], ckpt["schedule"], ckpt["objective"]
    data = ckpt.get("data") or {}
    images = f", {data['n']:,} images at {data['size']}x{data['size']}" if data else ""
    params = ", ".join(f"{k}={v:g}" for k, v in schedule["params"].items() if k != "num_timesteps")
    evaluations = _evaluations(Path(ckpt_path))
    lines = ["---", "library_name: diffusers", "tags:", "- ddpm_lib", "- ddpm", "- diffusion",
             "- unconditional-image-generation", "pipeline_tag: unconditional-image-generation", "---", "",
             f"# {repo_id}", "",
             f"A DDPM (Ho et al. 2020) trained with [ddpm_lib](https://github.com/ddpm-lib/ddpm_lib), exported as a "
             f"diffusers `DDPMPipeline` ({'EMA' if ema else 'raw'} weights).", "",
             "| | |", "|---|---|",
             f"| network | U-Net, channels {tuple(unet['ch_list'])}, attention at levels "
             f"{tuple(unet['attention_layer'])}, {unet['num_res_blocks']} res blocks per level, "
             f"{unet['image_size']}x{unet['image_size']} images |",
             f"| predicts | {objective['prediction']} (diffusers' prediction_type "
             f"`{PREDICTION_TYPES[objective['prediction']]}`) |",
             f"| schedule | {schedule['kind']}, T = {len(schedule['betas'])}{', ' + params if params else ''} |",
             f"| recipe | {train.get('recipe') or 'by hand'}; loss weighting {objective['weighting']}, "
             f"batch {train['batch_size']}, lr {train['lr']:g}, EMA decay {train['ema_decay']:g} |",
             f"| trained | {ckpt['step']:,} of {train['train_steps']:,} training steps |",
             f"| data | {data.get('name', 'not recorded')}{images} |", ""]
    if evaluations:
        lines += ["## Evaluation (`python -m ddpm_lib fid`)", "",
                  "| samples | sampler | sample steps | FID | KID | IS |",
                  "|---:|---|---:|---:|---:|---:|"]
        for e in evaluations:
            inception = f"{e['is_mean']:.2f} ± {e['is_std']:.2f}" if e.get("is_mean") is not None else "-"
            lines.append(f"| {e['n']:,} | {e['sampler']} | {e['sample_steps']} | {e['fid']:.2f} | "
                         f"{e['kid_mean']:.4f} ± {e['kid_std']:.4f} | {inception} |")
        lines.append("")
    lines += ["## Use", "", "```python", "from diffusers import DDIMScheduler, DDPMPipeline", "",
              f'pipeline = DDPMPipeline.from_pretrained("{repo_id}")',
              f"images = pipeline(batch_size=16, num_inference_steps={len(schedule['betas'])}).images  "
              "# ancestral sampling, all T timesteps",
              "pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)",
              "images = pipeline(batch_size=16, num_inference_steps=50).images  # DDIM, 50 steps", "```", ""]
    return "\n".join(lines)


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if the Hub accepts it as a model repository name ("user/name"), else a one-line ValueError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"--push-to-hub {repo_id!r}: not a Hub repository id ({' '.join(str(e).split())[:160]}); "
                         f"expected user/name") from None
    if "/" not in repo_id:
        raise ValueError(f"--push-to-hub {repo_id!r}: expected user/name (or organisation/name)")
    return repo_id


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload `folder` to the Hub model repository `repo_id` (created if missing); its URL. Any failure is an
    OSError of one line that says the folder is kept."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message="Upload a ddpm_lib DDPMPipeline")
    except Exception as e:  # offline, no token, no access, a bad repo id: huggingface_hub's and requests' errors
        reason = " ".join(str(e).split()) or type(e).__name__
        raise OSError(f"--push-to-hub {repo_id}: the upload failed ({type(e).__name__}: {reason[:200]}); "
                      f"{folder} is kept: upload it later with `huggingface-cli upload {repo_id} {folder}`") from None
    return str(getattr(commit, "commit_url", f"https://huggingface.co/{repo_id}"))
