"""A folder larger than the memory budget streams from its files (ddpm_lib.stream) in DeviceBatches' own batches; a
folder of grayscale images is 1-channel data; the budget picks between the two."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import MICRO
from PIL import Image
from test_train import assert_same_state, make_trainer

from ddpm_lib.classifier import ClassifierFeatures, SmallCNN
from ddpm_lib.data import DeviceBatches, ImageSet, load_image_folder, make_shapes, scan_image_folder
from ddpm_lib.folders import FolderImages
from ddpm_lib.objective import Objective
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.stream import FolderSet, StreamBatches, memory_budget_bytes, training_data
from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import UNet


def write(folder, images, mode="RGB"):
    """uint8 images (N, 3, H, W) as PNG files of PIL `mode` (RGB, or L: their first channel) in class folders a/, b/,
    c/ (image i in the class i % 3); returns the folder."""
    for i, image in enumerate(images):
        path = folder / "abc"[i % 3] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = image.permute(1, 2, 0).numpy() if mode == "RGB" else image[0].numpy()
        Image.fromarray(np.ascontiguousarray(pixels), mode).save(path)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write(tmp_path_factory.mktemp("stream") / "shapes", make_shapes(21, size=16, seed=4)[0])


@pytest.mark.parametrize("workers, world_size", [(0, 1), (2, 1), (0, 2)])
def test_streamed_batches_are_the_device_batches(folder, workers, world_size):
    """The oracle: DeviceBatches of the folder decoded whole. 21 images in batches of 8: batches run over epoch
    boundaries; every rank's share, its labels and flips, in turn, and again after a jump back to an earlier step."""
    images, labels, info = load_image_folder(folder, size=16)
    files, scanned_labels, scanned = scan_image_folder(folder, size=16)
    assert scanned == info and torch.equal(scanned_labels, labels) and files.nbytes == images.numel()
    assert torch.equal(torch.stack([files[i] for i in range(len(files))]), images)  # decoded as load decodes
    for rank in range(world_size):
        kw = dict(seed=5, rank=rank, world_size=world_size)
        device = DeviceBatches(images, 8, labels=labels, **kw)
        stream = StreamBatches(files, 8, labels=scanned_labels, workers=workers, **kw)
        for step in [*range(7), 2, 3]:  # 56 images: over two epoch boundaries; then back to step 2
            assert torch.equal(stream.batch(step), device.batch(step)), (rank, step)
            assert torch.equal(stream.batch_labels(step), device.batch_labels(step))
    assert not torch.equal(stream.batch(0), DeviceBatches(images, 8, seed=6).batch(0))  # the seed matters


def test_a_streamed_run_resumes_exactly_and_equals_the_run_in_memory(folder, tmp_path):
    """test_train's resume check on the folder's files: 3 steps streamed (a worker decoding), save, load, 2 more
    streamed (in this process: a resumed run may change the workers) == 5 steps straight on the images in memory
    (DeviceBatches), weights, EMA, Adam state and losses bit for bit. 21 images in batches of 8: over two epochs."""
    images = load_image_folder(folder, size=16).images
    files = scan_image_folder(folder, size=16)[0]
    straight = make_trainer(tmp_path / "a", train_steps=5).fit(images)
    first = make_trainer(tmp_path / "b", train_steps=3, workers=1).fit(files)
    resumed = Trainer.load(tmp_path / "b", device="cpu", train_steps=5, workers=0).fit(files)
    assert resumed.step == 5 and resumed.config.workers == 0
    assert_same_state(straight, resumed)
    assert straight.history == first.history + resumed.history
    other = make_trainer(None, train_steps=1, seed=1, workers=0).fit(files)  # another seed, other batches
    assert other.history[0] != first.history[0]


def test_class_conditional_streaming_takes_the_labels_of_its_rows(folder):
    images, labels, _ = load_image_folder(folder, size=16)
    files, scanned_labels, _ = scan_image_folder(folder, size=16)
    a = make_trainer(None, train_steps=2, num_classes=3).fit(images, labels)
    b = make_trainer(None, train_steps=2, num_classes=3, workers=0).fit(files, scanned_labels)
    assert_same_state(a, b)
    with pytest.raises(ValueError, match="pass them to StreamBatches"):
        make_trainer(None, train_steps=1, num_classes=3).fit(StreamBatches(files, 8), scanned_labels)


