"""FID, KID and the Inception Score, computed the way papers compute them.

Protocol (Ho et al. 2020, Sec. 4): 50,000 samples against the 50,000 CIFAR-10 training images, features from
the pool3 layer (2048-d) of the TensorFlow Inception network that the original FID code used. Here that network
is torch-fidelity's port (through torchmetrics), with its TF1-style bilinear resize to 299x299.
See docs/fid.md for why other choices give other numbers. Memorisation (does a sample copy a training image?):
`nearest_neighbours` of the samples in the training set. Formulas only: ddpm_lib.evaluation samples a model and
scores it with them.
"""
import hashlib
import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .utils import cache_dir as default_cache, check_int, to_model_range

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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a share successes / n (z = 1.96: 95%), so that "7 of 64 samples" reads with
    its uncertainty: p_hat +- z sqrt(p_hat (1 - p_hat) / n + z^2 / 4n^2), recentred, over 1 + z^2 / n."""
    check_int(n, "n")
    if isinstance(successes, bool) or not isinstance(successes, int) or not 0 <= successes <= n:
        raise ValueError(f"successes must be an int in [0, n={n}], got {successes!r}")
    if not z > 0:
        raise ValueError(f"z must be positive (1.96 for 95%), got {z!r}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def share_with_interval(successes: int, n: int, digits: int = 0) -> str:
    """'11% (5%-21%)': the share successes / n with its 95% Wilson interval, in percent with `digits` decimals."""
    low, high = wilson_interval(successes, n)
    return f"{successes / n:.{digits}%} ({low:.{digits}%}-{high:.{digits}%})"


def beyond_the_noise(counts, base_counts, n: int, names) -> list:
    """The names whose share counts[i] / n has a 95% Wilson interval that does not overlap base_counts[i] / n's."""
    apart = []
    for name, count, base in zip(names, counts, base_counts):
        (low, high), (base_low, base_high) = wilson_interval(count, n), wilson_interval(base, n)
        if high < base_low or low > base_high:
            apart.append(name)
    return apart


