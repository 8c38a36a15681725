"""Batches streamed from an image folder too large to rest whole on the training device.

Below the memory budget (TrainConfig.memory_budget) a folder's images are decoded once and rest on the device as
uint8 (ddpm_lib.data.DeviceBatches). Above it, `StreamBatches` reads them from their files: a torch DataLoader whose
workers each decode whole batches (PIL, ddpm_lib.folders.decode) and flip them, pinned memory on CUDA, prefetching
ahead of the step. Which images batch n holds and which are flipped is DeviceBatches' own `BatchOrder` (per-epoch
permutations and flip bits from (seed, epoch)), so batch n depends on (seed, n) alone: both give the same batches,
and a resumed run needs only the step. `training_data` chooses between the two for `python -m ddpm_lib train`.
"""
from __future__ import annotations

import itertools
import os
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .data import (BatchOrder, Batches, DataInfo, ImageSet, check_recorded, load_dataset, reload_dataset,
                   scan_image_folder)
from .folders import FolderImages
from .utils import to_model_range

GB = 1e9


def memory_budget_bytes(budget_gb: float | None, device) -> int:
    """The bytes of uint8 images that may rest on `device`: budget_gb GB where given, else a quarter of the device's
    memory (a CUDA card's; else this machine's RAM, which the CPU and Apple's MPS share)."""
    if budget_gb is not None:
        return int(budget_gb * GB)
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


class FolderSet(NamedTuple):
    """A folder's images as their files (decoded as they stream), their labels and their record (ImageSet's form)."""
    images: FolderImages         # the files, in training order
    labels: torch.Tensor | None  # int64 (N,), indices into info.class_names; None without classes
    info: DataInfo               # what load_dataset would record for them


def training_data(data: str | DataInfo, budget: int, root=None, n=None, seed=0, size=32) -> ImageSet | FolderSet:
    """The training images that `data` names (load_dataset's name, with root, n, seed and size) or records (a
    DataInfo, on resume: reload_dataset's check that they did not change): a folder whose decoded images would take
    more than `budget` bytes as a FolderSet (headers read, nothing decoded), else the decoded ImageSet."""
    name = data.name if isinstance(data, DataInfo) else data
    if name not in ("cifar10", "shapes") and os.path.isdir(os.path.expanduser(name)):
        size = data.size if isinstance(data, DataInfo) else size
        files, labels, info = scan_image_folder(name, size, data.n if isinstance(data, DataInfo) else n)
        if files.nbytes > budget:
            if isinstance(data, DataInfo):
                check_recorded(data, info)
                info = data
            return FolderSet(files, labels, info)
    return reload_dataset(data, root=root) if isinstance(data, DataInfo) else load_dataset(data, root=root, n=n,
                                                                                            seed=seed, size=size)


class _Steps(Sampler):
    """The steps start, start + 1, ... (without end: the loader stops when the trainer stops asking)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)


class _DecodedBatches(Dataset):
    """Item `step`: this rank's share of global batch `step`, decoded (in a worker) and flipped, uint8 (b, C, H, W)."""

    def __init__(self, images: FolderImages, order: BatchOrder, flip: bool):
        self.images, self.order, self.flip = images, order, flip

    def __getitem__(self, step: int) -> torch.Tensor:
        idx, flips = self.order.indices(step)
        x = torch.stack([self.images[i] for i in idx.tolist()])
        return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x) if self.flip else x


class StreamBatches(Batches):
    """An image folder's files (FolderImages) as DeviceBatches' batches: `batch(step)` -> this rank's floats in
    [-1, 1] on `device`, equal to DeviceBatches(all of them decoded, ...).batch(step), decoded by `workers` DataLoader
    workers (0: in this process) while the device trains. Asked for the steps in turn (as Trainer.fit asks), it reads
    ahead; asked for another step, it starts again from there. `batch_labels(step)`: the labels of its rows."""

    def __init__(self, images: FolderImages, batch_size, device=None, flip=True, seed=0, rank=0, world_size=1,
                 labels=None, workers: int = 2):
        if not isinstance(images, FolderImages) or len(images) == 0:
            raise ValueError(f"images: expected a non-empty FolderImages (scan_image_folder), got {images!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers: expected an integer >= 0 (0: decode in this process), got {workers!r}")
        super().__init__(len(images), batch_size, device if device is not None else "cpu", seed, rank, world_size,
                         labels, order_device="cpu")  # the order on the CPU, where the workers use it
        self.images, self.flip, self.workers = images, flip, workers
        self._loader = None  # the DataLoader's iterator and the step it gives next
        self._next = -1

    def batch(self, step):
        """Float (b, C, H, W) in [-1, 1] on the device: this rank's share of global batch `step`."""
        self.order.indices(step)  # checks the step
        if self._loader is None or step != self._next:
            cuda = self.device.type == "cuda"
            self._loader = iter(DataLoader(_DecodedBatches(self.images, self.order, self.flip), batch_size=None,
                                           sampler=_Steps(step), num_workers=self.workers, pin_memory=cuda,
                                           prefetch_factor=2 if self.workers else None))
        self._next = step + 1
        return to_model_range(next(self._loader).to(self.device, non_blocking=True))
