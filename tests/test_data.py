"""ddpm_lib.data: CIFAR-10 in its own format (torchvision as the oracle), image folders, shapes, device batches."""
import os
import pickle
import shutil
from dataclasses import replace
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
import torchvision.datasets.cifar as tv_cifar
from helpers import Payload
from PIL import Image

import ddpm_lib.data as data
from ddpm_lib.data import (CIFAR10_CLASSES, SHAPE_KINDS, DataInfo, DeviceBatches, load_cifar10, load_dataset,
                           load_image_folder, make_shapes, reload_dataset)
from ddpm_lib.cifar10 import write_cifar10_format

TRAIN_FILES = [name for name, _ in tvd.CIFAR10.train_list]


def random_cifar(n, seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 10, (n,), generator=g)


@pytest.fixture
def cifar_root(tmp_path):
    images, labels = random_cifar(23, 0)  # 23: the 5 train batches get unequal sizes
    test_images, test_labels = random_cifar(7, 1)
    write_cifar10_format(tmp_path, images, labels, test_images=test_images, test_labels=test_labels)
    return tmp_path, (images, labels), (test_images, test_labels)


# ----------------------------------------------------------------------------- CIFAR-10

def test_cifar10_round_trip(cifar_root):
    root, (images, labels), (test_images, test_labels) = cifar_root
    x, y = load_cifar10(root, train=True, download=False, verify_md5=False)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x, images) and torch.equal(y, labels)
    x, y = load_cifar10(root, train=False, download=False, verify_md5=False)
    assert torch.equal(x, test_images) and torch.equal(y, test_labels)


def test_written_batches_have_cifar10_layout(cifar_root):
    root, (images, labels), _ = cifar_root
    folder = root / "cifar-10-batches-py"
    assert sorted(os.listdir(folder)) == sorted(TRAIN_FILES + ["test_batch", "batches.meta"])
    rows = []
    for i, name in enumerate(TRAIN_FILES):
        raw = (folder / name).read_bytes()
        assert raw[:2] == b"\x80\x02"  # pickle protocol 2, as the original (Python 2 cPickle)
        entry = pickle.loads(raw, encoding="bytes")  # Python 2 str -> bytes, like the original files
        assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
        assert entry[b"batch_label"] == f"training batch {i + 1} of 5".encode()
        assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape[1] == 3072
        assert all(type(label) is int for label in entry[b"labels"])
        assert all(type(f) is bytes and f.endswith(b".png") for f in entry[b"filenames"])
        assert len(entry[b"labels"]) == len(entry[b"filenames"]) == len(entry[b"data"])
        assert set(pickle.loads(raw, encoding="latin1")) == {"batch_label", "labels", "data", "filenames"}
        rows.append(entry[b"data"])
    rows = np.concatenate(rows)
    # documented layout: 1024 red, then 1024 green, then 1024 blue values; each plane row-major
    for i, c, y, x in [(0, 0, 0, 0), (3, 1, 5, 31), (22, 2, 31, 7), (11, 2, 17, 0)]:
        assert rows[i, c * 1024 + y * 32 + x] == images[i, c, y, x]
    meta = pickle.loads((folder / "batches.meta").read_bytes(), encoding="bytes")
    assert set(meta) == {b"num_cases_per_batch", b"label_names", b"num_vis"} and meta[b"num_vis"] == 3072
    test = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")
    assert test[b"batch_label"] == b"testing batch 1 of 1"


def test_torchvision_reads_written_batches(cifar_root, monkeypatch):
    root, (images, labels), _ = cifar_root
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)  # fixture md5s differ
    ds = tvd.CIFAR10(root, train=True)
    assert torch.equal(torch.from_numpy(ds.data).permute(0, 3, 1, 2), images)  # torchvision keeps HWC
    assert ds.targets == labels.tolist()
    assert ds.classes == list(data.CIFAR10_CLASSES)


def test_verify_md5_rejects_fixture(cifar_root):
    root = cifar_root[0]
    with pytest.raises(ValueError, match=r"data_batch_1: md5 .* does not match"):
        load_cifar10(root, download=False)


