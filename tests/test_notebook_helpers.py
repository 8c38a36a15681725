"""ddpm_lib.nb.session and .runs: the set-up every notebook runs (env vars, smoke mode, Drive), find_model."""
import dataclasses
import os
import sys
import types

import pytest
import torch
from helpers import MICRO
from PIL import Image

import ddpm_lib.data
from ddpm_lib.nb import runs, session
from ddpm_lib.data import CIFAR10_CLASSES, SHAPE_KINDS, DataInfo, make_shapes
from ddpm_lib.objective import Objective
from ddpm_lib.recipes import QUICK_WIN
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.shipped import load_shipped_model, ship_model
from ddpm_lib.cifar10 import write_cifar10_format
from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import PRESETS, UNet


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: no DDPM_* variables, the working directory a temporary folder."""
    for name in ("DDPM_SMOKE", "DDPM_DATA_ROOT", "DDPM_RUNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def make_setup(tmp_path, smoke=True):
    return session.NotebookSetup(device=torch.device("cpu"), smoke=smoke, data_root=tmp_path / "data",
                            runs=tmp_path / "runs", in_colab=False, seed=0)


def write_run(folder, seed=0):
    """A real checkpoint from two steps of a tiny Trainer: folder/checkpoint.pt. Returns the trainer."""
    config = TrainConfig(train_steps=2, batch_size=2, warmup_steps=0, seed=seed, out_dir=str(folder), sample_every=0,
                         log_every=1, progress=False)
    torch.manual_seed(seed)
    trainer = Trainer(UNet(MICRO), NoiseSchedule.linear(10), config, device="cpu")
    return trainer.fit(make_shapes(4, size=16, seed=seed)[0])


def assert_same_weights(model, module):
    for (name, a), b in zip(model.state_dict().items(), module.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


# ----------------------------------------------------------------------------- setup_notebook

def test_setup_reads_the_environment_and_prints_each_choice(env, tmp_path, capsys):
    env.setenv("DDPM_SMOKE", "1")
    env.setenv("DDPM_DATA_ROOT", str(tmp_path / "fixture"))
    env.setenv("DDPM_RUNS", str(tmp_path / "ci-runs"))
    setup = session.setup_notebook(seed=5)
    assert setup.smoke is True and setup.in_colab is False and setup.seed == 5
    assert setup.data_root == tmp_path / "fixture"
    assert setup.runs == tmp_path / "ci-runs" and setup.runs.is_dir()  # created, writable
    assert setup.device == session.default_device()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["device", "smoke", "data", "runs", "seed"]
    assert str(tmp_path / "ci-runs") in lines[3] and "DDPM_RUNS" in lines[3]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setup.smoke = False


def test_setup_defaults_without_environment(env, tmp_path):
    setup = session.setup_notebook()
    assert setup.smoke is False
    assert setup.data_root == session.Path("data") and setup.runs == session.Path("runs")
    assert (tmp_path / "runs").is_dir()


def test_setup_seeds_torch(env):
    session.setup_notebook(seed=3)
    drawn = torch.rand(4)
    torch.manual_seed(3)
    torch.testing.assert_close(drawn, torch.rand(4))


@pytest.mark.parametrize("value", ["yes", "true", "2"])
def test_setup_rejects_an_unclear_smoke_value(env, value):
    env.setenv("DDPM_SMOKE", value)
    with pytest.raises(ValueError, match="DDPM_SMOKE"):
        session.setup_notebook()


def test_setup_rejects_a_bad_seed_or_drive_folder(env):
    with pytest.raises(ValueError, match="seed"):
        session.setup_notebook(seed=1.5)
    with pytest.raises(ValueError, match="drive_folder"):
        session.setup_notebook(use_drive=True, drive_folder="/abs/path", drive_root=".")


def test_drive_keeps_runs_and_data_on_the_drive_over_ddpm_runs(env, tmp_path, capsys):
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    env.setenv("DDPM_RUNS", str(tmp_path / "ci-runs"))
    setup = session.setup_notebook(use_drive=True, drive_folder="course", drive_root=tmp_path / "drive")
    folder = tmp_path / "drive" / "MyDrive" / "course"
    assert setup.runs == folder / "runs" and setup.runs.is_dir() and setup.drive == folder
    assert setup.data_root == folder / "data" and setup.data_root.is_dir()
    out = capsys.readouterr().out
    assert f"runs: {folder / 'runs'} (Google Drive)" in out
    assert f"data: {folder / 'data'} (Google Drive: CIFAR-10 is downloaded there once" in out
    write_cifar10_format(folder / "data", make_shapes(2)[0], torch.arange(2))  # what the first runtime downloaded
    session.setup_notebook(use_drive=True, drive_folder="course", drive_root=tmp_path / "drive")
    assert f"data: {folder / 'data'} (a copy on Drive)" in capsys.readouterr().out


def test_ddpm_data_root_wins_over_the_drive(env, tmp_path, capsys):
    (tmp_path / "MyDrive").mkdir()
    env.setenv("DDPM_DATA_ROOT", str(tmp_path / "fixture"))
    setup = session.setup_notebook(use_drive=True, drive_root=tmp_path)
    assert setup.data_root == tmp_path / "fixture" and setup.runs == tmp_path / "MyDrive" / "ddpm_lib" / "runs"
    assert f"data: {tmp_path / 'fixture'} ($DDPM_DATA_ROOT)" in capsys.readouterr().out


def test_a_drive_that_cannot_be_mounted_is_one_clear_error(env, tmp_path):
    def refuse(path):
        raise ValueError("mount failed")

    env.setitem(sys.modules, "google.colab", types.SimpleNamespace(drive=types.SimpleNamespace(mount=refuse)))
    env.setattr(session, "COLAB_DRIVE", str(tmp_path / "content" / "drive"))
    with pytest.raises(OSError, match="could not mount Google Drive at .*content/drive for .*MyDrive/ddpm_lib "
                                      r"\(ValueError: mount failed\)"):
        session.setup_notebook(use_drive=True)


def test_in_colab_setup_says_what_pip_installed_as_pip_recorded_it(env, tmp_path, capsys):
    """PEP 610's direct_url.json of the installed ddpm_lib: a git install names the URL, the ref asked for and the
    commit; this checkout's editable install its folder; none (an index) the version. Printed only in Colab."""
    import importlib.metadata
    import json

    real = importlib.metadata.distribution("ddpm_lib")  # this checkout's install: editable, or a development one
    record = json.loads(real.read_text("direct_url.json") or "{}")
    assert session.installed_from() == (f"ddpm_lib {real.version} from {record['url']} (editable)" if record else
                                        f"ddpm_lib {real.version} (pip recorded no URL: a package index or a "
                                        f"development install)")
    recorded = {"url": "https://github.com/ddpm-lib/ddpm_lib",
                "vcs_info": {"vcs": "git", "requested_revision": "v0.3.0", "commit_id": "0123456789abcdef" * 2}}
    for text, expected in ((json.dumps(recorded), "ddpm_lib 0.3.0 from https://github.com/ddpm-lib/ddpm_lib@v0.3.0, "
                                                  "commit 0123456789ab"),
                           (json.dumps({"url": "file:///content/ddpm_lib-0.3.0-py3-none-any.whl"}),
                            "ddpm_lib 0.3.0 from file:///content/ddpm_lib-0.3.0-py3-none-any.whl"),
                           (None, "ddpm_lib 0.3.0 (pip recorded no URL: a package index or a development install)")):
        fake = types.SimpleNamespace(version="0.3.0", read_text=lambda name, text=text: text)
        env.setattr(importlib.metadata, "distribution", lambda name, fake=fake: fake)
        assert session.installed_from() == expected
    env.chdir(tmp_path)
    session.setup_notebook()
    assert "installed:" not in capsys.readouterr().out                 # not in Colab: nothing was installed here
    env.setitem(sys.modules, "google.colab", types.SimpleNamespace())
    session.setup_notebook()
    assert "installed: ddpm_lib 0.3.0 (pip recorded no URL" in capsys.readouterr().out


