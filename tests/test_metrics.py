"""Tests for ddpm_lib.metrics: Frechet distance against scipy and closed forms, FID/KID end to end through
torchmetrics with a small injected feature module, the real-feature cache, nearest neighbours against a
brute-force scipy search, and evaluate_checkpoint."""
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial
import torch
import torch.nn.functional as F
from helpers import write_image_folder
from torch import nn

from ddpm_lib import evaluation, metrics
from ddpm_lib.data import make_shapes
from ddpm_lib.objective import Denoiser, Objective
from ddpm_lib.samplers import generate_images

OBJECTIVE = Objective("v", "min-snr", 2.0)  # the checkpoints' objective: evaluate_checkpoint samples with it


class ConvFeatures(nn.Module):
    """A fixed random conv + ReLU + global pooling: uint8 (N,3,H,W) -> (N, dim), optionally resized first."""

    name = "test-conv"

    def __init__(self, dim=16, resize=None, antialias=False):
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 5, stride=2)
        self.resize, self.antialias = resize, antialias
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
            self.conv.bias.zero_()

    def forward(self, x):
        x = x.float() / 127.5 - 1
        if self.resize is not None:
            x = F.interpolate(x, size=self.resize, mode="bilinear", antialias=self.antialias, align_corners=False)
        return torch.relu(self.conv(x)).mean(dim=(2, 3))  # (N, dim)


def count_calls(module):
    """A list that grows by one at every forward call of `module` (a hook: the module itself is unchanged)."""
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


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


@pytest.mark.parametrize("k, n", [(0, 64), (2, 64), (7, 64), (32, 64), (64, 64), (1, 1), (13, 500)])
def test_wilson_interval_matches_scipy(k, n):
    import scipy.stats

    expected = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = metrics.wilson_interval(k, n, z=scipy.stats.norm.ppf(0.975))
    assert low == pytest.approx(expected.low, abs=1e-12) and high == pytest.approx(expected.high, abs=1e-12)


def test_shares_with_intervals_and_what_lies_beyond_the_noise():
    assert metrics.share_with_interval(7, 64) == "11% (5%-21%)"
    assert metrics.share_with_interval(7, 64, digits=1) == "10.9% (5.4%-20.9%)"  # scipy's Wilson: 0.0540-0.2090
    # 7/64 (5-21%) against 2/64 (1-11%) overlap; 0/64 (0-6%) against 10/64 (9-26%) do not
    assert metrics.beyond_the_noise((7, 0), (2, 10), 64, ("shape-like", "solid")) == ["solid"]
    assert metrics.beyond_the_noise((2, 10), (2, 10), 64, ("shape-like", "solid")) == []


@pytest.mark.parametrize("k, n, z", [(-1, 10, 1.96), (11, 10, 1.96), (1, 0, 1.96), (1.5, 10, 1.96), (1, 10, 0.0)])
def test_wilson_interval_rejects_bad_input(k, n, z):
    with pytest.raises(ValueError):
        metrics.wilson_interval(k, n, z)


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
    return make_shapes(384, seed=0)[0]


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
    calls = count_calls(extractor)
    real, fake = shapes[:96], shapes[96:160]
    kw = dict(real_key="shapes-train", cache_dir=tmp_path, batch_size=32, kid_subset_size=32, kid_subsets=4)
    first = metrics.fid_kid(real, fake, extractor, **kw)
    files = list(tmp_path.iterdir())
    assert [f.name.split("-")[:4] for f in files] == [["shapes", "train", "n96", "test"]]
    assert len(calls) == 3 + 2  # real 96/32 + fake 64/32 batches
    calls.clear()
    second = metrics.fid_kid(real, fake, extractor, **kw)
    assert len(calls) == 2 and second == first  # only the fake images went through the extractor
    metrics.fid_kid(shapes[:97], fake, extractor, **kw)  # other images -> another entry, never a stale one
    assert len(list(tmp_path.iterdir())) == 2


