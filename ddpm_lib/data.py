"""Data: CIFAR-10, image folders, a procedural "shapes" set, and batches drawn on the device.

Images rest as uint8 (N, 3, H, W); `DeviceBatches` keeps them on the training device and turns each
batch into floats in [-1, 1] there (random horizontal flip included), so no DataLoader workers are needed.
"""
import hashlib
import io
import os
import pickle
import struct
import warnings
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import calculate_md5, download_and_extract_archive

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


# ----------------------------------------------------------------------------- CIFAR-10 batches

class _Py2Pickler(pickle._Pickler):
    """Pickles `bytes` as Python 2 `str` (BINSTRING), as CIFAR-10's own cPickle batches do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


class _ArrayUnpickler(pickle.Unpickler):
    """Loads plain containers and numpy arrays only: a batch file cannot run code."""

    _allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path):
    """One CIFAR-10 batch file -> (uint8 (n, 3, 32, 32), int64 (n,)); ValueError naming the file if corrupt."""
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        data, labels = np.asarray(entry["data"], dtype=np.uint8), np.asarray(entry["labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise ValueError(f"data {data.shape}, {len(labels)} labels; expected (n, 3072) and n labels")
    except Exception as e:
        raise ValueError(f"{path} is not a readable CIFAR-10 batch ({type(e).__name__}: {e}); "
                         f"delete it and load again to re-download") from e
    # rows are R, G, B planes of 1024 pixels each, row-major: (n, 3072) -> (n, 3, 32, 32)
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def load_cifar10(root, train=True, download=True, verify_md5=True):
    """CIFAR-10 as (uint8 images (N, 3, 32, 32), int64 labels (N,)) from root/cifar-10-batches-py.

    download: fetch and extract torchvision's archive (md5-checked) when batch files are missing.
    verify_md5: check every batch file against torchvision's md5 list; False accepts fixtures
    written by `write_cifar10_format`.
    """
    root = Path(root).expanduser()
    folder = root / CIFAR10.base_folder
    expected = CIFAR10.train_list if train else CIFAR10.test_list

    def check():  # -> (missing names, {name: actual md5} of files that fail verify_md5)
        missing = [name for name, _ in expected if not (folder / name).is_file()]
        wrong = {name: actual for name, md5 in expected if verify_md5 and name not in missing
                 and (actual := calculate_md5(folder / name)) != md5}
        return missing, wrong

    missing, wrong = check()
    if download and (missing or wrong):
        try:
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except (URLError, OSError, RuntimeError) as e:
            names = ", ".join(name for name, _ in expected)
            raise FileNotFoundError(f"CIFAR-10 not found: expected {names} in {folder}, and downloading "
                                    f"{CIFAR10.url} failed ({e})") from e
        missing, wrong = check()
    if missing:
        hint = "" if download else " (pass download=True to fetch it)"
        raise FileNotFoundError(f"CIFAR-10 not found: expected {', '.join(missing)} in {folder}{hint}")
    if wrong:
        name, actual = next(iter(wrong.items()))
        raise ValueError(f"{folder / name}: md5 {actual} does not match CIFAR-10's {dict(expected)[name]} "
                         f"(corrupt, or not the original file: delete it, or pass verify_md5=False)")
    parts = [_read_batch(folder / name) for name, _ in expected]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _as_cifar_arrays(images, labels, what):
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, 32, 32):
        raise ValueError(f"{what} images: expected uint8 (N, 3, 32, 32), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),) or ((labels < 0) | (labels > 9)).any():
        raise ValueError(f"{what} labels: expected {len(images)} integers in 0..9, got shape {labels.shape}")
    return images.reshape(len(images), 3072), labels  # (N, 3072): R, G, B planes, row-major


def _dump(path, obj):
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue())


def write_cifar10_format(root, images, labels, test_images=None, test_labels=None):
    """Write uint8 (N, 3, 32, 32) images in CIFAR-10's own format under root/cifar-10-batches-py.

    The train split is spread over data_batch_1..5; the test split (test_batch) holds test_images,
    or the same images when none are given. Files are protocol-2 pickles of dicts with the original's
    keys (batch_label, labels, data (n, 3072) uint8, filenames) and batches.meta.
    """
    train = _as_cifar_arrays(images, labels, "train")
    test = train if test_images is None else _as_cifar_arrays(test_images, test_labels, "test")
    folder = Path(root).expanduser() / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    batches = [(f"data_batch_{i + 1}", f"training batch {i + 1} of 5", d, l)
               for i, (d, l) in enumerate(zip(np.array_split(train[0], 5), np.array_split(train[1], 5)))]
    batches.append(("test_batch", "testing batch 1 of 1", *test))
    for name, batch_label, data, batch_labels in batches:
        _dump(folder / name, {
            b"batch_label": batch_label.encode(),
            b"labels": [int(label) for label in batch_labels],
            b"data": np.ascontiguousarray(data),
            b"filenames": [f"{CIFAR10_CLASSES[label]}_s_{i:06d}.png".encode() for i, label in enumerate(batch_labels)],
        })
    _dump(folder / CIFAR10.meta["filename"], {
        b"num_cases_per_batch": max(len(b[2]) for b in batches),
        b"label_names": [name.encode() for name in CIFAR10_CLASSES],
        b"num_vis": 3072,
    })


# ----------------------------------------------------------------------------- image folders

def _decode(file, size):
    """PIL decode -> RGB, centre crop to a square, resize to size x size -> uint8 (3, size, size)."""
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


def load_image_folder(path, size=32):
    """All images under `path` (flat or in class sub-folders), as uint8 (N, 3, size, size).

    Non-square images are centre-cropped to a square, then resized (bicubic). Files are sorted by path.
    The decoded tensor is cached in path/.ddpm_cache_{size}.pt, keyed by file names, sizes and
    modification times, so later calls skip decoding until the folder changes.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist (expected a folder of images)")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size: expected a positive integer, got {size!r}")
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(folder).parts))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
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
        warnings.warn(f"could not write the image cache {cache} ({e}); images will be decoded again next time")
    return images