def test_download_uses_torchvision_archive(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename, md5):
        calls.append((url, filename, md5))
        write_cifar10_format(download_root, *random_cifar(10, 2))  # as if the archive was extracted

    monkeypatch.setattr(tvd.utils, "download_and_extract_archive", fake_download)
    x, _ = load_cifar10(tmp_path, verify_md5=False)
    assert calls == [(tvd.CIFAR10.url, tvd.CIFAR10.filename, tvd.CIFAR10.tgz_md5)] and len(x) == 10
    load_cifar10(tmp_path, verify_md5=False)
    assert len(calls) == 1  # files present: no second download


@pytest.mark.parametrize("error", [URLError("no network"), OSError("Network is unreachable")])
def test_offline_with_nothing_names_folder_and_files(tmp_path, monkeypatch, error):
    def offline(*args, **kwargs):
        raise error

    monkeypatch.setattr(tvd.utils, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message
    assert all(name in message for name in TRAIN_FILES) and "download" in message
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10(tmp_path, train=False, download=False)


def test_corrupt_batch_names_the_file(cifar_root):
    root = cifar_root[0]
    path = root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar10(root, download=False, verify_md5=False)


def test_batch_file_cannot_run_code(cifar_root, tmp_path, monkeypatch):
    root = cifar_root[0]
    monkeypatch.chdir(tmp_path)  # where Payload would touch "pwned"
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({"data": Payload()}, protocol=2))
    with pytest.raises(ValueError, match="data_batch_2.*refusing to load"):
        load_cifar10(root, download=False, verify_md5=False)
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- image folders

def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def test_image_folder_flat_and_class_subfolders(tmp_path):
    red, green, blue = [255, 0, 0], [0, 255, 0], [0, 0, 255]
    wide = np.zeros((32, 64, 3), np.uint8)  # quarters: red | green green | blue
    wide[:, :16], wide[:, 16:48], wide[:, 48:] = red, green, blue
    save(tmp_path / "flat" / "a.png", np.full((16, 16, 3), red))
    save(tmp_path / "flat" / "b.jpg", np.full((40, 40, 3), blue))
    save(tmp_path / "flat" / "c.png", wide)
    x, labels, info = load_image_folder(tmp_path / "flat")
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.uint8
    assert labels is None and info == DataInfo(str((tmp_path / "flat").resolve()), 3, 32, None)  # no classes
    assert (x[0] == torch.tensor(red).view(3, 1, 1)).all()  # upscaled solid colour stays exact
    assert (x[1].float() - torch.tensor(blue).view(3, 1, 1)).abs().max() <= 2  # jpeg
    assert (x[2] == torch.tensor(green).view(3, 1, 1)).all()  # centre crop keeps the middle half
    save(tmp_path / "classes" / "cat" / "1.png", np.full((8, 8, 3), red))
    save(tmp_path / "classes" / "dog" / "1.png", np.full((8, 8, 3), green))
    x = load_image_folder(tmp_path / "classes", size=16).images
    assert x.shape == (2, 3, 16, 16) and x[1, 1].eq(255).all()


def test_image_folder_cached_after_first_decode(tmp_path, monkeypatch):
    for i in range(3):
        save(tmp_path / f"{i}.png", np.full((8, 8, 3), 40 * i))
    first = load_image_folder(tmp_path).images
    assert (tmp_path / ".ddpm_cache_32.pt").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(Image, "open", no_decoding)
    assert torch.equal(load_image_folder(tmp_path).images, first)
    save(tmp_path / "3.png", np.full((8, 8, 3), 200))  # the folder changed: the cache is stale
    with pytest.raises(ValueError, match="decoded again"):
        load_image_folder(tmp_path)
    monkeypatch.undo()
    assert len(load_image_folder(tmp_path).images) == 4


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(FileNotFoundError, match="no images"):
        load_image_folder(tmp_path)
    save(tmp_path / "good.png", np.zeros((8, 8, 3)))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path)


