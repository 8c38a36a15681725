"""ddpm_lib.classifier: the shipped CIFAR-10 classifier reads back offline (its sha256 checked), classifies real
test images as its card says, and gives features and probabilities to ddpm_lib.metrics unchanged."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from ddpm_lib import metrics
from ddpm_lib.classifier import (CLASSIFIER_WEIGHTS, SmallCNN, classifier_extractor, features_and_probabilities,
                                 load_cifar10_classifier)
from ddpm_lib.shipped import card_path, read_card, sha256_of
from ddpm_lib.tolerance import assert_close

TEST_IMAGES = Path(__file__).resolve().parents[1] / "data" / "cifar10-jpeg" / "test"
# the longest sum in SmallCNN: a 3x3 convolution over 128 channels; 6 convolutions and 2 linear layers in a row
REDUCTION, LAYERS = 3 * 3 * 128, 8


@pytest.fixture(scope="module")
def classifier():
    return load_cifar10_classifier("cpu")


@pytest.fixture
def images():
    return torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_the_shipped_classifier_is_smallcnn_in_eval_mode_from_float16_weights(classifier):
    card = read_card(CLASSIFIER_WEIGHTS)
    assert isinstance(classifier, SmallCNN) and not classifier.training
    assert sum(p.numel() for p in classifier.parameters()) == 323_050 and "323,050 weights in float16" in card["what"]
    assert all(p.dtype == torch.float32 for p in classifier.parameters())
    stored = torch.load(CLASSIFIER_WEIGHTS, weights_only=True)["state"]
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    for name, value in classifier.state_dict().items():  # float16 read back exactly, nothing else done to it
        torch.testing.assert_close(value, stored[name].to(value.dtype), rtol=0, atol=0, msg=name)
    assert 0.8 < card["test_accuracy"] < 0.83 and card["sha256"] == sha256_of(CLASSIFIER_WEIGHTS)
    assert "training images" in card["trained_on"] and "10,000 test images" in card["test_images"]


def test_a_changed_or_missing_classifier_file_fails_clearly(tmp_path):
    bad = tmp_path / "bad.pt"
    shutil.copy(card_path(CLASSIFIER_WEIGHTS), card_path(bad))
    data = bytearray(CLASSIFIER_WEIGHTS.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit in a weight
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad.pt: sha256 .* is not its card's"):
        load_cifar10_classifier("cpu", bad)
    bad.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # what a clone without LFS holds
    with pytest.raises(ValueError, match="git-lfs pointer"):
        classifier_extractor(path=bad)
    with pytest.raises(FileNotFoundError, match="shipped weights not found"):
        load_cifar10_classifier("cpu", tmp_path / "missing.pt")
    other = tmp_path / "other.pt"  # right sha256, wrong contents: a plain state dict
    torch.save(SmallCNN().state_dict(), other)
    card_path(other).write_text(json.dumps({"sha256": sha256_of(other)}))
    with pytest.raises(ValueError, match="is not a shipped ddpm_lib classifier"):
        load_cifar10_classifier("cpu", other)


def test_features_and_probabilities_of_uint8_images_in_any_batching(classifier, images):
    feats, probs = features_and_probabilities(classifier, images, batch_size=3)
    assert feats.shape == (7, 256) and probs.shape == (7, 10) and feats.dtype == probs.dtype == torch.float64
    torch.testing.assert_close(probs.sum(1), torch.ones(7, dtype=torch.float64))
    assert (feats >= 0).all()  # the features come out of a ReLU
    whole_feats, whole_probs = features_and_probabilities(classifier, images)  # one batch
    # computed in float32 (then widened): float32's tolerance
    assert_close(feats.float(), whole_feats.float(), REDUCTION, LAYERS)
    assert_close(probs.float(), whole_probs.float(), REDUCTION, LAYERS)
    one = features_and_probabilities(classifier, images[3:4])[0]  # an image's features do not depend on the others
    assert_close(one[0].float(), whole_feats[3].float(), REDUCTION, LAYERS)


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 16, 16, dtype=torch.uint8),
                                 torch.zeros(3, 32, 32, dtype=torch.uint8), [[0]]])
def test_images_must_be_uint8_cifar10_sized(classifier, bad):
    with pytest.raises(ValueError, match=r"images must be a uint8 tensor \(N, 3, 32, 32\)"):
        features_and_probabilities(classifier, bad)


def test_bad_arguments_are_named(classifier, images):
    with pytest.raises(ValueError, match="batch_size"):
        features_and_probabilities(classifier, images, batch_size=0)
    with pytest.raises(ValueError, match="output: expected one of"):
        classifier_extractor("probabilities")


def test_the_extractor_gives_metrics_the_same_features_and_logits(classifier, images):
    extractor, logits = classifier_extractor(device="cpu"), classifier_extractor("logits", device="cpu")
    assert extractor.name == "cifar10-classifier"  # part of the feature cache's file names
    accuracy = read_card(CLASSIFIER_WEIGHTS)["test_accuracy"]
    assert extractor.description == f"CIFAR-10 classifier features (256-d, test accuracy {accuracy:.1%})"
    feats, probs = features_and_probabilities(classifier, images)
    assert_close(metrics.extract_features(images, extractor), feats.float(), REDUCTION, LAYERS)
    assert_close(metrics.extract_features(images, logits).softmax(1), probs.float(), REDUCTION, LAYERS)
    real, fake = images, torch.randint(0, 256, (9, 3, 32, 32), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(1))
    fid = metrics.fid_kid(real, fake, extractor, kid_subsets=2, kid_subset_size=7)["fid"]
    expected = metrics.frechet_distance(feats, features_and_probabilities(classifier, fake)[0])
    assert fid == pytest.approx(expected, rel=1e-3)


@pytest.mark.skipif(not TEST_IMAGES.is_dir(), reason="CIFAR-10's test images are not in data/cifar10-jpeg")
def test_it_recognises_real_cifar10_test_images_as_its_card_says(classifier):
    from ddpm_lib.data import load_image_folder

    test = load_image_folder(TEST_IMAGES, size=32)
    n = 500  # the first 500: classes in turn, 50 each
    probs = features_and_probabilities(classifier, test.images[:n])[1]
    accuracy = (probs.argmax(1) == test.labels[:n]).double().mean().item()
    p = read_card(CLASSIFIER_WEIGHTS)["test_accuracy"]  # measured on all 10,000
    assert abs(accuracy - p) < 4 * math.sqrt(p * (1 - p) / n)  # 4 binomial standard deviations of a subset of 500