def test_cache_key_covers_the_extractor_configuration(shapes, tmp_path):
    """Equal weights, different resizing (antialias or not): different features, so never one cache entry."""
    real, fake = shapes[:64], shapes[64:96]
    kw = dict(real_key="shapes", cache_dir=tmp_path, kid_subset_size=32, kid_subsets=2)
    plain, smooth = ConvFeatures(resize=20), ConvFeatures(resize=20, antialias=True)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), smooth.state_dict().values()))
    assert not torch.allclose(metrics.extract_features(real, plain), metrics.extract_features(real, smooth))
    scores = [metrics.fid_kid(real, fake, extractor, **kw) for extractor in (plain, smooth)]
    assert len(list(tmp_path.iterdir())) == 2 and scores[0]["fid"] != scores[1]["fid"]
    metrics.fid_kid(real, fake, ConvFeatures(resize=24), **kw)                     # another size: another entry
    assert len(list(tmp_path.iterdir())) == 3
    keyed = ConvFeatures(resize=20)
    keyed.cache_key = "v1"                                                           # an explicit key replaces
    calls = count_calls(keyed)                                                       # the automatic one
    metrics.fid_kid(real, fake, keyed, **kw)
    metrics.fid_kid(real, fake, keyed, **kw)
    assert len(list(tmp_path.iterdir())) == 4 and len(calls) == 3                   # real once, fake twice


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
    return model.eval(), NoiseSchedule.linear(num_timesteps=10)


@pytest.fixture
def checkpoint(tiny, tmp_path):
    """The tiny model's checkpoint, of a v-prediction objective (not the default: the samples would show it unread)."""
    from ddpm_lib.train import Trainer
    from ddpm_lib.train_config import TrainConfig

    model, schedule = tiny
    return Trainer(model, schedule, TrainConfig(out_dir=None, progress=False), OBJECTIVE).save(tmp_path / "ckpt.pt")


@pytest.fixture
def folder(tmp_path):
    """A reference image folder of 24 shapes at 16x16."""
    return write_image_folder(tmp_path / "ref", make_shapes(24, size=16, seed=1)[0])


def test_evaluate_checkpoint_end_to_end(tiny, checkpoint, folder, tmp_path):
    from ddpm_lib.data import load_image_folder

    kw = dict(n=12, sampler="dpm-solver", sample_steps=3, ref=str(folder), batch_size=8, device="cpu", seed=3,
              feature_extractor=ConvFeatures(), cache_dir=tmp_path / "cache", progress=False)
    result = evaluation.evaluate_checkpoint(checkpoint, **kw)
    assert {k: result[k] for k in ("n", "sampler", "sample_steps", "guidance_scale", "ref")} == dict(
        n=12, sampler="dpm-solver", sample_steps=3, guidance_scale=1.0, ref=str(folder))
    assert len(list((tmp_path / "cache").glob("folder-ref-n24-test-conv-*.pt"))) == 1
    # The same numbers by hand: EMA weights (== the model here: no step taken), the same seed and batches, the
    # checkpoint's objective.
    model, schedule = tiny
    fake = generate_images(Denoiser(model, schedule, OBJECTIVE), 12, sampler="dpm-solver", sample_steps=3, batch_size=8,
                           seed=3)
    expected = metrics.fid_kid(load_image_folder(folder, size=16).images, fake, ConvFeatures(), batch_size=8, seed=3)
    assert {k: result[k] for k in expected} == pytest.approx(expected, rel=1e-9)
    assert result["fid"] > 0
    as_eps = generate_images(Denoiser(model, schedule), 12, sampler="dpm-solver", sample_steps=3, batch_size=8, seed=3)
    assert not torch.equal(as_eps, fake)  # read as an eps-predictor, the same network samples other images


def test_evaluate_checkpoint_reference_and_errors(checkpoint, tmp_path, monkeypatch):
    import ddpm_lib.data

    calls = []

    def fake_cifar10(root, train=True):
        calls.append((root, train))
        return make_shapes(16, size=16, seed=2)[0], torch.zeros(16, dtype=torch.long)

    monkeypatch.setattr(ddpm_lib.data, "load_cifar10", fake_cifar10)
    result = evaluation.evaluate_checkpoint(checkpoint, n=8, sample_steps=2, data_root="somewhere", batch_size=8,
                                            device="cpu",
                                         feature_extractor=ConvFeatures(), cache_dir=tmp_path, progress=False)
    assert calls == [("somewhere", True)] and result["ref"] == "cifar10"  # the paper's reference: training split
    assert len(list(tmp_path.glob("cifar10-train-n16-*.pt"))) == 1
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        evaluation.evaluate_checkpoint(tmp_path / "missing.pt", feature_extractor=ConvFeatures())
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        evaluation.evaluate_checkpoint(checkpoint, n=1, feature_extractor=ConvFeatures())
    with pytest.raises(FileNotFoundError, match="ref must be 'cifar10' or an image folder"):
        evaluation.evaluate_checkpoint(checkpoint, n=4, ref=str(tmp_path / "nope"), feature_extractor=ConvFeatures())