@pytest.fixture
def tf32_off():
    """TF32 off for the test, the flags restored after (torch.backends.cuda.matmul: no plain object to monkeypatch)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_setup_turns_tf32_on_on_a_cuda_gpu_that_has_it(env, monkeypatch, capsys, tf32_off):
    monkeypatch.setattr(session, "default_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4: no TF32
    session.setup_notebook()
    assert not torch.backends.cuda.matmul.allow_tf32 and "tf32" not in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    session.setup_notebook()
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "device: cuda (NVIDIA A100)" and lines[1].startswith("tf32: on")


def test_drive_outside_colab_without_a_mount_is_a_clear_error(env):
    with pytest.raises(ValueError, match="use_drive=True needs Google Colab"):
        session.setup_notebook(use_drive=True)


def test_drive_not_mounted_is_a_clear_error(env, tmp_path):
    with pytest.raises(FileNotFoundError, match="no MyDrive folder"):
        session.setup_notebook(use_drive=True, drive_root=tmp_path)


def test_drive_folder_that_cannot_be_written_is_a_clear_error(env, tmp_path):
    (tmp_path / "MyDrive").mkdir()
    (tmp_path / "MyDrive" / "ddpm_lib").write_text("a file where the runs folder should go")
    with pytest.raises(PermissionError, match="use_drive .data.: cannot write to .*MyDrive/ddpm_lib/data"):
        session.setup_notebook(use_drive=True, drive_root=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_runs_folder_is_a_clear_error(env, tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    env.setenv("DDPM_RUNS", str(tmp_path / "ro"))
    with pytest.raises(PermissionError, match="DDPM_RUNS: cannot write"):
        session.setup_notebook()


# ----------------------------------------------------------------------------- load_training_images

def test_smoke_mode_needs_the_fixture(tmp_path):
    with pytest.raises(FileNotFoundError, match="DDPM_SMOKE=1.*DDPM_DATA_ROOT"):
        session.load_training_images(make_setup(tmp_path, smoke=True))


def test_smoke_mode_reads_the_cifar10_format_fixture(tmp_path, capsys):
    images, _ = make_shapes(12, seed=1)
    labels = torch.arange(12) % 10
    write_cifar10_format(tmp_path / "data", images, labels)
    setup = make_setup(tmp_path, smoke=True)
    torch.testing.assert_close(session.load_training_images(setup).images, images)
    got, got_labels, info = session.load_training_images(setup, n=5)
    torch.testing.assert_close(got, images[:5])
    torch.testing.assert_close(got_labels, labels[:5])
    assert info == DataInfo("cifar10", 5, 32, "train", class_names=CIFAR10_CLASSES)
    assert "CIFAR-10 train" in capsys.readouterr().out


def offline(*args, **kwargs):
    raise FileNotFoundError("CIFAR-10 not found, and downloading failed")


def test_offline_falls_back_to_shapes_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ddpm_lib.data, "load_cifar10", offline)
    images, labels, info = session.load_training_images(make_setup(tmp_path, smoke=False), n=20)
    want_images, want_labels = make_shapes(20, seed=0)
    torch.testing.assert_close(images, want_images)
    torch.testing.assert_close(labels, want_labels)
    assert info == DataInfo("shapes", 20, 32, "train", seed=0, class_names=SHAPE_KINDS,
                            fallback="CIFAR-10 unavailable (CIFAR-10 not found, and downloading failed)")
    assert "procedural shapes" in capsys.readouterr().out


def test_cifar10_at_a_smaller_size_is_the_mean_of_each_pixel_block(tmp_path):
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    write_cifar10_format(tmp_path / "data", images, torch.arange(6))
    got, _, info = session.load_training_images(make_setup(tmp_path, smoke=True), size=16)
    assert info == DataInfo("cifar10", 6, 16, "train", class_names=CIFAR10_CLASSES)
    blocks = images.double().reshape(6, 3, 16, 2, 16, 2).mean(dim=(3, 5))  # (6, 3, 16, 16): 2x2 means
    assert got.dtype == torch.uint8 and got.shape == (6, 3, 16, 16)
    assert (got.double() - blocks).abs().max() <= 0.5 + 1e-6  # rounded to the nearest integer


def test_shapes_on_request_need_no_cifar10_even_in_smoke_mode(tmp_path, capsys, monkeypatch):
    images, labels, info = session.load_training_images(make_setup(tmp_path, smoke=True), n=8, data="shapes",
                                                        size=16)
    want_images, want_labels = make_shapes(8, size=16, seed=0)
    assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
    assert info == DataInfo("shapes", 8, 16, "train", seed=0, class_names=SHAPE_KINDS)  # asked for: no fallback
    assert "procedural shapes at 16x16" in capsys.readouterr().out
    monkeypatch.setattr(ddpm_lib.data, "load_cifar10", offline)  # asked for by name, CIFAR-10 has no fallback
    with pytest.raises(FileNotFoundError, match="data='cifar10': CIFAR-10 is not available"):
        session.load_training_images(make_setup(tmp_path, smoke=False), data="cifar10", n=1)


def write_image_folder(root, images, labels):
    """CIFAR-10's JPEG copy in miniature: root/<split>/<class>/NNNN.png, classes in CIFAR-10's order."""
    for split, part in (("train", slice(0, len(images) // 2)), ("test", slice(len(images) // 2, None))):
        for i, (image, label) in enumerate(zip(images[part], labels[part])):
            folder = root / split / CIFAR10_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")  # lossless


def test_an_image_folder_layout_is_read_as_cifar10_with_either_split(tmp_path, capsys):
    images, _ = make_shapes(40, seed=3)
    labels = torch.arange(40) % 10
    write_image_folder(tmp_path / "data", images, labels)
    setup = make_setup(tmp_path, smoke=False)
    got, got_labels, info = session.load_training_images(setup)
    # the folder lists class after class; the loader takes the classes in turn (the first of each, then the
    # second, ...), which here is the order the images were written in: labels 0..9, 0..9
    assert torch.equal(got, images[:20]) and torch.equal(got_labels, labels[:20])
    first = session.load_training_images(setup, n=10).labels
    assert sorted(first.tolist()) == list(range(10))  # the first n hold every class, as CIFAR-10's own do
    # the record names the folder itself: load_dataset (and a resume from the CLI) loads the same images from it
    assert info == DataInfo(str((tmp_path / "data" / "train").resolve()), 20, 32, None, class_names=CIFAR10_CLASSES)
    assert f"data: CIFAR-10 train (image folder {tmp_path / 'data'}), 20 images at 32x32" in capsys.readouterr().out
    test = session.load_training_images(setup, n=3, split="test", size=16)
    assert test.images.shape == (3, 3, 16, 16) and test.info.name.endswith("test")
    assert "data: CIFAR-10 test (image folder" in capsys.readouterr().out


def test_an_image_folder_of_other_classes_is_not_cifar10(tmp_path, capsys):
    for split in ("train", "test"):
        (tmp_path / "data" / split / "cats").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "data" / split / "cats" / "0.png")
    with pytest.raises(FileNotFoundError, match="expected CIFAR-10's class folders airplane, .*found cats"):
        session.load_training_images(make_setup(tmp_path, smoke=False), data="cifar10")
    images, _, info = session.load_training_images(make_setup(tmp_path, smoke=False), n=4)  # no data named: shapes
    assert images.shape == (4, 3, 32, 32) and "procedural shapes" in capsys.readouterr().out
    assert info.name == "shapes" and "expected CIFAR-10's class folders" in info.fallback


def test_the_test_split_of_the_cifar10_format_and_of_the_offline_shapes(tmp_path, monkeypatch, capsys):
    train, test = make_shapes(6, seed=1)[0], make_shapes(4, seed=2)[0]
    write_cifar10_format(tmp_path / "data", train, torch.arange(6), test, torch.arange(4))
    cifar = session.load_training_images(make_setup(tmp_path), split="test")
    assert torch.equal(cifar.images, test) and cifar.info.split == "test"
    assert "CIFAR-10 test" in capsys.readouterr().out
    monkeypatch.setattr(ddpm_lib.data, "load_cifar10", offline)
    shapes = session.load_training_images(make_setup(tmp_path / "elsewhere", smoke=False), n=5, split="test")
    assert torch.equal(shapes.images, make_shapes(5, seed=1)[0])  # another seed than the training shapes' (0)
    assert (shapes.info.split, shapes.info.seed) == ("test", 0)  # load_dataset("shapes", seed=0, split="test")
    assert "test split: another seed" in capsys.readouterr().out


def test_load_training_images_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n must be a positive int"):
        session.load_training_images(make_setup(tmp_path), n=0)
    with pytest.raises(ValueError, match="data: expected"):
        session.load_training_images(make_setup(tmp_path), data="mnist")
    with pytest.raises(ValueError, match="size: expected an int in"):
        session.load_training_images(make_setup(tmp_path), size=64)
    with pytest.raises(ValueError, match="split: expected 'train' or 'test'"):
        session.load_training_images(make_setup(tmp_path), split="val")


# ----------------------------------------------------------------------------- find_model

def no_official_weights(*args, **kwargs):
    raise FileNotFoundError("could not download the DDPM CIFAR-10 weights (offline)")


def write_run_of(folder, data_info, seed=0, num_classes=None, objective=None):
    """write_run, with the checkpoint's "data" entry set to `data_info` (as notebook 05 and cli_train do), a
    class-conditional network with num_classes, and `objective` (default: the paper's)."""
    config = TrainConfig(train_steps=2, batch_size=2, warmup_steps=0, seed=seed, out_dir=str(folder), sample_every=0,
                         log_every=1, progress=False)
    torch.manual_seed(seed)
    trainer = Trainer(UNet(dataclasses.replace(MICRO, num_classes=num_classes)), NoiseSchedule.linear(10), config,
                      objective, device="cpu")
    trainer.data_info = data_info
    images = make_shapes(4, size=16, seed=seed)[0]
    return trainer.fit(images, torch.arange(4) % num_classes if num_classes else None)


CIFAR10_INFO = DataInfo("cifar10", 4, 16, "train", class_names=CIFAR10_CLASSES)


def test_find_model_prefers_the_readers_newest_cifar10_checkpoint(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(runs, "load_shipped_model", pytest.fail)  # never reached: the reader has a model
    setup = make_setup(tmp_path, smoke=True)
    folder = setup.runs / "05_training"
    old = write_run_of(runs.training_run(setup, "walkthrough", data="cifar10"), CIFAR10_INFO, seed=1)
    new = write_run_of(runs.training_run(setup, "tiny", data="cifar10"), CIFAR10_INFO, seed=2,
                       objective=Objective("v", "min-snr", 3.0))
    shapes = DataInfo("shapes", 4, 16, "train", seed=2, class_names=SHAPE_KINDS)
    write_run_of(runs.training_run(setup, "tiny"), shapes, seed=3)  # the newest, but shapes: not shown
    write_run_of(folder / "tiny-cifar10", CIFAR10_INFO, seed=4)  # a real-size run: not for smoke mode
    os.utime(folder / "walkthrough-cifar10-smoke" / "checkpoint.pt", (1, 1))
    denoiser, description = runs.find_model(setup)
    assert description.startswith("your model from notebook 05: preset tiny, CIFAR-10, step 2, EMA weights")
    assert str(folder / "tiny-cifar10-smoke" / "checkpoint.pt") in description
    assert not denoiser.net.training and denoiser.schedule.num_timesteps == 10
    assert denoiser.objective == new.objective == Objective("v", "min-snr", 3.0)  # the run's, from its checkpoint
    assert_same_weights(denoiser.net, new.ema)
    raw, description = runs.find_model(setup, "own", ema=False)
    assert_same_weights(raw.net, new.model)
    assert "raw weights" in description and raw.objective == new.objective
    assert runs.own_checkpoints(setup) == [folder / "tiny-cifar10-smoke" / "checkpoint.pt",
                                           folder / "walkthrough-cifar10-smoke" / "checkpoint.pt"]
    picked, _ = runs.find_model(setup, str(folder / "walkthrough-cifar10-smoke"))  # a run folder by path
    assert_same_weights(picked.net, old.ema)
    assert picked.objective == old.objective == Objective()
    assert capsys.readouterr().out == ""  # nothing to explain when the reader's own model is shown


def test_find_model_class_cond_takes_only_class_conditional_runs(tmp_path, monkeypatch, one_thread):
    setup = make_setup(tmp_path, smoke=True)
    cond = write_run_of(runs.training_run(setup, "tiny", data="cifar10"), CIFAR10_INFO, seed=1, num_classes=10)
    write_run_of(runs.training_run(setup, "walkthrough", data="cifar10"), CIFAR10_INFO, seed=2)  # newer, unconditional
    denoiser, description = runs.find_model(setup, class_cond=True)
    assert_same_weights(denoiser.net, cond.ema)
    assert "class-conditional" in description
    _, description = runs.find_model(setup)
    assert "preset walkthrough" in description  # without class_cond the newest of all
    with pytest.raises(ValueError, match="is unconditional; this notebook needs a class-conditional model"):
        runs.find_model(setup, str(runs.training_run(setup, "walkthrough", data="cifar10")), class_cond=True)


def test_find_model_falls_back_to_the_shipped_model_and_says_why(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(runs.interop, "load_ddpm_cifar10", pytest.fail)  # the shipped model comes first
    setup = make_setup(tmp_path, smoke=False)
    write_run_of(setup.runs / "05_training" / "tiny-cifar10-smoke", CIFAR10_INFO)  # a smoke run: not real sizes
    denoiser, description = runs.find_model(setup, class_cond=True)
    assert "no class-conditional CIFAR-10 checkpoint from notebook 05 under" in capsys.readouterr().out
    shipped, card = load_shipped_model(device="cpu")
    assert_same_weights(denoiser.net, shipped.net)
    assert description.startswith(f"the shipped CPU model: recipe {card['recipe']}, CIFAR-10, class-conditional, "
                                  f"step {card['step']}")
    assert denoiser.net.config.num_classes == 10 and denoiser.schedule.kind == shipped.schedule.kind == "cosine"
    assert denoiser.objective == shipped.objective == Objective("x0", "min-snr", 5.0)  # cifar10-cond's
    with pytest.raises(FileNotFoundError, match="model='own': no CIFAR-10 checkpoint from notebook 05"):
        runs.find_model(setup, "own")
    with pytest.raises(ValueError, match="ema=False: the shipped and official models"):
        runs.find_model(setup, "shipped", ema=False)


def test_find_model_official_weights_come_last(tmp_path, monkeypatch, capsys, one_thread):
    official = UNet(MICRO)
    monkeypatch.setattr(runs.interop, "load_ddpm_cifar10", lambda: official)
    setup = make_setup(tmp_path, smoke=False)
    denoiser, description = runs.find_model(setup, "official")
    assert denoiser.net is official and not official.training
    assert denoiser.schedule.num_timesteps == 1000 and "official DDPM CIFAR-10 weights" in description
    assert denoiser.objective == Objective()  # eps, the paper's
    # an install without its weights
    monkeypatch.setattr(runs, "load_shipped_model", lambda path, device: load_shipped_model(tmp_path / "missing.pt"))
    denoiser, description = runs.find_model(setup)
    assert denoiser.net is official and "the shipped CPU model is unavailable" in capsys.readouterr().out
    with pytest.raises(ValueError, match="the official DDPM CIFAR-10 weights are unconditional"):
        runs.find_model(setup, "official", class_cond=True)
    with pytest.raises(ValueError, match="smoke mode never downloads"):
        runs.find_model(make_setup(tmp_path, smoke=True), "official")


def test_find_model_takes_weights_in_the_shipped_form_by_path(tmp_path, one_thread):
    """The GPU check's float16 EMA weights (ship_model's form, a card beside them), as `make docs DOCS_MODEL=PATH`
    passes them to notebooks 06-08."""
    setup = make_setup(tmp_path, smoke=True)
    run = write_run_of(tmp_path / "gpu-run", CIFAR10_INFO, seed=5, objective=Objective("x0", "min-snr"))
    weights = ship_model(tmp_path / "gpu-run", tmp_path / "fast_ema_fp16.pt", {"machine": "a test", "train_minutes": 1})
    denoiser, description = runs.find_model(setup, str(weights))
    assert description == f"float16 EMA weights: recipe None, step 2, 1 min on a test ({weights})"
    for ours, theirs in zip(denoiser.net.state_dict().values(), run.ema.state_dict().values()):
        assert torch.equal(ours, theirs.half().float())  # float16 rounding is all that differs
    assert denoiser.schedule.num_timesteps == 10 and not denoiser.net.training
    assert denoiser.objective == run.objective == Objective("x0", "min-snr")
    with pytest.raises(ValueError, match="fast_ema_fp16.pt is unconditional; this notebook needs a class-cond"):
        runs.find_model(setup, str(weights), class_cond=True)


def test_find_model_rejects_an_unknown_choice(tmp_path):
    with pytest.raises(ValueError, match="model: expected one of .'auto', 'own', 'shipped', 'official'. or a "
                                         "checkpoint file or run folder, got 'best'"):
        runs.find_model(make_setup(tmp_path), "best")
    with pytest.raises(ValueError, match="preset: expected one of"):
        runs.training_run(make_setup(tmp_path), "huge")


def test_training_run_is_where_notebook_05_writes_and_find_model_looks(tmp_path):
    folder = tmp_path / "runs" / "05_training"
    assert runs.training_run(make_setup(tmp_path, smoke=True), "walkthrough") == folder / "walkthrough-smoke"
    assert runs.training_run(make_setup(tmp_path, smoke=False), "tiny") == tmp_path / "runs" / "05_training" / "tiny"
    assert (runs.training_run(make_setup(tmp_path, smoke=False), "tiny", data="cifar10")
            == tmp_path / "runs" / "05_training" / "tiny-cifar10")
    assert (runs.training_run(make_setup(tmp_path, smoke=True), "tiny", data="cifar10")
            == tmp_path / "runs" / "05_training" / "tiny-cifar10-smoke")
    with pytest.raises(ValueError, match="data: expected None or 'cifar10'"):
        runs.training_run(make_setup(tmp_path), "tiny", data="shapes")
    for preset in PRESETS:  # the folder's name gives its preset back, "ddpm-cifar10" too
        for data in (None, "cifar10"):
            assert runs._preset_of(runs.training_run(make_setup(tmp_path), preset, data=data)) == preset
    jpeg = DataInfo("/data/cifar10-jpeg/train", 4, 32, None, class_names=CIFAR10_CLASSES)  # CIFAR-10's JPEG copy
    assert runs.is_cifar10(jpeg) and runs.is_cifar10(CIFAR10_INFO)
    assert not runs.is_cifar10(None) and not runs.is_cifar10(DataInfo("shapes", 4, 16, "train", seed=2,
                                                                      class_names=SHAPE_KINDS))


def test_training_data_of_names_the_quick_win_shapes_and_keeps_other_sizes():
    quick = UNet(dataclasses.replace(PRESETS["tiny"], image_size=QUICK_WIN.image_size))
    assert runs.training_data_of(quick) == {"data": "shapes", "size": QUICK_WIN.image_size}
    assert runs.training_data_of(UNet(PRESETS["tiny"])) == {"data": None, "size": 32}
