"""The files of an image folder: which they are, their classes, their size, and their pixels decoded once and cached.

`ddpm_lib.data.load_image_folder` puts these together into an ImageSet (`scan_image_folder` into a FolderImages, the
files decoded one by one as they stream). Every file's header is read before any file is decoded, so a bad folder
(no images, an unreadable file, sizes that differ where no size is asked for, a class folder without images) is
refused in one line before any work. A folder whose images are all grayscale has 1 channel, else 3 (RGB).
"""
import hashlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def image_files(folder: Path) -> list:
    """The image files under `folder` (by extension, hidden files and folders left out), sorted by path; a
    FileNotFoundError when there are none."""
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(folder).parts))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    return files


GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes of one channel (LA: with alpha, dropped)


def image_headers(folder: Path, files) -> list:
    """(width, height, PIL mode) of each file from its header alone (PIL opens lazily); a ValueError naming the
    first unreadable file and how many there are, before any pixels are decoded."""
    from PIL import Image  # only image folders need it

    headers, bad = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                headers.append((*im.size, im.mode))
        except Exception as e:
            bad.append((f, e))
    if bad:
        (first, error), more = bad[0], f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ValueError(f"{folder}: cannot read {first.relative_to(folder)}{more} as an image "
                         f"({type(error).__name__}: {error}); remove or replace it")
    return headers


def channels_of(headers) -> int:
    """The image channels of a folder: 1 when every image is grayscale (image_headers' modes), else 3 (RGB)."""
    return 1 if all(mode in GRAYSCALE_MODES for _, _, mode in headers) else 3


def common_size(folder: Path, headers) -> int:
    """The side that every image of `headers` (image_headers') has, all square; else a ValueError naming the sizes
    found."""
    counts = Counter((w, h) for w, h, _ in headers)
    if len(counts) == 1 and (side := next(iter(counts)))[0] == side[1]:
        return side[0]
    found = ", ".join(f"{w}x{h} ({n} files)" for (w, h), n in counts.most_common(4))
    raise ValueError(f"{folder}: images of {'different sizes' if len(counts) > 1 else 'a non-square size'} "
                     f"({found}{', ...' if len(counts) > 4 else ''}); pass --image-size N (size=N) to crop them "
                     f"square and resize them all to N x N")


def folder_shape(path, size: int | None = None) -> tuple[int, int]:
    """(side, channels) of the images of the folder `path` (headers only): `size` where given, else the side they
    all share (a ValueError naming the sizes found); 1 channel when all are grayscale, else 3."""
    folder = Path(path).expanduser()
    headers = image_headers(folder, image_files(folder))
    return common_size(folder, headers) if size is None else size, channels_of(headers)


def decode(file, size: int, channels: int = 3) -> torch.Tensor:
    """PIL decode -> RGB (channels 3) or grayscale (channels 1), centre crop to a square, resize to size x size ->
    uint8 (channels, size, size)."""
    from PIL import Image

    try:
        with Image.open(file) as im:
            im = im.convert("RGB" if channels == 3 else "L")
    except Exception as e:  # a header that reads, pixels that do not (a truncated file)
        raise ValueError(f"could not read image {file} ({type(e).__name__}: {e})") from e
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    pixels = torch.from_numpy(np.asarray(im).copy())  # (H, W, 3) or, grayscale, (H, W)
    return pixels.permute(2, 0, 1) if channels == 3 else pixels.unsqueeze(0)  # (C, H, W)


def class_labels(folder, files):
    """(labels int64 (N,), class names) from the first-level sub-folder of each file, the names sorted as
    torchvision's ImageFolder sorts them; (None, None) when an image lies directly in `folder` (no classes)."""
    if any(len(f.relative_to(folder).parts) == 1 for f in files):
        return None, None
    classes = [f.relative_to(folder).parts[0] for f in files]
    names = tuple(sorted(set(classes)))
    empty = sorted(d.name for d in folder.iterdir()
                   if d.is_dir() and not d.name.startswith(".") and d.name not in names)
    if empty:  # as torchvision's ImageFolder refuses it: a class the data would silently lack
        which = f"folder {empty[0]} holds" if len(empty) == 1 else f"folders {', '.join(empty)} hold"
        raise ValueError(f"{folder}: class {which} no images ({', '.join(IMAGE_EXTENSIONS)}); add their images or "
                         f"move them out of the folder")
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[c] for c in classes], dtype=torch.int64), names


def classes_in_turn(labels: torch.Tensor) -> torch.Tensor:
    """The order that takes one image of each class in turn (the i-th of every class, then the (i+1)-th), so that
    the first n images of a class-sorted folder hold every class about equally, as the first n of CIFAR-10 do."""
    rank = torch.empty_like(labels)  # each image's position within its class
    for k in labels.unique():
        rank[labels == k] = torch.arange(int((labels == k).sum()))
    return torch.argsort(rank * (int(labels.max()) + 1) + labels, stable=True)


def decode_cached(folder, files, size, headers=None):
    """uint8 (N, C, size, size) of `files`, from folder/.ddpm_cache_{size}.pt when its key matches; else decoded
    (C: channels_of), after every header is read (unless `headers`, image_headers' of the files, are given)."""
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
    if headers is None:  # every header first: an unreadable file is named before any decoding
        headers = image_headers(folder, files)
    channels = channels_of(headers)
    images = torch.stack([decode(f, size, channels) for f in files])
    try:
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save({"key": key, "images": images}, tmp)
        os.replace(tmp, cache)
    except OSError as e:
        warnings.warn(f"could not write the image cache {cache} ({e}); images will be decoded again next time",
                      stacklevel=2)
    return images


@dataclass(frozen=True)
class FolderImages:
    """The image files of a folder in training order, decoded one at a time on demand: what a folder too large for
    the memory budget gives to training (ddpm_lib.stream), instead of the uint8 tensor of all of them."""
    files: tuple[Path, ...]  # in the order of load_image_folder's images
    size: int                # side in pixels each is cropped square and resized to
    channels: int            # 1 (all grayscale) or 3

    def __len__(self) -> int:
        return len(self.files)

    @property
    def nbytes(self) -> int:
        """Bytes of all of them decoded as uint8."""
        return len(self.files) * self.channels * self.size * self.size

    def __getitem__(self, i: int) -> torch.Tensor:
        """uint8 (channels, size, size) of image i, decoded as load_image_folder decodes it."""
        return decode(self.files[i], self.size, self.channels)