def test_an_unreadable_file_is_named_before_any_image_is_decoded(tmp_path, monkeypatch):
    from ddpm_lib import folders

    for i in range(3):
        save(tmp_path / f"{i}.png", np.zeros((8, 8, 3)))
    (tmp_path / "x").mkdir()
    for name in ("x/bad.png", "z.jpg"):
        (tmp_path / name).write_bytes(b"not an image")
    decoded = []
    monkeypatch.setattr(folders, "decode", lambda f, size: decoded.append(f) or torch.zeros(3, size, size))
    with pytest.raises(ValueError, match=r"cannot read x/bad.png and 1 more as an image \(UnidentifiedImageError") as e:
        load_image_folder(tmp_path, size=8)
    assert decoded == [] and str(e.value).count("\n") == 0 and not (tmp_path / ".ddpm_cache_8.pt").exists()
    monkeypatch.undo()
    save(tmp_path / "x" / "bad.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3)))
    (tmp_path / "z.jpg").unlink()
    whole = (tmp_path / "x" / "bad.png").read_bytes()
    (tmp_path / "x" / "bad.png").write_bytes(whole[:len(whole) // 2])  # its header reads, its pixels do not
    with pytest.raises(ValueError, match="could not read image .*bad.png"):
        load_image_folder(tmp_path, size=8)


def test_without_a_size_a_folder_loads_at_its_own_size_and_mixed_sizes_are_refused(tmp_path):
    for i in range(2):
        save(tmp_path / f"{i}.png", np.full((16, 16, 3), 60 * i))
    images, _, info = load_image_folder(tmp_path, size=None)
    assert images.shape == (2, 3, 16, 16) and info.size == 16                     # no resampling
    assert torch.equal(images[1], torch.full((3, 16, 16), 60, dtype=torch.uint8))
    save(tmp_path / "wide.png", np.zeros((8, 12, 3)))
    with pytest.raises(ValueError, match=r"different sizes \(16x16 \(2 files\), 12x8 \(1 files\)\); pass "
                                         r"--image-size N"):
        load_image_folder(tmp_path, size=None)
    assert load_image_folder(tmp_path, size=8).images.shape == (3, 3, 8, 8)        # a size: all of them resized
    for f in ("0.png", "1.png"):
        (tmp_path / f).unlink()
    with pytest.raises(ValueError, match=r"a non-square size \(12x8 \(1 files\)\)"):
        load_image_folder(tmp_path, size=None)


def class_folder(root):
    """cat/ (2 red images, one nested a level deeper), dog/ (1 green), bird/ (1 blue): labels by sorted class name."""
    colours = {"cat/a.png": [255, 0, 0], "cat/deeper/b.png": [255, 0, 0], "dog/a.png": [0, 255, 0],
               "bird/z.png": [0, 0, 255]}
    for name, colour in colours.items():
        save(root / name, np.full((8, 8, 3), colour))
    return root


def test_image_folder_labels_from_class_subfolders(tmp_path):
    images, labels, info = load_image_folder(class_folder(tmp_path), size=8)
    names = info.class_names
    assert names == ("bird", "cat", "dog") and labels.dtype == torch.int64
    assert info == DataInfo(str(tmp_path.resolve()), 4, 8, None, class_names=names)
    colour_of = {"bird": 2, "cat": 0, "dog": 1}  # the channel that is 255
    assert [colour_of[names[label]] for label in labels] == images.float().mean((2, 3)).argmax(1).tolist()
    # files sorted by path: bird/z, cat/a, cat/deeper/b, dog/a (labels 0, 1, 1, 2), then the classes in turn:
    # the first image of each class (bird/z, cat/a, dog/a), then the second (cat/deeper/b)
    assert labels.tolist() == [0, 1, 2, 1]
    ref = tvd.ImageFolder(tmp_path)  # the oracle for the class assignment (in path order)
    assert ref.classes == list(names) and [y for _, y in ref.samples] == [0, 1, 1, 2]


def test_image_folder_labels_survive_the_cache(tmp_path, monkeypatch):
    first = load_image_folder(class_folder(tmp_path), size=8)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("decoded again"))
    again = load_image_folder(tmp_path, size=8)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.info == first.info
    (tmp_path / "dog").rename(tmp_path / "ant")  # same files, new class name: the cache is stale
    monkeypatch.undo()
    images, labels, info = load_image_folder(tmp_path, size=8)
    assert info.class_names == ("ant", "bird", "cat") and labels.tolist() == [0, 1, 2, 2]
    assert torch.equal(images[0], first.images[2])  # the green image (dog, third in turn), now first


def test_a_class_folder_without_images_is_refused_as_torchvision_refuses_it(tmp_path):
    class_folder(tmp_path)
    (tmp_path / "emu").mkdir()
    (tmp_path / "emu" / "notes.txt").write_text("no pictures here")
    (tmp_path / ".thumbnails").mkdir()  # hidden: not a class
    with pytest.raises(FileNotFoundError, match="emu"):
        tvd.ImageFolder(tmp_path)  # the oracle: it refuses an empty class too
    with pytest.raises(ValueError, match=r"class folder emu holds no images \(.png"):
        load_image_folder(tmp_path, size=8)


def test_image_folder_with_an_image_outside_class_subfolders_has_no_classes(tmp_path):
    save(tmp_path / "cat" / "a.png", np.zeros((8, 8, 3)))
    save(tmp_path / "loose.png", np.zeros((8, 8, 3)))
    images, labels, info = load_image_folder(tmp_path)
    assert len(images) == 2 and labels is None and info.class_names is None  # any layout loads; no labels


# ----------------------------------------------------------------------------- shapes

def fill_ratio(image):
    """Foreground pixels / bounding-box area: square 1, circle ~pi/4, triangle ~1/2."""
    fg = (image != image[:, :1, :1]).any(0)  # the corner is background
    ys, xs = fg.nonzero(as_tuple=True)
    return fg.sum().item() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)).item()


