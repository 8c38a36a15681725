"""Tests for ddpm_lib.metrics: Frechet distance against scipy and closed forms, FID/KID end to end through
torchmetrics with a small injected feature module, the real-feature cache, generation and evaluate_checkpoint."""
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from ddpm_lib import metrics
from ddpm_lib.data import make_shapes


class ConvFeatures(nn.Module):
    """A fixed random conv + ReLU + global pooling: uint8 (N,3,H,W) -> (N, dim); counts its calls."""

    name = "test-conv"

    def __init__(self, dim=16):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 5, stride=2)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
            self.conv.bias.zero_()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.relu(self.conv(x.float() / 127.5 - 1)).mean(dim=(2, 3))  # (N, dim)


def scipy_fid(a, b):
    """The textbook computation (Heusel et al. / pytorch-fid): scipy.linalg.sqrtm of the product."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    assert np.abs(covmean.imag).max() < 1e-6 if np.iscomplexobj(covmean) else True
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean.real))


def correlated(n, d, seed, shift=0.0):
    g = np.random.default_rng(seed)
    return g.standard_normal((n, d)) @ g.standard_normal((d, d)) + shift


def whitened(n, d, seed):
    """Samples whose sample mean is exactly 0 and sample covariance exactly I."""
    z = np.random.default_rng(seed).standard_normal((n, d))
    z -= z.mean(0)
    return z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T


def test_frechet_distance_matches_scipy():
    a, b = correlated(400, 12, seed=1), correlated(300, 12, seed=2, shift=0.3)
    assert metrics.frechet_distance(a, b) == pytest.approx(scipy_fid(a, b), rel=1e-8)
    assert metrics.frechet_distance(torch.from_numpy(a).float(), b) == pytest.approx(scipy_fid(a, b), rel=1e-5)


def test_frechet_distance_of_identical_inputs_is_zero():
    a = correlated(500, 16, seed=3)
    scale = 2 * np.trace(np.cov(a, rowvar=False))
    assert abs(metrics.frechet_distance(a, a)) < 1e-6 * scale
    few = correlated(5, 16, seed=4)  # fewer samples than dimensions: singular covariance, still ~0 and finite
    assert abs(metrics.frechet_distance(few, few)) < 1e-6 * 2 * np.trace(np.cov(few, rowvar=False))


def test_frechet_distance_closed_form_for_gaussian_features():
    # Sample moments exactly N(mu, diag(s^2)): FID = ||mu1 - mu2||^2 + sum (s1 - s2)^2.
    d = 6
    mu1, mu2 = np.linspace(-1, 1, d), np.linspace(0, 2, d) ** 2
    s1, s2 = np.linspace(0.5, 2, d), np.linspace(3, 1, d)
    a, b = whitened(300, d, seed=5) * s1 + mu1, whitened(200, d, seed=6) * s2 + mu2
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("a, b, match", [
    (np.zeros((1, 4)), np.zeros((5, 4)), "features_a.*N >= 2"),
    (np.zeros((5, 4)), np.zeros((1, 4)), "features_b.*N >= 2"),
    (np.zeros((5, 4)), np.zeros((5, 3)), "same dimension"),
    (np.zeros(5), np.zeros((5, 1)), "features_a must be \\(N, D\\)"),
])
def test_frechet_distance_rejects_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        metrics.frechet_distance(a, b)


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(384, seed=0)


def noise_images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_fid_kid_end_to_end_with_injected_features(shapes):
    extractor = ConvFeatures()
    a, b = shapes[:192], shapes[192:]
    same = metrics.fid_kid(a, b, extractor, kid_subset_size=100, kid_subsets=20)
    noise = metrics.fid_kid(a, noise_images(192), extractor, kid_subset_size=100, kid_subsets=20)
    assert 0 <= same["fid"] < noise["fid"] / 20
    assert abs(same["kid_mean"]) < noise["kid_mean"] / 10
    assert noise["kid_std"] > 0
    identical = metrics.fid_kid(a, a, extractor, kid_subset_size=100, kid_subsets=20)
    trace = 2 * torch.cov(metrics.extract_features(a, extractor).double().T).trace().item()
    assert abs(identical["fid"]) < 1e-6 * trace
    assert abs(identical["kid_mean"]) < noise["kid_mean"] / 10  # unbiased MMD^2: ~0 up to subset noise


def test_fid_kid_agree_with_independent_computations(shapes):
    """torchmetrics' FID equals frechet_distance; KID on full sets equals the unbiased cubic-kernel MMD^2."""
    extractor = ConvFeatures()
    real, fake = shapes[:150], noise_images(120, seed=1)
    fr = metrics.extract_features(real, extractor).double().numpy()
    ff = metrics.extract_features(fake, extractor).double().numpy()
    scores = metrics.fid_kid(real, fake, extractor, kid_subset_size=120, kid_subsets=3)
    assert scores["fid"] == pytest.approx(metrics.frechet_distance(fr, ff), rel=1e-6)
    assert scores["fid"] == pytest.approx(scipy_fid(fr, ff), rel=1e-6)
    # With subset_size == n for both sets every KID subset is a permutation of the whole set: no randomness left.
    scores = metrics.fid_kid(real[:120], fake, extractor, kid_subset_size=120, kid_subsets=2)
    k = lambda x, y: (x @ y.T / x.shape[1] + 1) ** 3  # noqa: E731  polynomial kernel of KID (Binkowski et al.)
    fr, m = fr[:120], 120
    off = lambda kk: (kk.sum() - np.trace(kk)) / (m * (m - 1))  # noqa: E731
    mmd2 = off(k(fr, fr)) + off(k(ff, ff)) - 2 * k(fr, ff).mean()
    assert scores["kid_mean"] == pytest.approx(mmd2, rel=1e-6)
    assert scores["kid_std"] == pytest.approx(0, abs=1e-9 * abs(mmd2))


