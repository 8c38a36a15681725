"""Data: CIFAR-10, image folders, the procedural "shapes" set (ddpm_lib.shapes), one loader by name, and batches
drawn on the device.

The loaders return an `ImageSet`: the images, their labels, and the `DataInfo` that says what they are, which
a run saves in its checkpoint and `reload_dataset` loads again on resume.
Images rest as uint8 (N, C, H, W) (C = 3, or 1 for a folder of grayscale images); `DeviceBatches` keeps them on the
training device and turns each batch into floats in [-1, 1] there (random horizontal flip included), so no DataLoader
workers are needed. A folder too large for that streams from its files instead (`scan_image_folder`, ddpm_lib.stream)
in the same order, `BatchOrder`'s.
"""
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import torch

from .cifar10 import CIFAR10_CLASSES, load_cifar10
from .folders import (FolderImages, channels_of, class_labels, classes_in_turn, common_size, decode_cached,
                      image_files, image_headers)
from .shapes import SHAPE_KINDS, make_shapes
from .utils import check_int, check_labels, mix_seed, to_model_range

# ----------------------------------------------------------------------------- what the images are

@dataclass(frozen=True)
class DataInfo:
    """What identifies a set of training images: the arguments of `load_dataset` that load them (again, on
    resume: `reload_dataset`) and what it found. A checkpoint's "data" entry (to_dict / from_dict)."""
    name: str                                   # "cifar10", "shapes", or an image folder's absolute path
    n: int                                      # images: the first n of CIFAR-10 or the folder; n shapes drawn
    size: int                                   # side in pixels (CIFAR-10 averaged down to it, a folder resized)
    split: str | None                           # "train" or "test" of CIFAR-10 or shapes (shapes' test split is
                                                # drawn from seed + 1); None for a folder (its path says which)
    seed: int | None = None                     # shapes: the seed they are drawn from; None for the others
    class_names: tuple[str, ...] | None = None  # label k is class_names[k]; None: no labels (a flat folder)
    fallback: str | None = None                 # why these images stand in for the ones asked for (CIFAR-10
                                                # unavailable: shapes); None: they are the ones asked for
    channels: int = 3                           # image channels: 3 (RGB), 1 (a folder whose images are all grayscale)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DataInfo.name must be 'cifar10', 'shapes' or a folder's path, got {self.name!r}")
        check_int(self.n, "DataInfo.n"), check_int(self.size, "DataInfo.size")
        folder, shapes = self.name not in ("cifar10", "shapes"), self.name == "shapes"
        if self.split not in ((None,) if folder else ("train", "test")):
            expected = "None (a folder has no splits)" if folder else "'train' or 'test'"
            raise ValueError(f"DataInfo.split must be {expected} for {self.name}, got {self.split!r}")
        is_int = isinstance(self.seed, int) and not isinstance(self.seed, bool)
        if not (is_int if shapes else self.seed is None):
            expected = "an int" if shapes else "None"
            raise ValueError(f"DataInfo.seed must be {expected} for {self.name}, got {self.seed!r}")
        names = self.class_names
        if names is not None and not (isinstance(names, tuple) and names and all(isinstance(c, str) for c in names)):
            raise ValueError(f"DataInfo.class_names must be a tuple of class names or None, got {names!r}")
        if self.fallback is not None and not isinstance(self.fallback, str):
            raise ValueError(f"DataInfo.fallback must be a str or None, got {self.fallback!r}")
        if self.channels not in ((1, 3) if folder else (3,)):
            expected = "1 (grayscale) or 3 (RGB)" if folder else "3"
            raise ValueError(f"DataInfo.channels must be {expected} for {self.name}, got {self.channels!r}")

    def to_dict(self) -> dict:
        """Plain values (str, int, tuple, None): what a checkpoint stores; from_dict reads them back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values) -> "DataInfo":
        """The DataInfo of to_dict's values (class_names also as a list); a ValueError naming what is wrong."""
        if not isinstance(values, dict):
            raise ValueError(f"expected a dict of DataInfo's fields, got {type(values).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [str(k) for k in values if k not in known]
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in values]
        if unknown or missing:
            wrong = ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []) + (
                [f"missing {', '.join(missing)}"] if missing else [])
            raise ValueError(f"{'; '.join(wrong)} (DataInfo's fields: {', '.join(known)})")
        names = values.get("class_names")
        return cls(**{**values, "class_names": tuple(names) if isinstance(names, list) else names})


class ImageSet(NamedTuple):
    """What the loaders return: the images, their labels, and the record of what they are."""
    images: torch.Tensor         # uint8 (N, info.channels, size, size)
    labels: torch.Tensor | None  # int64 (N,), indices into info.class_names; None without classes
    info: DataInfo               # what the images are: a run saves it in its checkpoint


