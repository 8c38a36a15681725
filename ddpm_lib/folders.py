"""The files of an image folder: which they are, their classes, their size, and their pixels decoded once and cached.

`ddpm_lib.data.load_image_folder` puts these together into an ImageSet. Every file's header is read before any
file is decoded, so a bad folder (no images, an unreadable file, sizes that differ where no size is asked for, a
class folder without images) is refused in one line before any work.
"""
import hashlib
import os
import warnings
from collections import Counter
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


def image_sizes(folder: Path, files) -> list:
    """(width, height) of each file from its header alone (PIL opens lazily); a ValueError naming the first
    unreadable file and how many there are, before any pixels are decoded."""
    from PIL import Image  # only image folders need it

    sizes, bad = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                sizes.append(im.size)
        except Exception as e:
            bad.append((f, e))
    if bad:
        (first, error), more = bad[0], f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ValueError(f"{folder}: cannot read {first.relative_to(folder)}{more} as an image "
                         f"({type(error).__name__}: {error}); remove or replace it")
    return sizes


def common_size(folder: Path, files) -> int:
    """The side that every image in `files` has, all square; else a ValueError naming the sizes found."""
    counts = Counter(image_sizes(folder, files))
    if len(counts) == 1 and (side := next(iter(counts)))[0] == side[1]:
        return side[0]
    found = ", ".join(f"{w}x{h} ({n} files)" for (w, h), n in counts.most_common(4))
    raise ValueError(f"{folder}: images of {'different sizes' if len(counts) > 1 else 'a non-square size'} "
                     f"({found}{', ...' if len(counts) > 4 else ''}); pass --image-size N (size=N) to crop them "
                     f"square and resize them all to N x N")


def folder_size(path) -> int:
    """The side that all images of the folder `path` share (headers only); a ValueError naming the sizes found."""
    folder = Path(path).expanduser()
    return common_size(folder, image_files(folder))


def decode(file, size: int) -> torch.Tensor:
    """PIL decode -> RGB, centre crop to a square, resize to size x size -> uint8 (3, size, size)."""
    from PIL import Image

    try:
        with Image.open(file) as im:
            im = im.convert("RGB")
    except Exception as e:  # a header that reads, pixels that do not (a truncated file)
        raise ValueError(f"could not read image {file} ({type(e).__name__}: {e})") from e
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


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


def decode_cached(folder, files, size, headers_read: bool = False):
    """uint8 (N, 3, size, size) of `files`, from folder/.ddpm_cache_{size}.pt when its key matches; else decoded,
    after every header is read (unless `headers_read`: common_size has read them)."""
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
    if not headers_read:
        image_sizes(folder, files)  # every header first: an unreadable file is named before any decoding
    images = torch.stack([decode(f, size) for f in files])
    try:
        tmp = cache.with_name(cache.name + ".tmp")
        torch.save({"key": key, "images": images}, tmp)
        os.replace(tmp, cache)
    except OSError as e:
        warnings.warn(f"could not write the image cache {cache} ({e}); images will be decoded again next time",
                      stacklevel=2)
    return images
