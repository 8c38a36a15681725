"""python -m ddpm_lib: train + resume + sample on shapes, and every bad input as one line on stderr."""
import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from ddpm_lib.train import Trainer, TrainConfig
from ddpm_lib.unet import UNet, UNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, cwd, env=None):
    return subprocess.Popen([sys.executable, "-m", "ddpm_lib", *map(str, args)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})


def finish(proc):
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every bad input, launched at once (the interpreter start-up dominates), -> {case: (rc, stdout, stderr)}."""
    tmp = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    config = TrainConfig(batch_size=2, steps=1, out_dir=str(tmp / "run"), progress=False, timesteps=10)
    micro = UNetConfig(ch_list=(3, 8), attention_layer=(), num_heads=1, temb_dim=8, norm_groups=4, image_size=8)
    path = Trainer(UNet(micro), None, config, device="cpu").save()
    (tmp / "truncated.pt").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (tmp / "random.pt").write_bytes(os.urandom(4096))
    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp / "other.pt")
    torch.save({"format": "ddpm_lib.checkpoint", "model": Payload()}, tmp / "evil.pt")
    (tmp / "empty_root").mkdir()
    offline = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    train = ("train", "--preset", "tiny", "--out", tmp / "new", "--batch-size", "2")
    sample = ("sample", "--n", "1", "--out", tmp / "grid.png", "--device", "cpu", "--ckpt")
    cases = {
        "missing checkpoint": sample + (tmp / "nope.pt",),
        "truncated checkpoint": sample + (tmp / "truncated.pt",),
        "random bytes": sample + (tmp / "random.pt",),
        "not our checkpoint": sample + (tmp / "other.pt",),
        "pickle payload": sample + (tmp / "evil.pt",),
        "fid missing checkpoint": ("fid", "--ckpt", tmp / "nope.pt", "--n", "2"),
        "ddpm with fewer steps": ("sample", "--sampler", "ddpm", "--steps", "3", "--n", "1", "--out",
                                  tmp / "grid.png", "--device", "cpu", "--ckpt", path),
        "missing data folder": train + ("--data", tmp / "no_such_folder", "--steps", "1"),
        "cifar10 offline": train + ("--data", "cifar10", "--data-root", tmp / "empty_root", "--steps", "1"),
        "unknown preset": ("train", "--preset", "huge", "--data", "shapes", "--steps", "1", "--out", tmp / "x"),
        "zero steps": train + ("--data", "shapes", "--steps", "0"),
        "negative batch size": ("train", "--preset", "tiny", "--data", "shapes", "--steps", "1", "--out",
                                tmp / "x", "--batch-size", "-4"),
        "non-integer steps": train + ("--data", "shapes", "--steps", "ten"),
        "existing run without --resume": ("train", "--preset", "tiny", "--data", "shapes", "--steps", "2",
                                          "--out", tmp / "run"),
        "ema decay of 1 or more": train + ("--data", "shapes", "--steps", "1", "--ema-decay", "1.5"),
    }
    procs = {case: cli(*args, cwd=tmp, env=offline) for case, args in cases.items()}
    runs = {case: finish(proc) for case, proc in procs.items()}
    assert not (tmp / "pwned").exists(), "the pickle payload ran"
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("case, message", [
    ("missing checkpoint", "checkpoint not found"),
    ("truncated checkpoint", "not a readable checkpoint"),
    ("random bytes", "not a readable checkpoint"),
    ("not our checkpoint", "not a ddpm_lib checkpoint"),
    ("pickle payload", "weights_only=True"),
    ("fid missing checkpoint", "not found"),
    ("ddpm with fewer steps", "steps"),
    ("missing data folder", "no_such_folder"),
    ("cifar10 offline", "CIFAR-10 not found"),
    ("unknown preset", "unknown preset 'huge'"),
    ("zero steps", "--steps: expected a positive integer"),
    ("negative batch size", "--batch-size: expected a positive integer"),
    ("non-integer steps", "--steps: expected a positive integer"),
    ("existing run without --resume", "--resume"),
    ("ema decay of 1 or more", "TrainConfig.ema_decay must be in [0, 1)"),
])
def test_bad_input_is_one_line_on_stderr(bad_runs, case, message):
    rc, out, err = bad_runs[case]
    assert rc != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and message in err, err


@pytest.mark.slow
def test_train_resume_and_sample_on_shapes(tmp_path):
    run = tmp_path / "run"
    train = ("train", "--preset", "tiny", "--data", "shapes", "--n-images", "32", "--batch-size", "4",
             "--out", run, "--device", "cpu", "--log-every", "1", "--sample-every", "0", "--no-progress")
    rc, _, err = finish(cli(*train, "--steps", "2", "--ema-decay", "0.5", cwd=tmp_path))
    assert rc == 0, err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["train_config"]["ema_decay"] == 0.5
    rc, _, err = finish(cli(*train, "--steps", "3", "--resume", cwd=tmp_path))
    assert rc == 0 and "resuming" in err, err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3
    steps = [json.loads(line)["step"] for line in (run / "loss.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    rc, _, err = finish(cli("sample", "--ckpt", run / "checkpoint.pt", "--sampler", "dpm-solver", "--steps", "2",
                            "--n", "4", "--out", tmp_path / "grid.png", "--device", "cpu", cwd=tmp_path))
    assert rc == 0, err
    assert Image.open(tmp_path / "grid.png").size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)  # 2x2 grid, padding 2