def test_evaluate_checkpoint_conditional_model_gets_balanced_labels_and_guidance(tiny, folder, tmp_path,
                                                                                 monkeypatch):
    from dataclasses import replace

    import ddpm_lib.checkpoint
    from ddpm_lib.train import Trainer
    from ddpm_lib.train_config import TrainConfig
    from ddpm_lib.unet import UNet

    model, schedule = tiny
    conditional = UNet(replace(model.config, num_classes=3)).eval()
    ckpt = Trainer(conditional, schedule, TrainConfig(out_dir=None, progress=False), OBJECTIVE).save(
        tmp_path / "cond.pt")
    labels, load_model = [], ddpm_lib.checkpoint.load_model

    def recording_load_model(*args, **kwargs):  # the real loader, plus a hook recording the labels of every call
        loaded = load_model(*args, **kwargs)
        assert isinstance(loaded, Denoiser) and loaded.objective == OBJECTIVE
        loaded.net.register_forward_hook(lambda module, inputs, output: labels.append(inputs[2].tolist()))
        return loaded

    monkeypatch.setattr(ddpm_lib.checkpoint, "load_model", recording_load_model)
    result = evaluation.evaluate_checkpoint(ckpt, n=7, sample_steps=2, ref=str(folder), batch_size=4, device="cpu",
                                         guidance_scale=2.0, feature_extractor=ConvFeatures(),
                                         cache_dir=tmp_path / "cache", progress=False)
    # labels i % 3, each batch's rows twice (conditional, then -1) in one call per step
    assert labels == [[0, 1, 2, 0, -1, -1, -1, -1]] * 2 + [[1, 2, 0, -1, -1, -1]] * 2
    assert result["guidance_scale"] == 2.0 and result["sample_steps"] == 2


def test_evaluate_checkpoint_refuses_guidance_without_classes(checkpoint):
    with pytest.raises(ValueError, match="guidance_scale=3.0 needs a class-conditional model"):
        evaluation.evaluate_checkpoint(checkpoint, n=4, guidance_scale=3.0, device="cpu",
                                       feature_extractor=ConvFeatures())
    with pytest.raises(ValueError, match="sampler must be one of"):
        evaluation.evaluate_checkpoint(checkpoint, n=4, sampler="sde", device="cpu", feature_extractor=ConvFeatures())


# ---- nearest neighbours ------------------------------------------------------------------------

def brute_force_neighbours(a, b, k):
    """scipy's full distance matrix in float64, sorted."""
    d = scipy.spatial.distance.cdist(a, b)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), order


def test_nearest_neighbours_in_pixel_space_match_brute_force():
    g = torch.Generator().manual_seed(5)
    train = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=g)
    samples = torch.randint(0, 256, (13, 3, 8, 8), dtype=torch.uint8, generator=g)
    samples[4] = train[17]                                                       # a memorised sample
    distances, indices = metrics.nearest_neighbours(samples, train, k=3, batch_size=7)  # blocks of 7 both ways
    assert distances.shape == indices.shape == (13, 3)
    assert distances.dtype == torch.float32 and indices.dtype == torch.int64
    flat = lambda x: x.double().numpy().reshape(len(x), -1) / 127.5 - 1  # noqa: E731  uint8 -> [-1, 1]
    ref_d, ref_i = brute_force_neighbours(flat(samples), flat(train), 3)
    np.testing.assert_array_equal(indices.numpy(), ref_i)
    np.testing.assert_allclose(distances.numpy(), ref_d, rtol=1e-6)
    assert distances[4, 0].item() == 0 and indices[4, 0].item() == 17
    one, one_i = metrics.nearest_neighbours(train[:1], train)
    assert one.shape == (1, 1) and one.item() == 0 and one_i.item() == 0


def test_nearest_neighbours_in_feature_space_match_brute_force():
    shapes, _ = make_shapes(40, size=16, seed=6)
    extractor = ConvFeatures()
    distances, indices = metrics.nearest_neighbours(shapes[:9], shapes[9:], k=2, space="features",
                                                    feature_extractor=extractor, batch_size=5)
    features = metrics.extract_features(shapes, extractor).double().numpy()
    ref_d, ref_i = brute_force_neighbours(features[:9], features[9:], 2)
    np.testing.assert_array_equal(indices.numpy(), ref_i)
    np.testing.assert_allclose(distances.numpy(), ref_d, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(space="latent"), "space must be 'pixel' or 'features'"),
    (dict(k=0), r"k must be an int in \[1, 4\]"),
    (dict(k=5), r"k must be an int in \[1, 4\]"),
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(samples=noise_images(2)[:, :, :16, :16]), "same \\(3, H, W\\) in pixel space"),
    (dict(samples=torch.rand(2, 3, 32, 32)), "samples must be a uint8 tensor"),
    (dict(samples=noise_images(0)), "samples needs at least 1 image, got 0"),
])
def test_nearest_neighbours_reject_bad_input(kwargs, match):
    kwargs = {"samples": noise_images(2), "train_images": noise_images(4), **kwargs}
    with pytest.raises(ValueError, match=match):
        metrics.nearest_neighbours(**kwargs)