# ----------------------------------------------------------------------------- image folders

def _folder(path, size) -> tuple[Path, list, torch.Tensor | None, tuple | None]:
    """(folder, its image files, labels, class names), the files and labels in training order (classes in turn)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (expected a folder of images)")
    if size is not None:
        check_int(size, "size")
    files = image_files(folder)
    labels, names = class_labels(folder, files)
    if labels is not None:
        order = classes_in_turn(labels)
        files, labels = [files[i] for i in order], labels[order]
    return folder, files, labels, names


def load_image_folder(path, size: int | None = 32) -> ImageSet:
    """All images under `path`, uint8 (N, C, size, size), labelled when they sit in class sub-folders.

    size: the side to resize to (non-square images are centre-cropped to a square first, then resized bicubic);
    None: the images' own side, which all of them must share, square (else a ValueError that names the sizes
    found and asks for a size). C: 1 when every image is grayscale (PIL modes L, 1, I, F, ...), else 3 (RGB); info
    records it. Every file's header is read before any is decoded: an unreadable one is named in one line. Classes:
    an image's label is the index of its first-level sub-folder in the sorted class names; with any image directly
    in `path` the folder has none (labels and info.class_names None). Order: files sorted by path, and in class
    sub-folders the classes taken in turn (the first image of each, then the second, ...). info.name is the
    folder's absolute path. The decoded tensor is cached in path/.ddpm_cache_{size}.pt, keyed by file names, sizes
    and modification times, so later calls skip decoding until the folder changes.
    """
    folder, files, labels, names = _folder(path, size)
    headers = image_headers(folder, files) if size is None else None  # read once: the size, then decode_cached
    size = common_size(folder, headers) if size is None else size
    images = decode_cached(folder, files, size, headers)
    return ImageSet(images, labels, DataInfo(str(folder.resolve()), len(images), size, None, class_names=names,
                                             channels=images.shape[1]))


def scan_image_folder(path, size: int | None = 32, n: int | None = None):
    """(FolderImages, labels, DataInfo) of the first n images under `path` (default all), with no pixel decoded: what
    load_image_folder(path, size) would load, in its order, with the same labels and record (info.n = n), its
    images as files decoded on demand. Every header is read (an unreadable file named in one line)."""
    if n is not None:
        check_int(n, "n")
    folder, files, labels, names = _folder(path, size)
    files, labels = files[:n], None if labels is None else labels[:n]
    headers = image_headers(folder, files)
    size = common_size(folder, headers) if size is None else size
    images = FolderImages(tuple(files), size, channels_of(headers))
    return images, labels, DataInfo(str(folder.resolve()), len(files), size, None, class_names=names,
                                    channels=images.channels)


def check_recorded(info: DataInfo, found: DataInfo) -> None:
    """A ValueError when the images found now (`found`) are not the ones a run recorded (`info`): a folder that
    changed."""
    if replace(found, fallback=info.fallback) != info:
        raise ValueError(f"data: {info.name} is not the recorded data any more (recorded {info}, found {found})")


# ----------------------------------------------------------------------------- batches on the device

class BatchOrder:
    """Which images each global batch holds, and which of them are flipped: the stream of images is the
    concatenation of per-epoch permutations (epoch e shuffled by a CPU generator seeded from (seed, e)), each with
    its own horizontal-flip bits, so global batch `step` is stream[step * batch_size : (step + 1) * batch_size] and
    depends on (seed, step) alone. Rank r of world_size takes the r-th of world_size disjoint, equal slices of every
    global batch. DeviceBatches and ddpm_lib.stream's StreamBatches share it, so both give the same batches."""

    def __init__(self, num_images: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 device=None):
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got {rank}, {world_size}")
        if not isinstance(batch_size, int) or batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size: expected a positive multiple of world_size={world_size}, got {batch_size!r}")
        self.num_images, self.batch_size, self.seed, self.rank = num_images, batch_size, seed, rank
        self.local_batch_size = batch_size // world_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._epochs: dict = {}  # epoch -> (permutation (N,), flip bits (N,)) on the device

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