def inception_extractor(weights_path=None, output: str = "2048") -> nn.Module:
    """The standard FID network: TF Inception v3 via torchmetrics / torch-fidelity. output "2048": its pool3
    features (FID, KID); "logits_unbiased": its 1008 class logits (the Inception Score).

    Takes uint8 (N,3,H,W). Downloads the weights once into torch's hub cache; offline -> FileNotFoundError.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3

    if output not in ("2048", "logits_unbiased"):
        raise ValueError(f"output: expected '2048' or 'logits_unbiased', got {output!r}")
    try:  # antialias=False: the TF1 bilinear resize of the original FID code (torchmetrics defaults to antialias)
        return NoTrainInceptionV3("inception-v3-compat", [output], feature_extractor_weights_path=weights_path,
                                  antialias=False)
    except OSError as err:  # urllib's URLError/HTTPError and socket errors are OSErrors
        target = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        raise FileNotFoundError(
            f"could not download the Inception weights for FID/KID ({err}). They are needed once: run with network "
            f"access, or put {INCEPTION_FILE} (from github.com/toshas/torch-fidelity/releases/tag/v0.2.0) at "
            f"{target} (or pass its path as inception_extractor(weights_path=...))") from err


def extractor_name(extractor) -> str:
    """What a feature extractor is called in results and cache keys: its `name`, else its class name."""
    return str(getattr(extractor, "name", type(extractor).__name__))


def check_images(name, images, minimum=2):
    """A ValueError unless `images` is a uint8 (N, 3, H, W) or grayscale (N, 1, H, W) tensor with N >= minimum."""
    if not (torch.is_tensor(images) and images.dtype == torch.uint8 and images.dim() == 4
            and images.shape[1] in (1, 3)):
        got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{name} must be a uint8 tensor (N, 3, H, W) or (N, 1, H, W), got {got}")
    if images.shape[0] < minimum:
        raise ValueError(f"{name} needs at least {minimum} image{'s' * (minimum > 1)}, got {images.shape[0]}")


@torch.no_grad()
def extract_features(images, extractor, batch_size=256, device=None, progress=False) -> torch.Tensor:
    """Features float32 (N, D) on the CPU of uint8 images (N,3,H,W), batched on `device` (default: extractor's).
    Grayscale images (N,1,H,W) are seen as RGB: their channel repeated into R, G and B (Inception and the classifier
    take RGB)."""
    check_images("images", images, minimum=1)
    if device is None:
        device = next(extractor.parameters(), torch.empty(0)).device
    extractor = extractor.to(device).eval()
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # grayscale: R = G = B
    chunks = [extractor(images[i:i + batch_size].to(device)).float().cpu()
              for i in tqdm(range(0, len(images), batch_size), disable=not progress, desc="features", unit="batch")]
    return torch.cat(chunks).reshape(len(images), -1)  # (N, D)


_PLAIN = (bool, int, float, str, type(None), torch.dtype)


def _extractor_config(extractor) -> str:
    """What besides its weights changes an extractor's features: its `cache_key` if it has one, else its class
    and every plain (non-tensor) attribute of it and its submodules, such as resize size, antialias, dtype."""
    if getattr(extractor, "cache_key", None) is not None:
        return f"{type(extractor).__qualname__}:{extractor.cache_key}"
    config = []
    for prefix, module in extractor.named_modules():
        for key, value in sorted(vars(module).items()):
            plain = isinstance(value, _PLAIN) or (isinstance(value, (tuple, list))
                                                  and all(isinstance(v, _PLAIN) for v in value))
            if plain and not key.startswith("_") and key != "training":
                config.append(f"{prefix}.{key}={value!r}")
    return f"{type(extractor).__module__}.{type(extractor).__qualname__}:" + ";".join(config)


def _fingerprint(images, extractor) -> str:
    """Digest of the image bytes, the extractor's configuration and weights: a cache entry can never go stale.

    An attribute that changes between calls (a counter) defeats the cache: give such an extractor a `cache_key`.
    """
    h = hashlib.sha256(images.cpu().contiguous().numpy().tobytes())
    h.update(_extractor_config(extractor).encode())
    for t in extractor.state_dict().values():
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cached_features(images, extractor, key, cache_dir=None, batch_size=256, device=None, progress=False):
    """extract_features, stored on disk as cache_dir/{key}-n{N}-{extractor name}-{digest}.pt and reused."""
    check_images("images", images)
    name = f"{key}-n{len(images)}-{extractor_name(extractor)}-{_fingerprint(images, extractor)}.pt"
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

    check_images("real_images", real_images)
    check_images("fake_images", fake_images)
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


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """The Inception Score exp E_x KL(p(y|x) || p(y)) (Salimans et al. 2016) of class probabilities (N, K), in
    each of `splits` consecutive parts of the samples: (mean, std) over the parts, as the original code and
    torch-fidelity compute it (the paper reports 9.46 on CIFAR-10 with Inception's classes)."""
    if not (torch.is_tensor(probs) and probs.dim() == 2 and len(probs) >= splits >= 1):
        raise ValueError(f"probs must be (N, K) with N >= splits={splits}, got "
                         f"{tuple(probs.shape) if torch.is_tensor(probs) else type(probs).__name__}")
    scores = []
    for part in (probs.double()[i * len(probs) // splits:(i + 1) * len(probs) // splits] for i in range(splits)):
        p_y = part.mean(0, keepdim=True)                                           # p(y) of this part
        kl = torch.special.xlogy(part, part) - torch.special.xlogy(part, p_y)     # 0 log 0 = 0
        scores.append(kl.sum(1).mean().exp().item())
    mean = sum(scores) / splits
    return mean, math.sqrt(sum((s - mean) ** 2 for s in scores) / splits)


@torch.no_grad()
def nearest_neighbours(samples, train_images, k=1, space="pixel", feature_extractor=None, batch_size=1024,
                       device=None) -> tuple:
    """The k training images closest in L2 to each sample: (distances float32 (N, k), indices int64 (N, k)), nearest
    first, on the CPU. A sample that copies a training image is at distance 0 from it (memorisation check).

    space="pixel": uint8 -> [-1, 1], flattened (3 H W values); "features": the extractor's features (default:
    Inception pool3). Both sets go through torch.cdist on `device` in blocks of batch_size x batch_size; the
    ranking uses cdist's matrix-product form, the returned distances are recomputed exactly in float64.
    """
    check_images("samples", samples, minimum=1)
    check_images("train_images", train_images, minimum=1)
    if space not in ("pixel", "features"):
        raise ValueError(f"space must be 'pixel' or 'features', got {space!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(train_images):
        raise ValueError(f"k must be an int in [1, {len(train_images)}] (the number of training images), got {k!r}")
    check_int(batch_size, "batch_size")
    if space == "pixel" and samples.shape[1:] != train_images.shape[1:]:
        raise ValueError(f"samples and train_images must have the same (3, H, W) in pixel space, got "
                         f"{tuple(samples.shape[1:])} and {tuple(train_images.shape[1:])}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if space == "pixel":
        a, b = to_model_range(samples).flatten(1), to_model_range(train_images).flatten(1)    # (N, 3 H W)
    else:
        extractor = feature_extractor if feature_extractor is not None else inception_extractor()
        a, b = (extract_features(x, extractor, batch_size, device) for x in (samples, train_images))  # (N, D)
    b = b.to(device)
    distances, indices = [], []
    for i in range(0, len(a), batch_size):
        query = a[i:i + batch_size].to(device)
        best_d = query.new_empty((len(query), 0))                                   # (q, k) running best
        best_i = torch.empty((len(query), 0), dtype=torch.long, device=device)
        for j in range(0, len(b), batch_size):
            d = torch.cdist(query, b[j:j + batch_size])                             # (q, batch)
            idx = torch.arange(j, j + d.shape[1], device=device).expand_as(d)
            d, idx = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
            best_d, pos = d.topk(min(k, d.shape[1]), dim=1, largest=False)
            best_i = idx.gather(1, pos)
        exact = (query.double()[:, None, :] - b[best_i].double()).norm(dim=-1)    # (q, k)
        exact, order = exact.sort(dim=1, stable=True)
        distances.append(exact.float().cpu())
        indices.append(best_i.gather(1, order).cpu())
    return torch.cat(distances), torch.cat(indices)