def test_shapes_deterministic_and_seeded():
    x, labels = make_shapes(64, seed=3)
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.uint8
    again = make_shapes(64, seed=3)
    assert torch.equal(x, again[0]) and torch.equal(labels, again[1])
    assert not torch.equal(x, make_shapes(64, seed=4)[0])
    assert make_shapes(5, size=64)[0].shape == (5, 3, 64, 64)
    with pytest.raises(ValueError, match="n"):
        make_shapes(0)


def test_shapes_three_kinds_two_colours():
    x, _ = make_shapes(300, seed=0)
    ratios = torch.tensor([fill_ratio(image) for image in x])
    # measured over this set: squares 1.0, circles 0.72-0.85, triangles 0.50-0.63 (small ones are blocky)
    square, circle, triangle = ratios > 0.95, (ratios > 0.695) & (ratios < 0.9), (ratios > 0.4) & (ratios < 0.675)
    assert (square | circle | triangle).all()
    assert min(square.sum(), circle.sum(), triangle.sum()) > 60  # about 100 of each
    for image in x[:20]:
        assert len(image.flatten(1).unique(dim=1).T) == 2  # background + shape colour


def test_shape_labels_are_the_kind_drawn():
    x, labels = make_shapes(300, seed=0)
    assert labels.dtype == torch.int64 and labels.shape == (300,)
    ratios = torch.tensor([fill_ratio(image) for image in x])  # the classification of the test above
    kind = torch.where(ratios > 0.95, SHAPE_KINDS.index("square"),
                       torch.where(ratios > 0.695, SHAPE_KINDS.index("circle"), SHAPE_KINDS.index("triangle")))
    assert torch.equal(labels, kind)


# ----------------------------------------------------------------------------- device batches

def test_device_batches_scaling_and_determinism():
    images, _ = make_shapes(50, seed=1)
    batches = DeviceBatches(images, 16, flip=False, seed=5)
    idx, _ = batches.indices(3)
    x = batches.batch(3)
    assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32) and x.device == images.device
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1
    torch.testing.assert_close(x, images[idx].float() / 127.5 - 1, rtol=0, atol=1e-6)
    flipped = DeviceBatches(images, 16, seed=5)
    assert torch.equal(flipped.batch(7), DeviceBatches(images, 16, seed=5).batch(7))  # fresh instance: resume
    assert not torch.equal(flipped.batch(7), DeviceBatches(images, 16, seed=6).batch(7))


def test_every_epoch_covers_every_image_once():
    batches = DeviceBatches(torch.zeros(60, 3, 4, 4, dtype=torch.uint8), 12, seed=0)
    epochs = [torch.cat([batches.indices(s)[0] for s in range(e * 5, e * 5 + 5)]) for e in range(3)]
    for order in epochs:
        assert torch.equal(order.sort().values, torch.arange(60))
    assert not torch.equal(epochs[0], epochs[1])


def test_fewer_images_than_batch():
    batches = DeviceBatches(torch.zeros(7, 3, 4, 4, dtype=torch.uint8), 16)
    stream = torch.cat([batches.indices(s)[0] for s in range(7)])  # 112 = 16 epochs of 7
    for order in stream.view(16, 7):
        assert torch.equal(order.sort().values, torch.arange(7))
    assert batches.batch(0).shape == (16, 3, 4, 4)