# ----------------------------------------------------------------------------- procedural shapes

_PALETTE = torch.tensor([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                         [145, 30, 180], [240, 240, 240], [20, 20, 20]], dtype=torch.uint8)  # (P, 3) RGB


def _shape_mask(kind, dx, dy, r):
    """Pixels inside a circle (0), square (1) or triangle (2) of radius r, at offsets dx, dy from its centre."""
    if kind == 0:
        return dx ** 2 + dy ** 2 <= r ** 2
    if kind == 1:
        return (dx.abs() <= 0.8 * r) & (dy.abs() <= 0.8 * r)
    return (dy <= r) & (dx.abs() <= (dy + r) / 2)  # apex (0, -r), base of width 2r at dy = r


def make_shapes(n, size=32, seed=0):
    """n images uint8 (n, 3, size, size): one solid circle, square or triangle on a plain background.

    Kind, colours (two distinct palette colours), radius r in [0.15, 0.3] * size and a centre that
    keeps the shape inside the image (corners stay background) are drawn with a CPU generator seeded by `seed`.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size: expected an integer >= 8, got {size!r}")
    g = torch.Generator().manual_seed(seed)
    P = len(_PALETTE)
    kind = torch.randint(0, 3, (n,), generator=g)  # 0 circle, 1 square, 2 triangle
    bg = torch.randint(0, P, (n,), generator=g)
    fg = (bg + torch.randint(1, P, (n,), generator=g)) % P
    r = size * (0.15 + 0.15 * torch.rand(n, generator=g))
    cx, cy = ((r + 1) + (size - 2 * r - 2) * torch.rand(2, n, generator=g)).view(2, n, 1, 1)
    grid = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    dx, dy, r = grid.view(1, 1, size) - cx, grid.view(1, size, 1) - cy, r.view(n, 1, 1)  # (n,1,W), (n,H,1)
    inside = torch.empty(n, size, size, dtype=torch.bool)
    for k in range(3):
        s = kind == k
        inside[s] = _shape_mask(k, dx[s], dy[s], r[s])
    fg, bg = _PALETTE[fg].view(n, 3, 1, 1), _PALETTE[bg].view(n, 3, 1, 1)
    return torch.where(inside.unsqueeze(1), fg, bg)  # (n, 3, size, size)


# ----------------------------------------------------------------------------- batches on the device

def mix_seed(*parts) -> int:
    """A 63-bit generator seed from integers such as (seed, step, rank): an independent stream per tuple."""
    digest = hashlib.sha256(":".join(["ddpm_lib", *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (the range the model sees)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded and clipped (the way back)."""
    return ((x.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


class DeviceBatches:
    """The whole data set on `device` as uint8; `batch(step)` -> this rank's floats in [-1, 1].

    The stream of images is the concatenation of per-epoch permutations (epoch e shuffled by a CPU
    generator seeded from (seed, e)), each with its own horizontal-flip bits, so global batch `step`
    is stream[step * batch_size : (step + 1) * batch_size] and resuming needs only the step. Rank r of
    world_size takes the r-th of world_size disjoint, equal slices of every global batch.
    """

    def __init__(self, images_uint8, batch_size, device=None, flip=True, seed=0, rank=0, world_size=1):
        if not (torch.is_tensor(images_uint8) and images_uint8.dtype == torch.uint8 and images_uint8.ndim == 4
                and len(images_uint8) > 0):
            raise ValueError("images_uint8: expected a non-empty uint8 tensor (N, C, H, W)")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got {rank}, {world_size}")
        if not isinstance(batch_size, int) or batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size: expected a positive multiple of world_size={world_size}, got {batch_size!r}")
        self.images = images_uint8.to(images_uint8.device if device is None else device)  # moved once, stays uint8
        self.device = self.images.device
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


# ----------------------------------------------------------------------------- by name

def load_dataset(name_or_path, root=None, n=None, seed=0, download=True, size=32):
    """uint8 images for "cifar10" (train split under root, default "data"), "shapes" (n, default
    10,000, from seed) or a folder of images; n also keeps only the first n of cifar10 or a folder."""
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    if name_or_path == "shapes":
        return make_shapes(n or 10_000, size=size, seed=seed)
    if name_or_path == "cifar10":
        if size != 32:
            raise ValueError(f"size: CIFAR-10 images are 32x32, got size={size}")
        images = load_cifar10(root if root is not None else "data", train=True, download=download)[0]
    elif Path(str(name_or_path)).expanduser().is_dir():
        images = load_image_folder(name_or_path, size=size)
    else:
        raise ValueError(f"data: expected cifar10, shapes or a folder of images, got {name_or_path!r}")
    return images[:n] if n is not None else images
