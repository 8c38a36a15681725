"""FID and KID, computed the way papers compute them.

Protocol (Ho et al. 2020, Sec. 4): 50,000 samples against the 50,000 CIFAR-10 training images, features from
the pool3 layer (2048-d) of the TensorFlow Inception network that the original FID code used. Here that network
is torch-fidelity's port (through torchmetrics), with its TF1-style bilinear resize to 299x299.
See docs/fid.md for why other choices give other numbers.
"""
import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .device import cache_dir as default_cache

SAMPLERS = ("ddpm", "ddim", "dpm-solver")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name for the TF Inception weights


def frechet_distance(features_a, features_b) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), moments in float64."""
    a = torch.as_tensor(features_a).double()
    b = torch.as_tensor(features_b).double()
    for name, f in (("features_a", a), ("features_b", b)):
        if f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must be (N, D) with N >= 2 samples, got shape {tuple(f.shape)}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same dimension D, got {a.shape[1]} and {b.shape[1]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)  # (D, D)
    # (S_a S_b)^1/2 has the same trace as the symmetric PSD matrix (S_a^1/2 S_b S_a^1/2)^1/2, whose eigenvalues
    # eigh finds stably; clamping removes the tiny negative eigenvalues rounding leaves on singular covariances.
    lam, vec = torch.linalg.eigh(cov_a)
    sqrt_a = vec @ torch.diag(lam.clamp(min=0).sqrt()) @ vec.T
    tr_covmean = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_covmean)


def inception_extractor(weights_path=None) -> nn.Module:
    """The standard FID network: TF Inception v3 pool3 (2048-d) via torchmetrics / torch-fidelity.

    Takes uint8 (N,3,H,W). Downloads the weights once into torch's hub cache; offline -> FileNotFoundError.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:  # antialias=False: the TF1 bilinear resize of the original FID code (torchmetrics defaults to antialias)
        return NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights_path,
                                  antialias=False)
    except OSError as err:  # urllib's URLError/HTTPError and socket errors are OSErrors
        target = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        raise FileNotFoundError(
            f"could not download the Inception weights for FID/KID ({err}). They are needed once: run with network "
            f"access, or put {INCEPTION_FILE} (from github.com/toshas/torch-fidelity/releases/tag/v0.2.0) at "
            f"{target} (or pass its path as inception_extractor(weights_path=...))") from err


def _extractor_name(extractor) -> str:
    return str(getattr(extractor, "name", type(extractor).__name__))


def _check_images(name, images):
    if not (torch.is_tensor(images) and images.dtype == torch.uint8 and images.dim() == 4 and images.shape[1] == 3):
        got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{name} must be a uint8 tensor (N, 3, H, W), got {got}")
    if images.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 images, got {images.shape[0]}")


@torch.no_grad()
def extract_features(images, extractor, batch_size=256, device=None, progress=False) -> torch.Tensor:
    """Features float32 (N, D) on the CPU of uint8 images (N,3,H,W), batched on `device` (default: extractor's)."""
    _check_images("images", images)
    if device is None:
        device = next(extractor.parameters(), torch.empty(0)).device
    extractor = extractor.to(device).eval()
    chunks = [extractor(images[i:i + batch_size].to(device)).float().cpu()
              for i in tqdm(range(0, len(images), batch_size), disable=not progress, desc="features", unit="batch")]
    return torch.cat(chunks).reshape(len(images), -1)  # (N, D)


def _fingerprint(images, extractor) -> str:
    """Digest of the image bytes and the extractor's weights: a cache entry can never go stale."""
    h = hashlib.sha256(images.cpu().contiguous().numpy().tobytes())
    for t in extractor.state_dict().values():
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cached_features(images, extractor, key, cache_dir=None, batch_size=256, device=None, progress=False):
    """extract_features, stored on disk as cache_dir/{key}-n{N}-{extractor name}-{digest}.pt and reused."""
    _check_images("images", images)
    name = f"{key}-n{len(images)}-{_extractor_name(extractor)}-{_fingerprint(images, extractor)}.pt"
    path = (Path(cache_dir) if cache_dir is not None else default_cache("fid")) / name
    if path.exists():
        return torch.load(path, weights_only=True)["features"]
    features = extract_features(images, extractor, batch_size, device, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"features": features}, tmp)
    os.replace(tmp, path)
    return features


