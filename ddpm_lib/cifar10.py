"""CIFAR-10 in its own format: reading torchvision's archive (md5-checked, downloaded when missing) and writing it.

`load_cifar10` reads the batch files of torchvision's archive with an unpickler that accepts arrays only.
`write_cifar10_format` writes uint8 images and labels as such batch files (Python 2 cPickle dicts), so
`load_cifar10`, torchvision's CIFAR10 and the notebooks read them as if they were the real data set: the
fixtures of the tests and of offline demos. It uses the pure-Python pickler (pickle._Pickler) to write `bytes`
as Python 2 `str`.
"""
import io
import pickle
import struct
from pathlib import Path
from typing import ClassVar
from urllib.error import URLError

import numpy as np
import torch

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")



# ----------------------------------------------------------------------------- reading

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
    from torchvision.datasets import CIFAR10  # its file list, md5s and download: only when CIFAR-10 is read
    from torchvision.datasets.utils import calculate_md5, download_and_extract_archive

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


# ----------------------------------------------------------------------------- writing (fixtures)

class _Py2Pickler(pickle._Pickler):
    """Pickles `bytes` as Python 2 `str` (BINSTRING), as CIFAR-10's own cPickle batches do."""

    dispatch: ClassVar[dict] = pickle._Pickler.dispatch.copy()  # type -> save method, bytes replaced below

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