def test_ranks_split_the_global_batch():
    images, _ = make_shapes(40, seed=2)
    whole = DeviceBatches(images, 16, seed=9)
    ranks = [DeviceBatches(images, 16, seed=9, rank=r, world_size=4) for r in range(4)]
    for step in (0, 1, 2, 6):  # step 2 runs over an epoch boundary
        shares = [r.indices(step)[0] for r in ranks]
        assert all(len(s) == 4 for s in shares)
        if step != 2:
            assert len(torch.cat(shares).unique()) == 16  # disjoint
        assert torch.equal(torch.cat(shares), whole.indices(step)[0])
        assert torch.equal(torch.cat([r.batch(step) for r in ranks]), whole.batch(step))  # flips too


def test_flips_happen_about_half_the_time():
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batches = DeviceBatches(images, 32, seed=1)
    plain = DeviceBatches(images, 32, seed=1, flip=False)
    flipped = 0
    for step in range(20):
        x, x_plain = batches.batch(step), plain.batch(step)
        is_flipped = (x == x_plain.flip(-1)).flatten(1).all(1)
        assert (is_flipped | (x == x_plain).flatten(1).all(1)).all()
        flipped += is_flipped.sum().item()
    assert 0.4 < flipped / 640 < 0.6


def numbered(n, size=4):
    """Image i is the value i everywhere (flip-invariant, so a batch row says which image it is); labels: a random
    permutation of 0..n-1, so every image has its own label."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    return images, torch.randperm(n, generator=torch.Generator().manual_seed(0))


def row_ids(x):
    return ((x[:, 0, 0, 0] + 1) * 127.5).round().long()  # [-1, 1] -> the image's number


@pytest.mark.parametrize("n, batch_size, world_size", [(50, 16, 1), (7, 16, 1), (40, 16, 4)])
def test_labels_follow_their_images(n, batch_size, world_size):
    """Through the shuffle, the flips, epoch boundaries and each rank's share, batch_labels(step) are the labels of
    the rows batch(step) gives."""
    images, labels = numbered(n)
    for rank in range(world_size):
        batches = DeviceBatches(images, batch_size, seed=3, rank=rank, world_size=world_size, labels=labels)
        for step in range(8):
            y = batches.batch_labels(step)
            assert y.dtype == torch.int64 and y.shape == (batch_size // world_size,)
            assert torch.equal(y, labels[row_ids(batches.batch(step))])
    assert DeviceBatches(images, batch_size).batch_labels(0) is None


def test_labels_accept_any_integer_type_and_stay_on_the_device():
    images, labels = numbered(10)
    batches = DeviceBatches(images, 4, labels=labels.numpy().astype(np.int32))
    assert batches.labels.dtype == torch.int64 and batches.labels.device == batches.device
    assert torch.equal(batches.batch_labels(2), labels[batches.indices(2)[0]])


@pytest.mark.parametrize("labels, match", [
    (torch.zeros(9, dtype=torch.long), r"labels: expected 10 integers"),
    (torch.zeros(10), "labels: expected integers, got dtype torch.float32"),
    (torch.full((10,), -1), "labels: .*minimum -1"),
])
def test_device_batches_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        DeviceBatches(numbered(10)[0], 4, labels=labels)


def test_device_batches_bad_input():
    images = torch.zeros(8, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatches(images, 10, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        DeviceBatches(images, 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="uint8"):
        DeviceBatches(images.float(), 8)


# ----------------------------------------------------------------------------- by name

def test_load_dataset_returns_the_images_their_labels_and_their_record(tmp_path, monkeypatch):
    images, labels, info = load_dataset("shapes", n=20, seed=1)
    want_images, want_labels = make_shapes(20, seed=1)
    assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
    assert info == DataInfo("shapes", 20, 32, "train", seed=1, class_names=SHAPE_KINDS)
    test = load_dataset("shapes", n=5, seed=1, size=16, split="test")  # other shapes than the training ones
    assert torch.equal(test.images, make_shapes(5, size=16, seed=2)[0])
    assert test.info == DataInfo("shapes", 5, 16, "test", seed=1, class_names=SHAPE_KINDS)
    x, y = random_cifar(10, 0)
    test_x, test_y = random_cifar(4, 1)
    write_cifar10_format(tmp_path, x, y, test_images=test_x, test_labels=test_y)
    fixture = load_dataset("cifar10", root=tmp_path, download=False, verify_md5=False, split="test")
    assert torch.equal(fixture.images, test_x) and torch.equal(fixture.labels, test_y)
    assert fixture.info == DataInfo("cifar10", 4, 32, "test", class_names=CIFAR10_CLASSES)
    md5s = dict(tvd.CIFAR10.train_list)
    monkeypatch.setattr(tvd.utils, "calculate_md5", lambda path: md5s[os.path.basename(path)])  # "the real files"
    images, labels, info = load_dataset("cifar10", root=tmp_path, n=4, download=False)
    assert torch.equal(images, x[:4]) and torch.equal(labels, y[:4])
    assert info == DataInfo("cifar10", 4, 32, "train", class_names=CIFAR10_CLASSES)
    small = load_dataset("cifar10", root=tmp_path, n=4, download=False, size=16)
    blocks = x[:4].double().reshape(4, 3, 16, 2, 16, 2).mean(dim=(3, 5))  # (4, 3, 16, 16): 2x2 means
    assert small.images.dtype == torch.uint8 and (small.images.double() - blocks).abs().max() <= 0.5 + 1e-6
    assert small.info.size == 16 and torch.equal(small.labels, y[:4])
    images, labels, info = load_dataset(str(class_folder(tmp_path / "imgs")), n=3, size=8)
    assert len(images) == 3 and labels.tolist() == [0, 1, 2]  # the classes in turn: bird, cat, dog
    assert info == DataInfo(str((tmp_path / "imgs").resolve()), 3, 8, None, class_names=("bird", "cat", "dog"))


def test_load_dataset_refuses_what_it_cannot_load(tmp_path):
    save(tmp_path / "imgs" / "a.png", np.zeros((8, 8, 3)))
    flat = load_dataset(str(tmp_path / "imgs"))
    assert flat.images.shape == (1, 3, 32, 32) and flat.labels is None and flat.info.class_names is None
    with pytest.raises(ValueError, match="split: an image folder has no splits"):
        load_dataset(str(tmp_path / "imgs"), split="test")
    with pytest.raises(ValueError, match="split: expected 'train' or 'test', got 'val'"):
        load_dataset("shapes", split="val")
    with pytest.raises(ValueError, match="32x32"):
        load_dataset("cifar10", root=tmp_path, size=64)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path / "empty", download=False)
    with pytest.raises(ValueError, match="expected cifar10, shapes or a folder of images"):
        load_dataset("imagenet")


def test_data_info_checks_its_fields_and_comes_back_from_its_dict():
    info = DataInfo("shapes", 20, 16, "train", seed=3, class_names=SHAPE_KINDS)
    assert DataInfo.from_dict(info.to_dict()) == info
    assert DataInfo.from_dict({**info.to_dict(), "class_names": list(SHAPE_KINDS)}) == info  # a list, as JSON has it
    good = info.to_dict()
    for match, values in [
        (r"unknown field\(s\) images \(DataInfo's fields: name, n, size", {**good, "images": 20}),
        ("missing size", {k: v for k, v in good.items() if k != "size"}),
        ("DataInfo.n must be a positive int, got '20'", {**good, "n": "20"}),
        ("DataInfo.split must be 'train' or 'test' for shapes, got 'val'", {**good, "split": "val"}),
        ("DataInfo.seed must be an int for shapes, got None", {**good, "seed": None}),
        ("DataInfo.seed must be None for cifar10, got 3", {**good, "name": "cifar10"}),
        (r"DataInfo.split must be None \(a folder has no splits\)", {**good, "name": "/data/imgs", "seed": None}),
        ("DataInfo.class_names must be a tuple of class names or None", {**good, "class_names": "circle"}),
        ("DataInfo.name must be", {**good, "name": ""}),
        ("DataInfo.fallback must be a str or None", {**good, "fallback": 1}),
        ("expected a dict of DataInfo's fields, got list", [good]),
    ]:
        with pytest.raises(ValueError, match=match):
            DataInfo.from_dict(values)


def test_reload_dataset_loads_the_recorded_images_or_says_they_changed(tmp_path):
    folder = class_folder(tmp_path / "imgs")
    first = load_dataset(str(folder), n=3, size=8)
    again = reload_dataset(first.info)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.info == first.info
    shapes = load_dataset("shapes", n=6, seed=2, size=16, split="test")
    noted = replace(shapes.info, fallback="CIFAR-10 unavailable (offline)")
    back = reload_dataset(noted)
    assert torch.equal(back.images, shapes.images) and back.info == noted  # the record comes back as it was
    shutil.rmtree(folder / "cat")  # the folder's classes are now bird and dog
    with pytest.raises(ValueError, match="not the recorded data any more"):
        reload_dataset(first.info)