def test_fid_kid_is_deterministic_in_seed(shapes):
    extractor = ConvFeatures()
    run = lambda seed: metrics.fid_kid(shapes[:100], shapes[100:200], extractor,  # noqa: E731
                                       kid_subset_size=50, kid_subsets=5, seed=seed)
    first, again, other = run(0), run(0), run(1)
    assert first == again
    assert first["kid_mean"] != other["kid_mean"] and first["fid"] == other["fid"]


def test_real_features_are_cached_on_disk_and_reused(shapes, tmp_path):
    extractor = ConvFeatures()
    real, fake = shapes[:96], shapes[96:160]
    kw = dict(real_key="shapes-train", cache_dir=tmp_path, batch_size=32, kid_subset_size=32, kid_subsets=4)
    first = metrics.fid_kid(real, fake, extractor, **kw)
    files = list(tmp_path.iterdir())
    assert [f.name.split("-")[:4] for f in files] == [["shapes", "train", "n96", "test"]]
    assert extractor.calls == 3 + 2  # real 96/32 + fake 64/32 batches
    extractor.calls = 0
    second = metrics.fid_kid(real, fake, extractor, **kw)
    assert extractor.calls == 2 and second == first  # only the fake images went through the extractor
    metrics.fid_kid(shapes[:97], fake, extractor, **kw)  # other images -> another entry, never a stale one
    assert len(list(tmp_path.iterdir())) == 2


def test_fid_kid_rejects_bad_images():
    with pytest.raises(ValueError, match="real_images must be a uint8 tensor"):
        metrics.fid_kid(torch.rand(4, 3, 8, 8), noise_images(4), ConvFeatures())
    with pytest.raises(ValueError, match="fake_images needs at least 2 images"):
        metrics.fid_kid(noise_images(4), noise_images(1), ConvFeatures())


def test_offline_inception_error_is_clear(monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(fe, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match="could not download the Inception weights.*network") as info:
        metrics.inception_extractor()
    assert metrics.INCEPTION_FILE in str(info.value)


@pytest.fixture(scope="module")
def tiny():
    from ddpm_lib.schedule import NoiseSchedule
    from ddpm_lib.unet import unet_from_preset

    torch.manual_seed(0)  # a micro UNet on 16x16 images: the pipeline, not the network, is under test
    model = unet_from_preset("tiny", ch_list=(3, 8, 16), attention_layer=(2,), num_heads=2, temb_dim=16,
                             norm_groups=4, time_mlp_dim=0, mid_attention=False, image_size=16)
    return model.eval(), NoiseSchedule.linear(steps=10)


def test_generate_images_matches_the_sampler_and_batches_deterministically(tiny):
    from ddpm_lib.samplers import ddim_sample

    model, schedule = tiny
    images = metrics.generate_images(model, schedule, 5, "ddim", steps=3, batch_size=8, seed=7, progress=False)
    x0 = ddim_sample(model, schedule, (5, 3, 16, 16), steps=3, generator=torch.Generator().manual_seed(7))
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 16, 16)
    torch.testing.assert_close(images, ((x0 + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), rtol=0, atol=0)
    batched = metrics.generate_images(model, schedule, 5, "dpm-solver", steps=3, batch_size=2, seed=7, progress=False)
    again = metrics.generate_images(model, schedule, 5, "dpm-solver", steps=3, batch_size=2, seed=7, progress=False)
    assert torch.equal(batched, again)
    assert metrics.generate_images(model, schedule, 2, "ddpm", steps=10, batch_size=2, progress=False).shape[0] == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(sampler="euler"), "sampler must be one of"),
    (dict(sampler="ddpm", steps=5), "runs all T=10 steps"),
    (dict(n=0), "n must be a positive int"),
    (dict(batch_size=0), "batch_size must be a positive int"),
])
def test_generate_images_rejects_bad_arguments(tiny, kwargs, match):
    model, schedule = tiny
    with pytest.raises(ValueError, match=match):
        metrics.generate_images(model, schedule, **{"n": 2, "steps": 3, "progress": False, **kwargs})