@pytest.mark.slow  # two full Inception networks on the CPU
def test_inception_extractor_matches_torch_fidelity(monkeypatch, tmp_path):
    """Same weights in, same 2048-d pool3 features out as torch-fidelity's own extractor (TF1 resize, no
    antialiasing). Random weights stand in for the downloaded ones, which tests cannot fetch. torchmetrics'
    antialiased default, with the same weights, gets its own cache entry (it once got this one's features)."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:  # a randomly initialised network, to take its weights from
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        weights = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    monkeypatch.setattr(fe, "load_state_dict_from_url",
                        lambda url, **k: weights if url == fe.URL_INCEPTION_V3 else 1 / 0)
    ours = metrics.inception_extractor()
    reference = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    images, _ = make_shapes(2, seed=3)
    features = metrics.extract_features(images, ours)
    assert features.shape == (2, 2048) and features.abs().sum() > 0
    torch.testing.assert_close(features, reference(images)[0], rtol=1e-4, atol=1e-6)
    antialiased = NoTrainInceptionV3("inception-v3-compat", ["2048"], antialias=True)
    for extractor in (ours, antialiased):
        metrics.cached_features(images, extractor, "shapes", cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_inception_score_is_torch_fidelitys_and_has_its_closed_forms():
    """Against torch-fidelity's own computation from logits (unshuffled, 10 splits), and at the two ends: every
    class with certainty scores K, a p(y|x) equal to p(y) scores 1."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(500, 1008, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    mean, std = metrics.inception_score(logits.softmax(1))
    expected = isc_features_to_metric(logits, splits=10, shuffle=False)
    assert mean == pytest.approx(expected["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(expected["inception_score_std"], rel=1e-9)
    confident = torch.eye(10, dtype=torch.float64).repeat(20, 1)
    assert metrics.inception_score(confident) == pytest.approx((10, 0), abs=1e-9)
    assert metrics.inception_score(torch.full((200, 10), 0.1))[0] == pytest.approx(1, rel=1e-6)
    one_class = torch.eye(10, dtype=torch.float64)[torch.zeros(200, dtype=torch.long)]
    assert metrics.inception_score(one_class)[0] == pytest.approx(1, rel=1e-12)  # certain, but of one class
    with pytest.raises(ValueError, match="N >= splits=10"):
        metrics.inception_score(confident[:5])


def test_evaluate_checkpoint_scores_is_with_a_classifier(checkpoint, folder, tiny, tmp_path):
    """classifier= gives the Inception Score of the same samples; with another feature extractor and no
    classifier there is none."""
    kw = dict(n=12, sampler="ddim", sample_steps=2, ref=str(folder), batch_size=8, device="cpu", seed=1,
              feature_extractor=ConvFeatures(), cache_dir=tmp_path / "cache", progress=False)
    assert evaluation.evaluate_checkpoint(checkpoint, **kw)["is_mean"] is None
    result = evaluation.evaluate_checkpoint(checkpoint, classifier=ConvFeatures(), **kw)
    model, schedule = tiny
    fake = generate_images(Denoiser(model, schedule, OBJECTIVE), 12, sampler="ddim", sample_steps=2, batch_size=8,
                           seed=1)
    probs = metrics.extract_features(fake, ConvFeatures(), batch_size=8).double().softmax(1)
    assert (result["is_mean"], result["is_std"]) == pytest.approx(metrics.inception_score(probs), rel=1e-9)


def test_grayscale_images_are_scored_as_their_channel_repeated():
    """A (N, 1, H, W) image reaches the extractor as R = G = B, the same features as its channel repeated by hand."""
    class Conv(nn.Module):  # uint8 RGB in, as the real extractors take them
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x.float() / 255).mean((2, 3))

    extractor = Conv()
    gray = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(metrics.extract_features(gray, extractor),
                               metrics.extract_features(gray.repeat(1, 3, 1, 1), extractor), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) or \(N, 1, H, W\), got torch.uint8 \(5, 2, 8, 8\)"):
        metrics.extract_features(gray.repeat(1, 2, 1, 1), extractor)
