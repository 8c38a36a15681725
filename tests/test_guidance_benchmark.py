"""benchmarks/guidance_cifar10.py: its shares' 95% Wilson intervals against scipy, and the whole benchmark on a
micro class-conditional model and a few CIFAR-10-sized images (the tables, numbers and pictures it writes)."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import MICRO

from ddpm_lib.data import CIFAR10_CLASSES, DataInfo
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import UNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import guidance_cifar10 as bench  # noqa: E402


@pytest.mark.parametrize("k, n", [(0, 20), (7, 20), (20, 20), (1, 1), (817, 1000)])
def test_a_share_has_scipys_95_percent_wilson_interval(k, n):
    stats = pytest.importorskip("scipy.stats")
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    got = bench.share(torch.arange(n) < k)
    assert (got["k"], got["n"], got["share"]) == (k, n, k / n)
    assert got["low"] == pytest.approx(expected.low, abs=1e-12)
    assert got["high"] == pytest.approx(expected.high, abs=1e-12)


@pytest.mark.parametrize("text", ["1,x", "-1,2", "1,1", "inf"])
def test_bad_scales_are_refused(text):
    with pytest.raises(bench.argparse.ArgumentTypeError):
        bench.parse_scales(text)


def _images(folder: Path, per_class: int, g: torch.Generator) -> None:
    from PIL import Image

    for name in CIFAR10_CLASSES:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=g)
            Image.fromarray(pixels.numpy()).save(folder / name / f"{i}.png")


@pytest.fixture
def setup(tmp_path, one_thread):
    """Test and training folders of random 32x32 images (3 and 2 a class) and a micro class-conditional run."""
    g = torch.Generator().manual_seed(0)
    _images(tmp_path / "data" / "test", 3, g)
    _images(tmp_path / "data" / "train", 2, g)
    config = TrainConfig(train_steps=1, batch_size=2, out_dir=str(tmp_path / "run"), progress=False, sample_every=0,
                         recipe="cifar10-cond")
    torch.manual_seed(0)
    trainer = Trainer(UNet(replace(MICRO, image_size=32, num_classes=10)), NoiseSchedule.cosine(10), config,
                      device="cpu")
    trainer.data_info = DataInfo(str(tmp_path / "data" / "train"), 20, 32, None, class_names=CIFAR10_CLASSES)
    trainer.save()
    return tmp_path, trainer


def _run(monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["guidance_cifar10.py", *args])
    bench.main()


def test_the_benchmark_writes_its_table_numbers_and_pictures(setup, monkeypatch):
    tmp, _ = setup
    out = tmp / "out"
    _run(monkeypatch, "--ckpt", str(tmp / "run"), "--n", "20", "--scales", "1,3", "--sample-steps", "2",
         "--batch-size", "8",
         "--data", str(tmp / "data"), "--out", str(out), "--device", "cpu")
    summary = json.loads((out / "guidance.json").read_text())
    assert [r["scale"] for r in summary["scales"]] == [1.0, 3.0]
    assert summary["best_scale"] == min(summary["scales"], key=lambda r: r["fid"])["scale"]
    for r in summary["scales"] + [summary["real_train"]]:
        assert r["n"] == 20 and [c["n"] for c in r["per_class"]] == [2] * 10  # balanced: i % 10
        assert sum(c["k"] for c in r["per_class"]) == r["k"] and r["low"] <= r["share"] <= r["high"]
    assert summary["classifier"]["n"] == 30 and summary["class_names"] == list(CIFAR10_CLASSES)
    assert (summary["model"]["step"], summary["model"]["recipe"]) == (0, "cifar10-cond")
    table = (out / "guidance.md").read_text()
    assert summary["command"] in table and "| 3 | " in table and "| real training images | " in table
    assert (out / "grid.png").stat().st_size > 0 and (out / "scales.png").stat().st_size > 0
    (out / "guidance.md").unlink()
    _run(monkeypatch, "table", "--out", str(out))  # the table again from the numbers alone
    assert (out / "guidance.md").read_text() == table


def test_a_model_of_other_classes_is_refused_before_sampling(setup, monkeypatch):
    tmp, trainer = setup
    trainer.data_info = replace(trainer.data_info, class_names=CIFAR10_CLASSES[::-1])
    trainer.save()
    with pytest.raises(ValueError, match="are not the test folder's"):
        _run(monkeypatch, "--ckpt", str(tmp / "run"), "--n", "20", "--data", str(tmp / "data"), "--out",
             str(tmp / "out"), "--device", "cpu")
    assert not (tmp / "out").exists()
