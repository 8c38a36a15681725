"""A small CIFAR-10 classifier that ships with the package, for scores that need no download.

SmallCNN (0.32M weights) was trained once on CIFAR-10's 50,000 training images (scripts/ship_classifier.py); its
weights ship in float16 as ddpm_lib/weights/cifar10_classifier.pt, with a JSON card beside it (test accuracy,
what it was trained on, the file's sha256, checked on every read). Its uses:
  - does a class-conditional sample show the class asked for: `features_and_probabilities(...)[1].argmax(1)`;
  - FID, KID and an Inception-Score-form score in its 256-d penultimate features, where the Inception network's
    weights cannot be downloaded: `classifier_extractor()` is a feature_extractor for ddpm_lib.metrics, and
    `classifier_extractor(output="logits")` a classifier for the IS-form score.
Such numbers compare models scored by this same classifier; they are not the papers' Inception FIDs.
"""
from __future__ import annotations

import torch
from torch import nn

from .shipped import WEIGHTS, read_card
from .utils import check_int, default_device, to_model_range

CLASSIFIER_WEIGHTS = WEIGHTS / "cifar10_classifier.pt"  # the shipped weights; the card is cifar10_classifier.json
CLASSIFIER_FORMAT = "ddpm_lib.classifier"
OUTPUTS = ("features", "logits")                         # what classifier_extractor's module returns


class SmallCNN(nn.Module):
    """Three conv stages (32, 64, 128 channels, batch norm, 2x pooling) and a 256-d feature layer; 0.32M weights.

    Takes float images in [-1, 1] (N, 3, 32, 32); returns class logits (N, classes)."""

    def __init__(self, classes: int = 10, width: int = 32, features: int = 256):
        super().__init__()

        def stage(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.body = nn.Sequential(stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, features), nn.ReLU())
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _rgb(images) -> torch.Tensor:
    """uint8 images (N, 3, 32, 32), or grayscale ones (N, 1, 32, 32) with their one channel repeated into R, G and B:
    the classifier was trained on CIFAR-10's colour images, so grayscale ones (a folder of digits) are scored as
    the colour images that look the same."""
    if not (torch.is_tensor(images) and images.dtype == torch.uint8 and images.dim() == 4
            and images.shape[1] in (1, 3) and tuple(images.shape[2:]) == (32, 32)):
        got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor (N, 3, 32, 32) (CIFAR-10's size) or (N, 1, 32, 32) "
                         f"(grayscale), got {got}")
    return images.expand(-1, 3, -1, -1)  # grayscale: the one channel repeated (a view); RGB: as it is


def _load(path, device) -> tuple[SmallCNN, dict]:
    """(SmallCNN in eval mode with the shipped weights in float32 on `device`, its card); the sha256 checked first."""
    card = read_card(path)
    kept = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(kept, dict) or kept.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a shipped ddpm_lib classifier (no format={CLASSIFIER_FORMAT!r} entry)")
    model = SmallCNN()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in kept["state"].items()})
    device = torch.device(device) if device is not None else default_device()
    return model.to(device).eval(), card


def load_cifar10_classifier(device=None, path=CLASSIFIER_WEIGHTS) -> SmallCNN:
    """The shipped CIFAR-10 classifier in eval mode on `device` (default: default_device()); its card (test
    accuracy, training) is `ddpm_lib.shipped.read_card(CLASSIFIER_WEIGHTS)`."""
    return _load(path, device)[0]


@torch.no_grad()
def features_and_probabilities(model: SmallCNN, images: torch.Tensor, batch_size: int = 500,
                               device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float64 (N, 256), class probabilities float64 (N, 10)) on the CPU of uint8 images (N, 3, 32, 32),
    or grayscale (N, 1, 32, 32) (repeated to RGB: _rgb), in batches on `device` (default: the model's)."""
    images = _rgb(images)
    check_int(batch_size, "batch_size")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    feats, probs = [], []
    for i in range(0, len(images), batch_size):
        f = model.features(to_model_range(images[i:i + batch_size].to(device)))
        feats.append(f.double().cpu())
        probs.append(model.head(f).double().softmax(1).cpu())
    return torch.cat(feats), torch.cat(probs)


class ClassifierFeatures(nn.Module):
    """uint8 images (N, 3, 32, 32) -> the classifier's 256-d features, or its class logits: the feature_extractor
    (or classifier) that ddpm_lib.metrics' fid_kid, evaluate_checkpoint and nearest_neighbours take. Grayscale
    images (N, 1, 32, 32) are scored with their channel repeated into R, G and B (_rgb)."""

    def __init__(self, classifier: SmallCNN, output: str, test_accuracy: float):
        super().__init__()
        self.classifier = classifier
        self.output = output
        self.name = "cifar10-classifier" if output == "features" else "cifar10-classifier-logits"  # cache file names
        self.description = (f"CIFAR-10 classifier features (256-d, test accuracy {test_accuracy:.1%})"
                            if output == "features" else f"CIFAR-10 classifier (test accuracy {test_accuracy:.1%})")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.classifier.features(to_model_range(_rgb(images)))
        return f if self.output == "features" else self.classifier.head(f)


def classifier_extractor(output: str = "features", device=None, path=CLASSIFIER_WEIGHTS) -> ClassifierFeatures:
    """The shipped classifier as a metrics feature extractor: output "features" (FID, KID) or "logits" (the
    IS-form score); `.description` says what it is: 'CIFAR-10 classifier features (256-d, test accuracy X%)'."""
    if output not in OUTPUTS:
        raise ValueError(f"output: expected one of {OUTPUTS}, got {output!r}")
    model, card = _load(path, device)
    return ClassifierFeatures(model, output, card["test_accuracy"]).eval()
