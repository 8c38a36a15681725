"""Data: CIFAR-10, image folders, the procedural "shapes" set (ddpm_lib.shapes), and batches drawn on the device.

Images rest as uint8 (N, 3, H, W); `DeviceBatches` keeps them on the training device and turns each
batch into floats in [-1, 1] there (random horizontal flip included), so no DataLoader workers are needed.
"""
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .cifar10 import CIFAR10_CLASSES, load_cifar10
from .shapes import SHAPE_KINDS, make_shapes
from .utils import check_int, mix_seed, to_model_range

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


# ----------------------------------------------------------------------------- image folders

def _decode(file, size):
    """PIL decode -> RGB, centre crop to a square, resize to size x size -> uint8 (3, size, size)."""
    from PIL import Image  # only image folders need it

    try:
        with Image.open(file) as im:
            im = im.convert("RGB")
    except Exception as e:
        raise ValueError(f"could not read image {file} ({type(e).__name__}: {e})") from e
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _class_labels(folder, files):
    """Labels from the first-level sub-folder of each file (class names sorted, as torchvision's ImageFolder)."""
    loose = [f.name for f in files if len(f.relative_to(folder).parts) == 1]
    if loose:
        raise ValueError(f"with_labels=True expects images in class sub-folders of {folder}; found "
                         f"{len(loose)} directly in it (e.g. {loose[0]})")
    classes = [f.relative_to(folder).parts[0] for f in files]
    names = sorted(set(classes))
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[c] for c in classes], dtype=torch.int64), names


def _decode_cached(folder, files, size):
    """uint8 (N, 3, size, size) of `files`, from folder/.ddpm_cache_{size}.pt when its key matches."""
    listing = "\n".join(f"{f.relative_to(folder)}\t{f.stat().st_size}\t{f.stat().st_mtime_ns}" for f in files)
    key = hashlib.sha256(f"{size}\n{listing}".encode()).hexdigest()
    cache = folder / f".ddpm_cache_{size}.pt"
    if cache.is_file():
        try:
            cached = torch.load(cache, weights_only=True)
            if cached.get("key") == key:
                return cached["images"]
        except Exception:
            pass  # unreadable cache: decode again and overwrite it
    images = torch.stack([_decode(f, size) for f in files])
    try:
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save({"key": key, "images": images}, tmp)
        os.replace(tmp, cache)
    except OSError as e:
        warnings.warn(f"could not write the image cache {cache} ({e}); images will be decoded again next time",
                      stacklevel=2)
    return images


