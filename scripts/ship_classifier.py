"""Ship the CIFAR-10 classifier with the package: ddpm_lib/weights/cifar10_classifier.pt (float16) and its card.

    python scripts/ship_classifier.py --kept classifier.pt --source WHERE  # float32 weights kept before
    python scripts/ship_classifier.py      # train SmallCNN here first (5 epochs, about 7 CPU-minutes)

The shipped weights were trained once by the recipe benchmark and kept as docs/recipes/classifier.pt (float32),
then written here from it: `git show e083c87:docs/recipes/classifier.pt > /tmp/classifier.pt`, then
`--kept /tmp/classifier.pt --source "docs/recipes/classifier.pt at commit e083c87"`. The card gives the float16
weights' accuracy on CIFAR-10's 10,000 test images, measured through ddpm_lib.classifier's own loader, what they
were trained on, and the file's sha256 (checked on every read).
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm_lib.checkpoint import write_atomically
from ddpm_lib.classifier import CLASSIFIER_FORMAT, CLASSIFIER_WEIGHTS, SmallCNN, features_and_probabilities, \
    load_cifar10_classifier
from ddpm_lib.data import load_image_folder
from ddpm_lib.shipped import card_path, sha256_of
from ddpm_lib.utils import to_model_range

DATA = Path(__file__).resolve().parents[1] / "data" / "cifar10-jpeg"
TRAINING = ("CIFAR-10's 50,000 training images (the JPEG copy in data/cifar10-jpeg/train), {epochs} epochs at batch "
            "128: SGD with Nesterov momentum 0.9 and weight decay 5e-4, a one-cycle learning rate up to 0.1, random "
            "horizontal flips and shifts of up to 2 pixels")


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations by up to 2 pixels (reflect padding), per image."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()  # one shift per batch: cheap and enough here
    return padded[:, :, dy:dy + 32, dx:dx + 32]


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 5, seed: int = 0) -> dict:
    """SmallCNN trained on uint8 images and their labels: {"state", "epochs", "train_seconds"}."""
    torch.manual_seed(seed)
    model, g = SmallCNN(), torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(images) / 128)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(images), generator=g).split(128):
            loss = F.cross_entropy(model(_augment(to_model_range(images[idx]), g)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)",
              flush=True)
    return {"state": model.state_dict(), "epochs": epochs, "train_seconds": time.perf_counter() - start}


def _write_card(out: Path, card: dict) -> None:
    write_atomically(card_path(out), lambda f: f.write((json.dumps(card, indent=1) + "\n").encode()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kept", type=Path, help="a float32 classifier kept by the recipe benchmark ({'state', "
                   "'test_accuracy', 'epochs', 'train_seconds'}); without it SmallCNN is trained here")
    p.add_argument("--source", help="where --kept comes from, for the card (default: its path)")
    p.add_argument("--out", type=Path, default=CLASSIFIER_WEIGHTS, help="the shipped file (default: the package's)")
    args = p.parse_args()
    if args.kept is not None:
        kept = torch.load(args.kept, map_location="cpu", weights_only=True)
        source = (f"{args.source or args.kept}: float32 weights kept by the recipe benchmark, test accuracy "
                  f"{kept['test_accuracy']} (float32)")
    else:
        train = load_image_folder(DATA / "train", size=32)
        kept, source = train_classifier(train.images, train.labels), "trained by scripts/ship_classifier.py"
    state = {k: v.half() if v.is_floating_point() else v for k, v in kept["state"].items()}
    write_atomically(args.out, lambda f: torch.save({"format": CLASSIFIER_FORMAT, "state": state}, f))
    weights = sum(p.numel() for p in SmallCNN().parameters())  # the state's batch-norm statistics besides
    card = {"what": f"SmallCNN (ddpm_lib.classifier), {weights:,} weights in float16",
            "trained_on": TRAINING.format(epochs=kept["epochs"]), "epochs": kept["epochs"],
            "train_seconds": round(kept["train_seconds"], 1), "source": source}
    sha256 = sha256_of(args.out)
    _write_card(args.out, {**card, "sha256": sha256})  # the loader checks it; the accuracy is measured through it
    test = load_image_folder(DATA / "test", size=32)
    probs = features_and_probabilities(load_cifar10_classifier("cpu", args.out), test.images)[1]
    accuracy = (probs.argmax(1) == test.labels).double().mean().item()
    _write_card(args.out, {**card, "test_accuracy": accuracy, "test_images": f"CIFAR-10's {len(test.images):,} test "
                           "images (the JPEG copy in data/cifar10-jpeg/test), float16 weights as the loader reads them",
                           "sha256": sha256})
    print(card_path(args.out).read_text())
    print(f"{args.out}: {args.out.stat().st_size / 2**10:.0f} KiB")


if __name__ == "__main__":
    main()