class Batches:
    """What DeviceBatches and ddpm_lib.stream's StreamBatches share: BatchOrder's order of `num_images` images (kept
    on `order_device`), their labels on `device` and the batch sizes; a subclass's `batch(step)` gives the images."""

    def __init__(self, num_images: int, batch_size, device, seed=0, rank=0, world_size=1, labels=None,
                 order_device=None):
        self.device = torch.device(device)
        self.order = BatchOrder(num_images, batch_size, seed, rank, world_size, order_device)
        self.labels = (None if labels is None
                       else check_labels(labels, n=num_images, name="labels", low=0).to(self.device))
        self.num_images, self.batch_size, self.seed, self.rank = num_images, batch_size, seed, rank
        self.world_size, self.local_batch_size = world_size, batch_size // world_size

    def __len__(self):
        return self.num_images

    def indices(self, step):
        """(image indices (b,), flip bits (b,)) for this rank's share of global batch `step` (BatchOrder.indices)."""
        return self.order.indices(step)

    def batch_labels(self, step):
        """Int64 (b,) on the device: the labels of the rows of `batch(step)`; None without labels."""
        return None if self.labels is None else self.labels.index_select(0, self.indices(step)[0].to(self.device))


class DeviceBatches(Batches):
    """The whole data set on `device` as uint8; `batch(step)` -> this rank's floats in [-1, 1], in BatchOrder's
    order (per-epoch permutations and flip bits from (seed, epoch)), so resuming needs only the step.
    With `labels` (integers >= 0, one per image), `batch_labels(step)` gives the labels of exactly the rows
    of `batch(step)`.
    """

    def __init__(self, images_uint8, batch_size, device=None, flip=True, seed=0, rank=0, world_size=1, labels=None):
        if not (torch.is_tensor(images_uint8) and images_uint8.dtype == torch.uint8 and images_uint8.ndim == 4
                and len(images_uint8) > 0):
            raise ValueError("images_uint8: expected a non-empty uint8 tensor (N, C, H, W)")
        self.images = images_uint8.to(images_uint8.device if device is None else device)  # moved once, stays uint8
        super().__init__(len(images_uint8), batch_size, self.images.device, seed, rank, world_size, labels,
                         order_device=self.images.device)
        self.flip = flip

    def batch(self, step):
        """Float (b, C, H, W) in [-1, 1] on the device: this rank's share of global batch `step`."""
        idx, flips = self.indices(step)
        x = self.images.index_select(0, idx)
        if self.flip:
            x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        return to_model_range(x)


# ----------------------------------------------------------------------------- by name

def load_dataset(name, root=None, n=None, seed=0, download=True, size=32, split="train",
                 verify_md5=True) -> ImageSet:
    """The images called `name`, with their labels and DataInfo, at size x size:

    "cifar10": CIFAR-10's `split` under root (default "data"; downloaded when missing with download=True,
    md5-checked unless verify_md5=False), the first n, averaged down (area interpolation) when size < 32.
    "shapes": n (default 10,000) procedural shapes drawn from seed (split "test": from seed + 1, other shapes
    than the training ones). Else a folder of images (load_image_folder), the first n.
    """
    if n is not None:
        check_int(n, "n")
    check_int(size, "size")
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if name == "shapes":
        info = DataInfo("shapes", n or 10_000, size, split, seed, SHAPE_KINDS)
        images, labels = make_shapes(info.n, size=size, seed=seed + (split == "test"))
        return ImageSet(images, labels, info)
    if name == "cifar10":
        if size > 32:
            raise ValueError(f"size: CIFAR-10 images are 32x32 (averaged down to smaller sizes), got size={size}")
        images, labels = load_cifar10(root if root is not None else "data", train=split == "train",
                                      download=download, verify_md5=verify_md5)
        images, labels = images[:n], labels[:n]
        if size != 32:  # (N, 3, 32, 32) -> (N, 3, size, size), each pixel the mean of the ones it covers
            images = torch.nn.functional.interpolate(images.float(), size=size, mode="area").round().byte()
        return ImageSet(images, labels, DataInfo("cifar10", len(images), size, split, class_names=CIFAR10_CLASSES))
    if Path(str(name)).expanduser().is_dir():
        if split != "train":
            raise ValueError(f"split: an image folder has no splits (name the folder of that split), got {split!r}")
        images, labels, info = load_image_folder(name, size=size)
        images, labels = images[:n], None if labels is None else labels[:n]
        return ImageSet(images, labels, replace(info, n=len(images)))
    raise ValueError(f"data: expected cifar10, shapes or a folder of images, got {name!r}")


def reload_dataset(info: DataInfo, root=None, download=True, verify_md5=True) -> ImageSet:
    """The images `info` records, loaded again (a resumed run), with `info` itself; a ValueError when what
    loads now is not what was recorded (a folder that changed). root, download, verify_md5: as load_dataset's."""
    loaded = load_dataset(info.name, root=root, n=info.n, seed=info.seed or 0, download=download, size=info.size,
                          split=info.split or "train", verify_md5=verify_md5)
    check_recorded(info, loaded.info)
    return loaded._replace(info=info)