def load_image_folder(path, size=32, with_labels=False):
    """All images under `path` (flat or in class sub-folders), as uint8 (N, 3, size, size).

    with_labels=True: (images, labels int64 (N,), class_names), the label of an image being the index of
    its first-level sub-folder in the sorted class_names; images directly in `path` are then an error.
    Non-square images are centre-cropped to a square, then resized (bicubic). Files are sorted by path.
    The decoded tensor is cached in path/.ddpm_cache_{size}.pt, keyed by file names, sizes and
    modification times, so later calls skip decoding until the folder changes (the labels follow from
    the same sorted file names, so the key covers them too).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (expected a folder of images)")
    check_int(size, "size")
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(folder).parts))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    classes = _class_labels(folder, files) if with_labels else None  # (labels, names), checked before decoding
    images = _decode_cached(folder, files, size)
    return (images, *classes) if with_labels else images


# ----------------------------------------------------------------------------- batches on the device

class DeviceBatches:
    """The whole data set on `device` as uint8; `batch(step)` -> this rank's floats in [-1, 1].

    The stream of images is the concatenation of per-epoch permutations (epoch e shuffled by a CPU
    generator seeded from (seed, e)), each with its own horizontal-flip bits, so global batch `step`
    is stream[step * batch_size : (step + 1) * batch_size] and resuming needs only the step. Rank r of
    world_size takes the r-th of world_size disjoint, equal slices of every global batch.
    With `labels` (integers >= 0, one per image), `batch_labels(step)` gives the labels of exactly the rows
    of `batch(step)`.
    """

    def __init__(self, images_uint8, batch_size, device=None, flip=True, seed=0, rank=0, world_size=1, labels=None):
        if not (torch.is_tensor(images_uint8) and images_uint8.dtype == torch.uint8 and images_uint8.ndim == 4
                and len(images_uint8) > 0):
            raise ValueError("images_uint8: expected a non-empty uint8 tensor (N, C, H, W)")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got {rank}, {world_size}")
        if not isinstance(batch_size, int) or batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size: expected a positive multiple of world_size={world_size}, got {batch_size!r}")
        self.images = images_uint8.to(images_uint8.device if device is None else device)  # moved once, stays uint8
        self.device = self.images.device
        self.labels = None if labels is None else _check_labels(labels, len(images_uint8)).to(self.device)
        self.batch_size, self.flip, self.seed, self.rank, self.world_size = batch_size, flip, seed, rank, world_size
        self.local_batch_size = batch_size // world_size
        self._epochs = {}  # epoch -> (permutation (N,), flip bits (N,)) on the device

    @property
    def num_images(self):
        return len(self.images)

    def __len__(self):
        return len(self.images)

    def _epoch(self, epoch):
        if epoch not in self._epochs:
            g = torch.Generator().manual_seed(mix_seed("epoch", self.seed, epoch))
            perm = torch.randperm(self.num_images, generator=g)
            flips = torch.rand(self.num_images, generator=g) < 0.5
            self._epochs[epoch] = (perm.to(self.device), flips.to(self.device))
        return self._epochs[epoch]

    def indices(self, step):
        """(image indices (b,), flip bits (b,)) on the device for this rank's share of global batch `step`."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step: expected a non-negative integer, got {step!r}")
        N, b = self.num_images, self.local_batch_size
        start = step * self.batch_size + self.rank * b  # position in the stream
        first, last = start // N, (start + b - 1) // N
        for epoch in [e for e in self._epochs if e < first]:
            del self._epochs[epoch]
        if first == last:
            perm, flips = self._epoch(first)
        else:  # the batch runs over epoch boundaries (always when N < b)
            perm, flips = (torch.cat(t) for t in zip(*(self._epoch(e) for e in range(first, last + 1))))
        pos = torch.arange(start - first * N, start - first * N + b, device=self.device)
        return perm[pos], flips[pos]

    def batch(self, step):
        """Float (b, C, H, W) in [-1, 1] on the device: this rank's share of global batch `step`."""
        idx, flips = self.indices(step)
        x = self.images.index_select(0, idx)
        if self.flip:
            x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        return to_model_range(x)

    def batch_labels(self, step):
        """Int64 (b,) on the device: the labels of the rows of `batch(step)`; None without labels."""
        return None if self.labels is None else self.labels.index_select(0, self.indices(step)[0])


def _check_labels(labels, n):
    """labels -> int64 (n,) tensor, or ValueError saying what was expected."""
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected integers, got dtype {labels.dtype}")
    if labels.shape != (n,) or (n and labels.min() < 0):
        raise ValueError(f"labels: expected {n} integers >= 0 (one per image), got shape {tuple(labels.shape)}"
                         + (f" with minimum {labels.min().item()}" if labels.numel() else ""))
    return labels.long()


# ----------------------------------------------------------------------------- by name

def load_dataset(name_or_path, root=None, n=None, seed=0, download=True, size=32, with_labels=False):
    """uint8 images for "cifar10" (train split under root, default "data"), "shapes" (n, default
    10,000, from seed) or a folder of images; n also keeps only the first n of cifar10 or a folder.

    with_labels=True: (images, labels int64 (N,), class_names): CIFAR10_CLASSES, SHAPE_KINDS, or the
    folder's class sub-folders (see load_image_folder).
    """
    if n is not None:
        check_int(n, "n")
    if name_or_path == "shapes":
        images, labels = make_shapes(n or 10_000, size=size, seed=seed, with_labels=True)
        names = list(SHAPE_KINDS)
    elif name_or_path == "cifar10":
        if size != 32:
            raise ValueError(f"size: CIFAR-10 images are 32x32, got size={size}")
        images, labels = load_cifar10(root if root is not None else "data", train=True, download=download)
        names = list(CIFAR10_CLASSES)
    elif Path(str(name_or_path)).expanduser().is_dir():
        loaded = load_image_folder(name_or_path, size=size, with_labels=with_labels)
        images, labels, names = loaded if with_labels else (loaded, None, None)
    else:
        raise ValueError(f"data: expected cifar10, shapes or a folder of images, got {name_or_path!r}")
    if not with_labels:
        return images[:n]
    return images[:n], labels[:n], names