def test_the_budget_picks_memory_or_streaming_and_a_changed_folder_is_refused(folder, tmp_path):
    loaded = training_data(str(folder), budget=10**9, size=16)
    assert isinstance(loaded, ImageSet)
    streamed = training_data(str(folder), budget=20 * 3 * 16 * 16 - 1, n=20, size=16)  # one byte short
    assert isinstance(streamed, FolderSet) and isinstance(streamed.images, FolderImages)
    assert streamed.info == replace(loaded.info, n=20) and len(streamed.images) == 20
    assert torch.equal(streamed.labels, loaded.labels[:20])
    again = training_data(streamed.info, budget=1)  # on resume: by the record
    assert again.info == streamed.info and again.images == streamed.images
    assert isinstance(training_data(streamed.info, budget=10**9), ImageSet)  # a bigger budget: in memory
    changed = write(tmp_path / "changed", make_shapes(20, size=16, seed=4)[0], mode="L")  # grayscale now
    with pytest.raises(ValueError, match="is not the recorded data any more"):
        training_data(replace(streamed.info, name=str(changed.resolve())), budget=1)
    assert memory_budget_bytes(0.5, "cpu") == 500_000_000 and memory_budget_bytes(None, "cpu") > 10**8


def test_a_grayscale_folder_is_one_channel_data(tmp_path):
    """Mode L files load as (N, 1, H, W), their pixels as PIL reads them (and resized as PIL resizes them); one
    colour image makes the folder RGB; a 1-channel MICRO trains on them, in memory and streamed alike."""
    digits = make_shapes(6, size=16, seed=2)[0]
    folder = write(tmp_path / "gray", digits, mode="L")
    images, _, info = load_image_folder(folder, size=None)
    assert images.shape == (6, 1, 16, 16) and info.channels == 1 and info.size == 16
    order = [0, 1, 2, 3, 4, 5]  # classes in turn: a/000, b/001, c/002, a/003, ...
    assert torch.equal(images[:, 0], digits[order, 0])
    files = scan_image_folder(folder, size=8)[0]
    pil = np.asarray(Image.open(folder / "a" / "000.png").resize((8, 8), Image.Resampling.BICUBIC, reducing_gap=3.0))
    assert files.channels == 1 and torch.equal(files[0][0], torch.from_numpy(pil.copy()))
    torch.manual_seed(0)
    config = TrainConfig(batch_size=4, train_steps=2, out_dir=None, progress=False, warmup_steps=1)
    gray = replace(MICRO, ch_list=(1, *MICRO.ch_list[1:]))
    trainers = []
    for data in (images, scan_image_folder(folder, size=None)[0]):
        torch.manual_seed(0)
        trainers.append(Trainer(UNet(gray), NoiseSchedule.linear(20), config, Objective(), device="cpu").fit(data))
    assert_same_state(*trainers)
    write(folder / "colour", digits[:1])  # one RGB image among them: the folder is RGB
    assert load_image_folder(folder, size=16).images.shape == (7, 3, 16, 16)


def test_the_classifier_scores_grayscale_as_its_channel_repeated():
    classifier = ClassifierFeatures(SmallCNN().eval(), "features", 0.5)
    gray = make_shapes(4, size=32, seed=0)[0][:, :1]
    assert torch.equal(classifier(gray), classifier(gray.repeat(1, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\) \(grayscale\), got torch.uint8 \(4, 2, 32, 32\)"):
        classifier(gray.repeat(1, 2, 1, 1))


def test_the_budget_and_the_workers_are_checked():
    for bad in (0, -1.0, float("inf"), True, "1"):
        with pytest.raises(ValueError, match="TrainConfig.memory_budget must be None or a number of GB > 0"):
            TrainConfig(memory_budget=bad)
    with pytest.raises(ValueError, match="TrainConfig.workers must be >= 0"):
        TrainConfig(workers=-1)
    files = FolderImages((), 16, 3)
    with pytest.raises(ValueError, match="images: expected a non-empty FolderImages"):
        StreamBatches(files, 8)