@pytest.fixture
def checkpoint(tiny, tmp_path):
    from ddpm_lib.train import TrainConfig, Trainer

    model, schedule = tiny
    return Trainer(model, schedule, TrainConfig(out_dir=None, progress=False)).save(tmp_path / "ckpt.pt")


def test_evaluate_checkpoint_end_to_end(tiny, checkpoint, tmp_path):
    from PIL import Image

    from ddpm_lib.data import load_image_folder

    folder = tmp_path / "ref"
    folder.mkdir()
    for i, image in enumerate(make_shapes(24, size=16, seed=1)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    kw = dict(n=12, sampler="dpm-solver", steps=3, ref=str(folder), batch_size=8, device="cpu", seed=3,
              feature_extractor=ConvFeatures(), cache_dir=tmp_path / "cache", progress=False)
    result = metrics.evaluate_checkpoint(checkpoint, **kw)
    assert {k: result[k] for k in ("n", "sampler", "steps", "ref")} == dict(n=12, sampler="dpm-solver", steps=3,
                                                                            ref=str(folder))
    assert len(list((tmp_path / "cache").glob("folder-ref-n24-test-conv-*.pt"))) == 1
    # The same numbers by hand: EMA weights (== the model here: no step taken), the same seed and batches.
    model, schedule = tiny
    fake = metrics.generate_images(model, schedule, 12, "dpm-solver", 3, batch_size=8, seed=3, progress=False)
    expected = metrics.fid_kid(load_image_folder(folder, size=16), fake, ConvFeatures(), batch_size=8, seed=3)
    assert {k: result[k] for k in expected} == pytest.approx(expected, rel=1e-9)
    assert result["fid"] > 0


def test_evaluate_checkpoint_reference_and_errors(checkpoint, tmp_path, monkeypatch):
    import ddpm_lib.data

    calls = []

    def fake_cifar10(root, train=True):
        calls.append((root, train))
        return make_shapes(16, size=16, seed=2), torch.zeros(16, dtype=torch.long)

    monkeypatch.setattr(ddpm_lib.data, "load_cifar10", fake_cifar10)
    result = metrics.evaluate_checkpoint(checkpoint, n=8, steps=2, data_root="somewhere", batch_size=8, device="cpu",
                                         feature_extractor=ConvFeatures(), cache_dir=tmp_path, progress=False)
    assert calls == [("somewhere", True)] and result["ref"] == "cifar10"  # the paper's reference: training split
    assert len(list(tmp_path.glob("cifar10-train-n16-*.pt"))) == 1
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        metrics.evaluate_checkpoint(tmp_path / "missing.pt", feature_extractor=ConvFeatures())
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        metrics.evaluate_checkpoint(checkpoint, n=1, feature_extractor=ConvFeatures())
    with pytest.raises(FileNotFoundError, match="ref must be 'cifar10' or an image folder"):
        metrics.evaluate_checkpoint(checkpoint, n=4, ref=str(tmp_path / "nope"), feature_extractor=ConvFeatures())


@pytest.mark.slow  # two full Inception networks on the CPU
def test_inception_extractor_matches_torch_fidelity(monkeypatch):
    """Same weights in, same 2048-d pool3 features out as torch-fidelity's own extractor (TF1 resize, no
    antialiasing). Random weights stand in for the downloaded ones, which tests cannot fetch."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:  # a randomly initialised network, to take its weights from
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        weights = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda url, **k: weights if url == fe.URL_INCEPTION_V3 else 1 / 0)
    ours = metrics.inception_extractor()
    reference = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    images = make_shapes(2, seed=3)
    features = metrics.extract_features(images, ours)
    assert features.shape == (2, 2048) and features.abs().sum() > 0
    torch.testing.assert_close(features, reference(images)[0], rtol=1e-4, atol=1e-6)