class _Precomputed(nn.Module):
    """Identity 'feature extractor' so torchmetrics' FID/KID consume features extracted (and cached) already."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, features):
        return features


def fid_kid(real_images, fake_images, feature_extractor=None, real_key=None, cache_dir=None, batch_size=256,
            device=None, kid_subsets=100, kid_subset_size=1000, seed=0, progress=False) -> dict:
    """FID and KID (mean, std over subsets) between two uint8 image sets (N,3,H,W) via torchmetrics.

    feature_extractor: nn.Module uint8 (N,3,H,W) -> (N,D); default the standard Inception (inception_extractor()).
    real_key: when given (e.g. "cifar10-train"), the real features are cached on disk under that name.
    seed: fixes KID's random subsets (torchmetrics draws them from the global RNG; this does not disturb it).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_images("real_images", real_images)
    _check_images("fake_images", fake_images)
    extractor = feature_extractor if feature_extractor is not None else inception_extractor()
    if real_key is None:
        real = extract_features(real_images, extractor, batch_size, device, progress)
    else:
        real = cached_features(real_images, extractor, real_key, cache_dir, batch_size, device, progress)
    fake = extract_features(fake_images, extractor, batch_size, device, progress)
    real, fake = real.double(), fake.double()
    fid = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    subset_size = min(kid_subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "KID will save all extracted features": we hold them anyway
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=kid_subsets, subset_size=subset_size)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def _to_uint8(x0):
    """[-1, 1] float -> uint8 [0, 255]."""
    return ((x0.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def generate_images(model, schedule, n, sampler="ddim", steps=100, batch_size=256, device=None, seed=0,
                    progress=True) -> torch.Tensor:
    """n samples as uint8 (n,3,H,W) on the CPU, drawn in batches; deterministic in (seed, batch_size).

    sampler: "ddpm" (Algorithm 2, all T steps: steps must equal T), "ddim" or "dpm-solver" (`steps` evaluations).
    """
    from ddpm_lib import samplers

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "ddpm" and steps != schedule.steps:
        raise ValueError(f"sampler='ddpm' runs all T={schedule.steps} steps: pass steps={schedule.steps}, "
                         f"or use 'ddim'/'dpm-solver' for fewer (got steps={steps})")
    for name, value in (("n", n), ("steps", steps), ("batch_size", batch_size)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model, schedule = model.to(device).eval(), schedule.to(device)
    size = model.config.image_size
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    with tqdm(total=n, disable=not progress, desc=f"{sampler} {steps} steps", unit="img") as bar:
        for start in range(0, n, batch_size):
            shape = (min(batch_size, n - start), 3, size, size)
            if sampler == "ddpm":
                x0 = samplers.ddpm_sample(model, schedule, shape, generator=generator, device=device)
            elif sampler == "ddim":
                x0 = samplers.ddim_sample(model, schedule, shape, steps=steps, generator=generator, device=device)
            else:
                x0 = samplers.dpm_solver_sample(model, schedule, shape, steps=steps, generator=generator,
                                                device=device)
            images[start:start + shape[0]] = _to_uint8(x0).cpu()
            bar.update(shape[0])
    return images


def load_reference(ref="cifar10", data_root="data", size=32):
    """(uint8 images (N,3,size,size), cache key): "cifar10" = its training split, else an image folder."""
    from ddpm_lib import data

    if ref == "cifar10":
        return data.load_cifar10(data_root, train=True)[0], "cifar10-train"
    folder = Path(ref)
    if not folder.is_dir():
        raise FileNotFoundError(f"ref must be 'cifar10' or an image folder, got {ref!r} (no such directory)")
    return data.load_image_folder(folder, size=size), f"folder-{folder.resolve().name}"


def evaluate_checkpoint(ckpt_path, n=50_000, sampler="ddim", steps=100, ref="cifar10", data_root="data",
                        batch_size=256, device=None, seed=0, feature_extractor=None, cache_dir=None,
                        progress=True) -> dict:
    """FID/KID of a checkpoint's EMA model: n samples against `ref` (default: the paper's protocol)."""
    from ddpm_lib.device import default_device
    from ddpm_lib.train import load_model

    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path {str(ckpt_path)!r} does not exist")
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n must be an int >= 2 (FID needs two samples; the paper uses 50,000), got {n!r}")
    device = torch.device(device) if device is not None else default_device()
    extractor = feature_extractor if feature_extractor is not None else inception_extractor()  # fail before sampling
    model, schedule = load_model(ckpt_path, ema=True, device=device)
    real, key = load_reference(ref, data_root, size=model.config.image_size)
    fake = generate_images(model, schedule, n, sampler, steps, batch_size, device, seed, progress)
    scores = fid_kid(real, fake, extractor, real_key=key, cache_dir=cache_dir, batch_size=batch_size,
                     device=device, seed=seed, progress=progress)
    return {**scores, "n": n, "sampler": sampler, "steps": steps, "ref": ref}
