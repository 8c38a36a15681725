"""Fixtures in CIFAR-10's own format, for tests and offline demos.

`write_cifar10_format` writes uint8 images and labels as the batch files of torchvision's CIFAR-10 archive
(Python 2 cPickle dicts), so `load_cifar10`, torchvision's CIFAR10 and the notebooks read them as if they
were the real data set. It uses the pure-Python pickler (pickle._Pickler) to write `bytes` as Python 2 `str`.
"""
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from .data import CIFAR10_CLASSES


class _Py2Pickler(pickle._Pickler):
    """Pickles `bytes` as Python 2 `str` (BINSTRING), as CIFAR-10's own cPickle batches do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


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
    from torchvision.datasets import CIFAR10  # its folder and file names

    folder = Path(root).expanduser() / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    batches = [(f"data_batch_{i + 1}", f"training batch {i + 1} of 5", d, lab)
               for i, (d, lab) in enumerate(zip(np.array_split(train[0], 5), np.array_split(train[1], 5)))]
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
