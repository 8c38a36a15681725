"""python -m ddpm_lib: train (the walkthrough's knobs, resume, classes) + sample + export, every bad input as one line.

The CLI runs as subprocesses, several at once (the interpreter start-up dominates).
"""
import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy
import pytest
import scipy.linalg
import torch
import torchvision.datasets as tvd
from helpers import MICRO, ChannelMeans, Payload, write_image_folder, perturbed
from PIL import Image

from ddpm_lib.checkpoint import load_model, read_checkpoint
from ddpm_lib.cifar10 import write_cifar10_format
from ddpm_lib.cli import main
from ddpm_lib.cli_train_flags import add_train_parser
from ddpm_lib.data import CIFAR10_CLASSES, SHAPE_KINDS, DataInfo, load_image_folder, make_shapes
from ddpm_lib.hub import model_card
from ddpm_lib.nb.session import NotebookSetup, load_training_images
from ddpm_lib.objective import Objective
from ddpm_lib.recipes import RECIPES
from ddpm_lib.samplers import SAMPLERS, generate_images
from ddpm_lib.schedule import NoiseSchedule, linear_betas
from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import PRESETS, UNet, UNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1"}
# A run of the walkthrough's knobs that diffusers can express too (one head, temb_dim = the first level's channels).
KNOBS = ("--preset", "tiny", "--ch-list", "3,16,32", "--attention-layer", "2", "--heads", "1", "--temb-dim", "16",
         "--num-timesteps", "20", "--beta-max", "0.05")
TRAIN = ("--data", "shapes", "--n-images", "16", "--batch-size", "4", "--seed", "3", "--device", "cpu",
         "--log-every", "1", "--sample-every", "0", "--no-progress")


def cli(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "ddpm_lib", *map(str, args)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": ROOT, **OFFLINE})


def finish(proc):
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def run_all(cases: dict, cwd, parallel=6) -> dict:
    """{case: args} -> {case: (rc, stdout, stderr)}, `parallel` processes at a time."""
    runs, names = {}, list(cases)
    for i in range(0, len(names), parallel):
        procs = {name: cli(*cases[name], cwd=cwd) for name in names[i:i + parallel]}
        runs.update({name: finish(proc) for name, proc in procs.items()})
    return runs


def assert_one_line_error(run, message):
    rc, out, err = run
    assert rc != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and message in err, err


def micro_checkpoint(path, T=10, perturb=False, **unet):
    torch.manual_seed(0)
    config = TrainConfig(batch_size=2, train_steps=1, out_dir=str(path), progress=False)
    model = UNet(replace(MICRO, **unet))
    model = perturbed(model) if perturb else model  # random output layers: the step count shows in the samples
    return Trainer(model, NoiseSchedule.linear(T), config, device="cpu").save()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints good and bad, and an empty folder."""
    tmp = tmp_path_factory.mktemp("bad")
    path = micro_checkpoint(tmp / "run")
    micro_checkpoint(tmp / "cond", num_classes=3)
    micro_checkpoint(tmp / "t20", T=20, perturb=True)  # fewer diffusion steps than DDIM's default 50
    (tmp / "truncated.pt").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (tmp / "random.pt").write_bytes(os.urandom(4096))
    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp / "other.pt")
    torch.save({"format": "ddpm_lib.checkpoint", "model": Payload()}, tmp / "evil.pt")
    (tmp / "empty_root").mkdir()
    write_image_folder(tmp / "flat", make_shapes(2, size=16, seed=0)[0])  # images, no class sub-folders
    write_image_folder(tmp / "classes" / "cat", make_shapes(2, size=16, seed=1)[0])
    (tmp / "classes" / "dog").mkdir()  # a class folder without images
    write_image_folder(tmp / "mixed", make_shapes(2, size=16, seed=0)[0])
    write_image_folder(tmp / "mixed" / "big", make_shapes(1, size=32, seed=0)[0])  # 16x16 and 32x32 images
    write_image_folder(tmp / "broken", make_shapes(2, size=16, seed=0)[0])
    (tmp / "empty_data").mkdir()
    (tmp / "no_images").mkdir()
    (tmp / "no_images" / "notes.txt").write_text("no pictures here")
    gray_folder(tmp / "digits", make_shapes(2, size=28, seed=0)[0])  # 28x28 grayscale, as MNIST's digits
    (tmp / "broken" / "x.png").write_bytes(b"not an image")
    configs = {"unknown_key": {"training": {"lrr": 1e-3}}, "wrong_type": {"training": {"lr": "fast"}},
               "unknown_section": {"optimizer": {}}, "bad_list": {"network": {"ch_list": "3,32"}},
               "bad_schedule": {"schedule": {"kind": "sigmoid"}}, "bad_network": {"network": {"temb_dim": 7}},
               "unknown_objective_key": {"objective": {"loss": "mse"}},
               "bad_prediction": {"objective": {"prediction": "z"}},
               "objective_wrong_type": {"objective": {"snr_gamma": "5"}},
               "bad_snr_gamma": {"objective": {"weighting": "min-snr", "snr_gamma": 0}},
               "prediction_in_network": {"network": {"prediction": "v"}},
               "bad_grad_clip": {"training": {"grad_clip": -1.0}}}
    for name, values in configs.items():
        (tmp / f"{name}.json").write_text(json.dumps(values))
    (tmp / "not_json.json").write_text("{network: ")
    return tmp


def gray_folder(folder, images):
    """Save the first channel of uint8 images (N, 3, H, W) as grayscale PNG files (PIL mode L) in a new folder."""
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0].numpy(), "L").save(folder / f"{i:03d}.png")
    return folder


def bad_input(tmp):
    """case -> (command line, what the one-line error must say)."""
    train = ("train", "--preset", "tiny", "--out", tmp / "new", "--batch-size", "2")
    shapes = train + ("--data", "shapes", "--n-images", "4", "--train-steps", "1")
    sample = ("sample", "--n", "1", "--out", tmp / "grid.png", "--device", "cpu", "--ckpt")
    run, cond, t20 = tmp / "run", tmp / "cond", tmp / "t20"
    return {
        "missing checkpoint": (sample + (tmp / "nope.pt",), "checkpoint not found"),
        "sample to a text file": (("sample", "--n", "1", "--out", tmp / "grid.txt", "--device", "cpu", "--ckpt",
                                   tmp / "run"), "--out: "),
        "run folder without checkpoint": (sample + (tmp / "empty_root",), "has no checkpoint.pt"),
        "truncated checkpoint": (sample + (tmp / "truncated.pt",), "not a readable checkpoint"),
        "random bytes": (sample + (tmp / "random.pt",), "not a readable checkpoint"),
        "not our checkpoint": (sample + (tmp / "other.pt",), "not a ddpm_lib checkpoint"),
        "pickle payload": (sample + (tmp / "evil.pt",), "weights_only=True"),
        "fid missing checkpoint": (("fid", "--ckpt", tmp / "nope.pt", "--n", "2"), "not found"),
        "fid missing reference": (("fid", "--ckpt", run, "--n", "2", "--ref", tmp / "no_ref"), "--ref"),
        "ddpm with fewer steps": (sample[:-1] + ("--sampler", "ddpm", "--sample-steps", "3", "--ckpt", run),
                                  "timesteps"),
        "ddim steps beyond T": (sample + (t20, "--sample-steps", "30"), "--sample-steps 30: expected at most T=20"),
        "fid steps beyond T": (("fid", "--ckpt", t20, "--n", "2", "--sample-steps", "21"),
                               "--sample-steps 21: expected at most T=20"),
        "fid of one sample": (("fid", "--ckpt", run, "--n", "1"), "--n: expected an integer >= 2"),
        "cuda without cuda": (sample[:-2] + ("cuda", "--ckpt", run), "CUDA is not available"),
        "class of an unconditional model": (sample + (run, "--class", "1"),
                                            "--class: the checkpoint's network is unconditional"),
        "guidance of an unconditional model": (sample + (run, "--guidance", "3"),
                                               "--guidance: the checkpoint's network is unconditional"),
        "fid guidance of an unconditional model": (("fid", "--ckpt", run, "--n", "2", "--guidance", "2"),
                                                   "--guidance: the checkpoint's network is unconditional"),
        "class out of range": (sample + (cond, "--class", "3"), "--class: expected labels in [0, 3); got [3]"),
        "negative guidance": (sample + (cond, "--guidance", "-1"), "--guidance: expected a number >= 0"),
        "push to a bad repository id": (("export", "--ckpt", run, "--out", tmp / "pipe", "--push-to-hub", "a b"),
                                        "--push-to-hub 'a b': not a Hub repository id"),
        "export of a network diffusers cannot express": (("export", "--ckpt", run, "--out", tmp / "pipe"),
                                                         "time_mlp_dim=0"),
        "missing data folder": (train + ("--data", tmp / "no_such_folder", "--train-steps", "1"), "no_such_folder"),
        "cifar10 offline": (train + ("--data", "cifar10", "--data-root", tmp / "empty_root", "--train-steps", "1"),
                            "CIFAR-10 not found"),
        "classes of a folder without class sub-folders": (train + ("--data", tmp / "flat", "--class-cond",
                                                                   "--train-steps",
                                                                   "1"), "--class-cond: " + str(tmp / "flat")
                                                          + " has no classes"),
        "mixed sizes without --image-size": (("train", "--preset", "tiny", "--data", tmp / "mixed", "--train-steps",
                                              "1", "--out", tmp / "x"),
                                             "different sizes (16x16 (2 files), 32x32 (1 files)); pass "
                                             "--image-size N"),
        "an unreadable image": (train + ("--data", tmp / "broken", "--train-steps", "1"),
                                "cannot read x.png as an image (UnidentifiedImageError"),
        "a class folder without images": (train + ("--data", tmp / "classes", "--train-steps", "1"),
                                          "class folder dog holds no images"),
        "an empty data folder": (train + ("--data", tmp / "empty_data", "--train-steps", "1"), "no images (.png"),
        "a data folder without images": (train + ("--data", tmp / "no_images", "--train-steps", "1"),
                                         "no images (.png"),
        "a folder's own size that the network cannot take": (
            ("train", "--preset", "walkthrough", "--data", tmp / "digits", "--train-steps", "1", "--out", tmp / "x"),
            f"--data {tmp / 'digits'}: its images are 28x28, and UNetConfig.image_size must be a multiple of 8"),
        "rgb channels for grayscale images": (train + ("--data", tmp / "digits", "--ch-list", "3,32,64,64",
                                                       "--train-steps", "1"),
                                              "--ch-list: the network takes 3-channel images (its first entry), "),
        "a memory budget of 0": (shapes + ("--memory-budget", "0"),
                                 "--memory-budget: TrainConfig.memory_budget must be None or a number of GB > 0"),
        "negative workers": (shapes + ("--workers", "-1"), "--workers: TrainConfig.workers must be >= 0"),
        "unknown preset": (("train", "--preset", "huge", "--data", "shapes", "--train-steps", "1", "--out", tmp / "x"),
                           "unknown preset 'huge'"),
        "no preset for a new run": (("train", "--data", "shapes", "--train-steps", "1", "--out", tmp / "x"),
                                    "--preset and --data are needed"),
        "zero steps": (train + ("--data", "shapes", "--train-steps", "0"),
                       "--train-steps: TrainConfig.train_steps must be > 0"),
        "config with an unknown key": (shapes + ("--config", tmp / "unknown_key.json"),
                                       "unknown_key.json: training.lrr: unknown key; TrainConfig has lr, "),
        "config with a wrong type": (shapes + ("--config", tmp / "wrong_type.json"),
                                     'training.lr: expected a number, got "fast"'),
        "config with an unknown section": (shapes + ("--config", tmp / "unknown_section.json"),
                                           "optimizer: unknown section; expected network, objective, schedule, "
                                           "training, data"),
        "config with a string for a list": (shapes + ("--config", tmp / "bad_list.json"),
                                            'network.ch_list: expected a list, got "3,32"'),
        "config with an unknown schedule": (shapes + ("--config", tmp / "bad_schedule.json"),
                                            "schedule.kind: expected one of ['cosine', 'custom', 'flow', 'linear']"),
        "config with an invalid network": (shapes + ("--config", tmp / "bad_network.json"), "temb_dim must be even"),
        "config with an unknown objective key": (shapes + ("--config", tmp / "unknown_objective_key.json"),
                                                 "unknown_objective_key.json: objective.loss: unknown key; Objective "
                                                 "has prediction, weighting, snr_gamma"),
        "config with an unknown prediction": (shapes + ("--config", tmp / "bad_prediction.json"),
                                              "bad_prediction.json: objective.prediction must be one of ('eps', "
                                              "'x0', 'v', 'flow'), got 'z'"),
        "config with a string for snr_gamma": (shapes + ("--config", tmp / "objective_wrong_type.json"),
                                               'objective.snr_gamma: expected a number, got "5"'),
        "config with an snr_gamma of 0": (shapes + ("--config", tmp / "bad_snr_gamma.json"),
                                          "bad_snr_gamma.json: objective.snr_gamma must be a number > 0"),
        "config with the prediction in the network": (shapes + ("--config", tmp / "prediction_in_network.json"),
                                                       "network.prediction: unknown key; UNetConfig has ch_list, "),
        "config with a bad value that no flag sets": (shapes + ("--config", tmp / "bad_grad_clip.json"),
                                                      "error: TrainConfig.grad_clip must be >= 0, got -1.0"),
        "config that is not JSON": (shapes + ("--config", tmp / "not_json.json"), "not a readable JSON file"),
        "missing config": (shapes + ("--config", tmp / "nope.json"), "nope.json: file not found"),
        "config with --resume": (("train", "--out", run, "--resume", "--train-steps", "3", "--config",
                                  tmp / "wrong_type.json"),
                                 "--config: " + str(run / "checkpoint.pt") + " holds the run's configuration"),
        "evaluation without samples": (shapes + ("--eval-every", "2", "--eval-n", "0"),
                                       "--eval-n: TrainConfig.eval_n must be >= 2 with eval_every=2"),
        "keep best without evaluation": (shapes + ("--keep-best",),
                                         "--keep-best: TrainConfig.keep_best needs eval_every > 0"),
        "keep none": (shapes + ("--keep-last", "0"), "--keep-last: TrainConfig.keep_last must be None or an int >= 1"),
        "milestone 0": (shapes + ("--milestones", "0,10"), "--milestones: expected comma-separated steps >= 1"),
        "zero micro-batches": (shapes + ("--grad-accum", "0"), "--grad-accum: TrainConfig.grad_accum must be > 0"),
        "micro-batches not dividing the batch": (shapes + ("--grad-accum", "3"),
                                                 "--grad-accum: TrainConfig.grad_accum must divide batch_size=2"),
        "unknown precision": (shapes + ("--precision", "fp8"), "--precision: invalid choice: 'fp8'"),
        "unknown logger": (shapes + ("--logger", "mlflow"), "--logger: invalid choice: 'mlflow'"),
        "negative batch size": (shapes + ("--batch-size", "-4"), "--batch-size: TrainConfig.batch_size must be > 0"),
        "non-integer steps": (train + ("--data", "shapes", "--train-steps", "ten"),
                              "--train-steps: expected an integer"),
        "existing run without --resume": (("train", "--preset", "tiny", "--data", "shapes", "--train-steps", "2",
                                           "--out", run), "--resume"),
        "a bad learning rate on resume": (("train", "--out", run, "--train-steps", "3", "--resume", "--lr", "-1",
                                           "--data", "shapes"), "--lr: TrainConfig.lr must be > 0"),
        "negative sample interval": (shapes + ("--sample-every", "-1"),
                                     "--sample-every: TrainConfig.sample_every must be >= 0"),
        "ema decay of 1 or more": (shapes + ("--ema-decay", "1.5"),
                                   "--ema-decay: TrainConfig.ema_decay must be in [0, 1)"),
        "unknown prediction": (shapes + ("--prediction", "score"), "--prediction: invalid choice: 'score'"),
        "unknown loss weighting": (shapes + ("--loss-weighting", "snr"), "--loss-weighting: invalid choice"),
        "snr gamma of 0": (shapes + ("--loss-weighting", "min-snr", "--snr-gamma", "0"),
                           "--snr-gamma: Objective.snr_gamma must be a number > 0"),
        "unknown recipe": (("train", "--recipe", "fastest", "--out", tmp / "x"), "unknown recipe 'fastest'"),
        "no steps": (("train", "--preset", "tiny", "--data", "shapes", "--out", tmp / "x"),
                     "--train-steps: expected the optimizer steps of the run"),
        "beta_min >= beta_max": (shapes + ("--beta-min", "0.02", "--beta-max", "0.01"),
                                 "--beta-min 0.02 must be < --beta-max 0.01"),
        "beta outside (0, 1)": (shapes + ("--beta-max", "1.5"), "--beta-max: expected a number in (0, 1)"),
        "betas with the cosine schedule": (shapes + ("--schedule", "cosine", "--beta-max", "0.03"),
                                           "--schedule cosine"),
        "heads not dividing the channels": (shapes + ("--heads", "3"), "--heads: UNetConfig.num_heads must divide"),
        "attention level outside --ch-list": (shapes + ("--ch-list", "3,32", "--attention-layer", "3"),
                                              "--attention-layer"),
        "malformed --ch-list": (shapes + ("--ch-list", "3,x"), "--ch-list: expected comma-separated"),
        "odd time embedding": (shapes + ("--temb-dim", "7"), "--temb-dim: UNetConfig.temb_dim must be even"),
        "label dropout without --class-cond": (shapes + ("--cond-drop-prob", "0.2"),
                                               "--cond-drop-prob: the network is unconditional"),
    }


CASES = list(bad_input(Path("/")))
# run as real processes too: the exit status and stderr of the interpreter itself, a pickle that must not run,
# no network, a usage error and an input error
IN_PROCESSES = ("pickle payload", "cifar10 offline", "zero steps", "missing checkpoint", "class out of range")


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_on_stderr(files, case, capsys, monkeypatch, one_thread):
    """main() as `python -m ddpm_lib` calls it; usage errors exit through SystemExit."""
    if case == "cuda without cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(files)
    args, message = bad_input(files)[case]
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    assert_one_line_error((rc, out, err), message)
    assert not (files / "new").exists() and not (files / "pipe").exists(), "a refused command wrote something"


def test_bf16_on_a_card_without_it_is_refused_before_any_data_is_read(files, capsys, monkeypatch):
    """--precision bf16 on a pre-Ampere card (a T4 stood in for by patching what torch reports): one line naming
    the card, before the data is read (a data folder that does not exist is never looked at) and nothing written."""
    import ddpm_lib.runtime

    monkeypatch.setattr(ddpm_lib.runtime, "init_distributed", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    rc = main(["train", "--preset", "tiny", "--data", str(files / "no_such_folder"), "--train-steps", "1",
               "--precision", "bf16", "--out", str(files / "new")])
    out, err = capsys.readouterr()
    assert_one_line_error((rc, out, err), "--precision: TrainConfig.precision bf16: Tesla T4 (compute capability "
                                          "7.5) has no bfloat16")
    assert not (files / "new").exists()


def test_grad_accum_precision_and_logger_flags_reach_the_run(tmp_path, one_thread):
    rc = main(["train", "--preset", "tiny", "--data", "shapes", "--n-images", "8", "--image-size", "16",
               "--train-steps", "2", "--batch-size", "4", "--grad-accum", "2", "--precision", "bf16", "--device", "cpu",
               "--logger", "tensorboard", "--out", str(tmp_path / "run"), "--no-progress", "--sample-every", "0"])
    config = read_checkpoint(tmp_path / "run")["train_config"]
    assert rc == 0 and (config["grad_accum"], config["precision"], config["logger"]) == (2, "bf16", "tensorboard")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert read_checkpoint(tmp_path / "run")["amp_dtype"] == "bfloat16"


def test_config_json_round_trip_and_flags_override_it(tmp_path, one_thread):
    """Every run folder holds config.json (the resolved network, objective, schedule, training and data, as the
    checkpoint records them); `train --config` of it trains the same run bit for bit, and flags given override it."""
    base = ["--no-progress", "--device", "cpu", "--sample-every", "0"]
    assert main(["train", "--preset", "tiny", "--data", "shapes", "--n-images", "8", "--image-size", "16",
                 "--train-steps", "2", "--batch-size", "4", "--schedule", "cosine", "--num-timesteps", "50",
                 "--out", str(tmp_path / "a"), *base]) == 0
    config, ckpt = json.loads((tmp_path / "a" / "config.json").read_text()), read_checkpoint(tmp_path / "a")
    as_json = lambda values: json.loads(json.dumps(values))  # noqa: E731  (tuples as lists)
    assert config["training"] == as_json(ckpt["train_config"]) and config["data"] == as_json(ckpt["data"])
    assert config["network"] == as_json(ckpt["unet_config"]) and config["objective"] == ckpt["objective"]
    assert config["objective"] == {"prediction": "eps", "weighting": "uniform", "snr_gamma": 5.0}  # the paper's
    assert config["schedule"] == {"kind": "cosine", "num_timesteps": 50, "s": 0.008}
    assert main(["train", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b"), *base]) == 0
    again = read_checkpoint(tmp_path / "b")
    assert all(torch.equal(ckpt["model"][k], again["model"][k]) for k in ckpt["model"])  # the same run
    assert torch.equal(ckpt["schedule"]["betas"], again["schedule"]["betas"]) and again["data"] == ckpt["data"]
    assert again["objective"] == ckpt["objective"]
    assert main(["train", "--config", str(tmp_path / "a"), "--lr", "1e-3", "--train-steps", "3", "--out",
                 str(tmp_path / "c"), *base]) == 0
    changed = read_checkpoint(tmp_path / "c")["train_config"]
    assert {k for k in changed if changed[k] != ckpt["train_config"][k]} == {"lr", "train_steps", "out_dir"}
    assert changed["lr"] == 1e-3


def test_a_hand_written_config_sets_what_it_names(tmp_path, one_thread):
    (tmp_path / "mine.json").write_text(json.dumps({
        "network": {"ch_list": [3, 16, 32], "attention_layer": [], "num_heads": 1, "temb_dim": 16, "norm_groups": 8,
                    "time_mlp_dim": 32, "image_size": 16},
        "objective": {"prediction": "v"},
        "training": {"lr": 1e-3, "batch_size": 4, "train_steps": 2, "grad_clip": 0.5, "flip": False}}))
    assert main(["train", "--config", str(tmp_path / "mine.json"), "--data", "shapes", "--n-images", "8",
                 "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu", "--sample-every", "0"]) == 0
    ckpt = read_checkpoint(tmp_path / "run")
    assert ckpt["unet_config"]["ch_list"] == (3, 16, 32) and ckpt["objective"]["prediction"] == "v"
    assert (ckpt["objective"]["weighting"], ckpt["objective"]["snr_gamma"]) == ("uniform", 5.0)  # the defaults
    training = ckpt["train_config"]
    assert (training["lr"], training["grad_clip"], training["flip"], training["train_steps"]) == (1e-3, 0.5, False, 2)
    assert training["warmup_steps"] == TrainConfig.warmup_steps  # what the file leaves out: the defaults


def test_a_configs_objective_is_the_runs_and_flags_override_it(tmp_path, one_thread):
    """--config's "objective" section: the run trains for it; its checkpoint and config.json record it, and
    load_model and Trainer.load (a resume) read it back; an objective flag given overrides its field, the others
    stay."""
    objective = {"prediction": "x0", "weighting": "min-snr", "snr_gamma": 2.5}
    (tmp_path / "obj.json").write_text(json.dumps({"objective": objective}))
    base = ["--preset", "tiny", "--data", "shapes", "--n-images", "8", "--image-size", "16", "--train-steps", "1",
            "--batch-size", "4", "--no-progress", "--device", "cpu", "--sample-every", "0"]
    assert main(["train", "--config", str(tmp_path / "obj.json"), "--out", str(tmp_path / "run"), *base]) == 0
    assert read_checkpoint(tmp_path / "run")["objective"] == objective
    assert json.loads((tmp_path / "run" / "config.json").read_text())["objective"] == objective
    assert load_model(tmp_path / "run", device="cpu").objective == Objective(**objective)
    assert Trainer.load(tmp_path / "run", device="cpu").objective == Objective(**objective)
    assert main(["train", "--config", str(tmp_path / "obj.json"), "--prediction", "v", "--out",
                 str(tmp_path / "flag"), *base]) == 0
    assert read_checkpoint(tmp_path / "flag")["objective"] == {**objective, "prediction": "v"}


def channel_means_fid(fake, ref) -> float:
    """The oracle of `fid` with ChannelMeans as its features: the Frechet distance (scipy's sqrtm, float64) between
    Gaussians fitted to the channel means of `fake` (uint8) and of the reference folder's images (at 16x16)."""
    real = load_image_folder(ref, size=16).images
    (mu_f, cov_f), (mu_r, cov_r) = [(f.mean(0), numpy.cov(f, rowvar=False))
                                    for f in (ChannelMeans()(x).double().numpy() for x in (fake, real))]
    return ((mu_f - mu_r) ** 2).sum() + numpy.trace(cov_f + cov_r - 2 * scipy.linalg.sqrtm(cov_f @ cov_r).real)


@pytest.fixture(scope="module")
def ref(files):
    """A folder of 6 reference images for `fid --ref`."""
    return write_image_folder(files / "ref", make_shapes(6, size=16, seed=5)[0])


def test_fid_passes_guidance_and_writes_the_scores_next_to_the_checkpoint(files, ref, capsys, monkeypatch, one_thread):
    from ddpm_lib import evaluation

    monkeypatch.setenv("DDPM_LIB_CACHE", str(files / "cache"))
    monkeypatch.setattr(evaluation, "inception_extractor", lambda *args, **kwargs: ChannelMeans())
    rc = main(["fid", "--ckpt", str(files / "cond"), "--n", "6", "--sample-steps", "2", "--ref", str(ref),
               "--guidance", "2", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    result = json.loads((files / "cond" / "checkpoint_fid_ddim2_cfg2_n6.json").read_text())
    # 6 samples guided at s = 2 towards balanced labels 0, 1, 2, 0, 1, 2 (seed 0, DDIM 2 steps)
    denoiser = load_model(files / "cond", device="cpu")
    fake = generate_images(denoiser, 6, sample_steps=2, y=torch.arange(6) % 3, guidance_scale=2, device="cpu")
    assert result["guidance_scale"] == 2 and f"FID {result['fid']:.3f}" in out
    assert result["fid"] == pytest.approx(channel_means_fid(fake, ref), rel=1e-6, abs=1e-9)  # float64: 2 solvers
    # the IS of 6 samples in min(10, 6) = 6 splits: one sample each, whose p(y|x) is its own p(y), KL 0, IS 1
    assert result["is_mean"] == pytest.approx(1.0) and f"IS {result['is_mean']:.2f}" in out  # Inception's logits


# Without --sample-steps a sampler runs its default, capped at the checkpoint's T = 20: DDIM's 50 would not fit.
DEFAULT_STEPS_AT_T20 = {"ddpm": 20, "ddim": 20, "dpm-solver": 20}


@pytest.mark.parametrize("sampler", DEFAULT_STEPS_AT_T20)
def test_sample_and_fid_without_steps_fit_a_short_schedule(files, ref, sampler, capsys, monkeypatch, one_thread):
    from ddpm_lib import evaluation

    monkeypatch.setenv("DDPM_LIB_CACHE", str(files / "cache"))
    monkeypatch.setattr(evaluation, "inception_extractor", lambda *args, **kwargs: ChannelMeans())
    steps, grid = DEFAULT_STEPS_AT_T20[sampler], files / f"grid_{sampler}.png"
    rc = main(["sample", "--ckpt", str(files / "t20"), "--sampler", sampler, "--n", "2", "--out", str(grid),
               "--device", "cpu"])
    _, err = capsys.readouterr()
    assert rc == 0 and f"{sampler} with {steps} sample steps" in err, err
    denoiser = load_model(files / "t20", device="cpu")
    expected = generate_images(denoiser, 2, sampler=sampler, sample_steps=steps, device="cpu")  # uint8 (2, 3, 16, 16)
    pixels = torch.from_numpy(numpy.array(Image.open(grid).convert("RGB"))).permute(2, 0, 1)  # (3, 20, 38): 1x2 grid
    torch.testing.assert_close(torch.stack([pixels[:, 2:18, 2:18], pixels[:, 2:18, 20:36]]), expected, atol=0, rtol=0)

    rc = main(["fid", "--ckpt", str(files / "t20"), "--sampler", sampler, "--n", "4", "--ref", str(ref),
               "--device", "cpu"])
    _, err = capsys.readouterr()
    assert rc == 0, err
    result = json.loads((files / "t20" / f"checkpoint_fid_{sampler}{steps}_n4.json").read_text())
    assert (result["sampler"], result["sample_steps"], result["n"]) == (sampler, steps, 4)
    fake = generate_images(denoiser, 4, sampler=sampler, sample_steps=steps, device="cpu")  # fid's samples: seed 0
    assert result["fid"] == pytest.approx(channel_means_fid(fake, ref), rel=1e-6, abs=1e-9)


@pytest.fixture(scope="module")
def processes(files):
    cases = {case: bad_input(files)[case][0] for case in IN_PROCESSES}
    runs = run_all({**cases, "train help": ("train", "--help"), "sample help": ("sample", "--help")}, cwd=files,
                   parallel=len(cases) + 2)
    assert not (files / "pwned").exists(), "the pickle payload ran"
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("case", IN_PROCESSES)
def test_bad_input_in_a_process_is_one_line_and_a_non_zero_exit(processes, files, case):
    assert_one_line_error(processes[case], bad_input(files)[case][1])


@pytest.mark.slow
def test_help_shows_the_walkthroughs_defaults_and_the_samplers_steps(processes):
    rc, out, _ = processes["train help"]
    assert rc == 0
    text = " ".join(out.split()).split("the walkthrough's knobs", 1)[1]  # past the usage line
    walk, linear = PRESETS["walkthrough"], linear_betas.__defaults__  # (num_timesteps, beta_min, beta_max)
    for flag, default in [("--num-timesteps T", f"default {linear[0]}"), ("--beta-min B", f"default {linear[1]}"),
                          ("--beta-max B", f"default {linear[2]}"), ("--heads H", f"walkthrough: {walk.num_heads}"),
                          ("--ch-list", "walkthrough: " + ",".join(map(str, walk.ch_list))),
                          ("--attention-layer", "walkthrough: " + ",".join(map(str, walk.attention_layer))),
                          ("--temb-dim D", f"walkthrough: {walk.temb_dim}"),
                          ("--schedule", "default: the recipe's, else linear")]:
        assert flag in text and default in text.split(flag, 1)[1][:150], (flag, default)
    rc, out, _ = processes["sample help"]
    assert rc == 0 and f"ddim {SAMPLERS['ddim'].default_sample_steps}" in " ".join(out.split())


def test_every_train_flag_is_in_the_docs_table():
    """docs/training.md's tables of `train` name each flag of its parser once, and no other."""
    usage = add_train_parser(argparse.ArgumentParser().add_subparsers()).format_usage()
    text = (Path(ROOT) / "docs" / "training.md").read_text()
    tables = "".join(part for part in re.split(r"^### ", text, flags=re.M) if part.startswith("`train`"))
    documented = re.findall(r"^\| `(--[a-z-]+)", tables, flags=re.M)
    assert sorted(documented) == sorted(set(re.findall(r"--[a-z][a-z-]*", usage)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step run of the walkthrough's knobs (module-wide; later tests resume and export it)."""
    tmp = tmp_path_factory.mktemp("cli")
    rc, _, err = finish(cli("train", *KNOBS, *TRAIN, "--train-steps", "2", "--ema-decay", "0.5", "--no-ema-warmup",
                            "--out", tmp / "run", cwd=tmp))
    assert rc == 0, err
    return tmp / "run"


@pytest.mark.slow
def test_train_records_the_knobs_and_the_data(run):
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    expected = replace(PRESETS["tiny"], ch_list=(3, 16, 32), attention_layer=(2,), num_heads=1, temb_dim=16)
    assert UNetConfig(**ckpt["unet_config"]) == expected
    assert torch.equal(ckpt["schedule"]["betas"], linear_betas(20, 1e-4, 0.05))
    assert ckpt["train_config"]["seed"] == 3 and ckpt["train_config"]["ema_decay"] == 0.5
    assert ckpt["train_config"]["ema_warmup"] is False  # --no-ema-warmup: the paper's constant decay
    assert ckpt["data"] == {"name": "shapes", "n": 16, "size": 32, "split": "train", "seed": 3,
                            "class_names": SHAPE_KINDS, "fallback": None, "channels": 3}  # load_dataset's DataInfo


RESUME_CONFLICTS = {"--preset": ("--preset", "walkthrough"), "--heads": ("--heads", "2"),
                    "--ch-list": ("--ch-list", "3,32,64"), "--dropout": ("--dropout", "0.2"),
                    "--seed": ("--seed", "0"), "--data": ("--data", "cifar10"),
                    "--n-images": ("--n-images", "32"), "--num-timesteps": ("--num-timesteps", "1000"),
                    "--beta-max": ("--beta-max", "0.02"), "--schedule": ("--schedule", "cosine"),
                    "--batch-size": ("--batch-size", "8"), "--class-cond": ("--class-cond",),
                    "--prediction": ("--prediction", "v"), "--loss-weighting": ("--loss-weighting", "min-snr"),
                    "--snr-gamma": ("--snr-gamma", "2"), "--recipe": ("--recipe", "quick-win"),
                    "--attention-layer": ("--attention-layer", "1"), "--temb-dim": ("--temb-dim", "32"),
                    "--image-size": ("--image-size", "16"), "--beta-min": ("--beta-min", "0.001")}


@pytest.mark.slow
@pytest.mark.parametrize("flag", RESUME_CONFLICTS)
def test_resume_refuses_flags_that_change_the_run(run, flag, capsys):
    before = (run / "checkpoint.pt").read_bytes()
    rc = main(["train", "--out", str(run), "--train-steps", "3", "--resume", "--device", "cpu", "--no-progress",
               *RESUME_CONFLICTS[flag]])
    assert_one_line_error((rc, *capsys.readouterr()), f"--resume: {flag}")
    assert (run / "checkpoint.pt").read_bytes() == before


@pytest.mark.slow
def test_resume_accepts_the_same_flags_and_sample_reads_the_run_folder(run):
    rc, _, err = finish(cli("train", *KNOBS, *TRAIN, "--train-steps", "3", "--resume", "--out", run, cwd=run.parent))
    assert rc == 0 and "resuming" in err, err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3
    assert [json.loads(line)["step"] for line in (run / "loss.jsonl").read_text().splitlines()] == [1, 2, 3]

    grid = run.parent / "grid.png"
    rc, _, err = finish(cli("sample", "--ckpt", run, "--sampler", "dpm-solver", "--sample-steps", "2", "--n", "4",
                            "--out", grid, "--device", "cpu", cwd=run.parent))
    assert rc == 0, err
    assert Image.open(grid).size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)  # 2x2 grid, padding 2


def test_a_recipe_fills_the_flags_not_given_and_is_recorded(tmp_path, capsys, one_thread):
    """--recipe quick-win: its preset, data, image size and training settings; flags given override its fields;
    the objective flags set what the network predicts and the weighting; all recorded in the checkpoint."""
    rc = main(["train", "--recipe", "quick-win", "--train-steps", "2", "--batch-size", "4", "--n-images", "8",
               "--prediction", "v", "--loss-weighting", "min-snr", "--snr-gamma", "3", "--out", str(tmp_path / "r"),
               "--device", "cpu", "--no-progress", "--sample-every", "0"])
    assert rc == 0, capsys.readouterr().err
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    quick = RECIPES["quick-win"]
    assert UNetConfig(**ckpt["unet_config"]) == replace(PRESETS[quick.preset], image_size=quick.image_size)
    config = ckpt["train_config"]
    assert (config["recipe"], config["lr"], config["warmup_steps"], config["ema_decay"]) == (
        "quick-win", quick.lr, quick.warmup_steps, quick.ema_decay)  # the recipe's
    assert (config["train_steps"], config["batch_size"], ckpt["objective"]["prediction"],
            ckpt["objective"]["weighting"],
            ckpt["objective"]["snr_gamma"]) == (2, 4, "v", "min-snr", 3.0)  # the flags'
    assert ckpt["data"]["name"] == quick.data and ckpt["data"]["size"] == quick.image_size
    assert NoiseSchedule.from_state_dict(ckpt["schedule"]).kind == quick.schedule == "cosine"  # the recipe's
    rc = main(["train", "--out", str(tmp_path / "r"), "--train-steps", "3", "--resume", "--device", "cpu",
               "--no-progress", "--prediction", "v", "--loss-weighting", "min-snr"])  # the same: accepted
    assert rc == 0 and torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["step"] == 3


def test_a_class_conditional_recipe_conditions_on_the_datas_labels(tmp_path, capsys, one_thread):
    """--recipe cifar10-cond trains on the labels without --class-cond (here the shapes' kinds: --data overrides)."""
    rc = main(["train", "--recipe", "cifar10-cond", "--data", "shapes", "--n-images", "8", "--train-steps", "1",
               "--batch-size", "4", "--out", str(tmp_path / "r"), "--device", "cpu", "--no-progress",
               "--sample-every", "0"])
    assert rc == 0, capsys.readouterr().err
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ckpt["unet_config"]["num_classes"] == len(ckpt["data"]["class_names"]) > 1
    assert ckpt["train_config"]["recipe"] == "cifar10-cond"


@pytest.mark.parametrize("flags, expected", [
    ((), NoiseSchedule.cosine()),                                         # quick-win's own
    (("--schedule", "linear"), NoiseSchedule.paper()),                     # a flag overrides it
    (("--beta-max", "0.01"), NoiseSchedule.linear(1000, 1e-4, 0.01)),     # betas ask for the linear schedule
])
def test_a_recipes_schedule_gives_way_to_the_schedule_flags(tmp_path, capsys, one_thread, flags, expected):
    rc = main(["train", "--recipe", "quick-win", "--train-steps", "1", "--batch-size", "4", "--n-images", "4",
               *flags, "--out", str(tmp_path / "r"), "--device", "cpu", "--no-progress", "--sample-every", "0"])
    assert rc == 0, capsys.readouterr().err
    schedule = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["schedule"]
    assert schedule["kind"] == expected.kind and schedule["params"] == expected.params
    assert torch.equal(schedule["betas"], expected.state_dict()["betas"])


def assert_same_run(a, b):
    """The checkpoints of two run folders hold the same step, weights, EMA and Adam state, bit for bit."""
    a, b = (torch.load(folder / "checkpoint.pt", weights_only=True) for folder in (a, b))
    assert a["step"] == b["step"] and a["data"] == b["data"]
    for key in ("model", "ema"):
        for name, x in a[key].items():
            assert torch.equal(x, b[key][name]), (key, name)
    for p, q in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for name in p:
            assert torch.equal(p[name], q[name]), name


def test_a_notebook_run_resumes_from_the_cli_where_it_stopped(tmp_path, monkeypatch, capsys, one_thread):
    """Notebook 05's way (load_training_images, a Trainer, its data_info) for 2 steps, then `train --resume`
    to 4: the CLI reloads the same images by the checkpoint's DataInfo (CIFAR-10's fixture averaged down to 16x16)
    and continues bit for bit as a run of 4 steps straight."""
    images, _ = make_shapes(12, seed=2)
    write_cifar10_format(tmp_path / "data", images, torch.arange(12) % 10)
    setup = NotebookSetup(device=torch.device("cpu"), smoke=True, data_root=tmp_path / "data", runs=tmp_path / "runs",
                          in_colab=False, seed=0)
    loaded = load_training_images(setup, size=MICRO.image_size)  # as notebook 05 does
    assert loaded.info == DataInfo("cifar10", 12, 16, "train", class_names=CIFAR10_CLASSES)

    def notebook_run(folder, train_steps):
        torch.manual_seed(0)
        config = TrainConfig(train_steps=train_steps, batch_size=4, lr=1e-3, warmup_steps=1, seed=3,
                             out_dir=str(folder),
                             sample_every=0, checkpoint_every=0, log_every=1, progress=False)
        trainer = Trainer(UNet(MICRO), NoiseSchedule.linear(20), config, device="cpu")
        trainer.data_info = loaded.info
        return trainer.fit(loaded.images)

    notebook_run(tmp_path / "straight", train_steps=4)
    notebook_run(tmp_path / "run", train_steps=2)
    md5s = dict(tvd.CIFAR10.train_list)  # the CLI checks CIFAR-10's md5s: the fixture passes for "the real files"
    monkeypatch.setattr(tvd.utils, "calculate_md5", lambda path: md5s[os.path.basename(path)])
    rc = main(["train", "--out", str(tmp_path / "run"), "--train-steps", "4", "--resume", "--data-root",
               str(tmp_path / "data"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "at step 2 of 4" in err, err
    assert_same_run(tmp_path / "run", tmp_path / "straight")
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


def test_a_cli_run_resumes_in_a_notebook_where_it_stopped(tmp_path, capsys, one_thread):
    """`train` for 2 steps, then notebook 05's way (Trainer.load, load_training_images, fit) to 4: the notebook's
    loader gives the images of the run's record, and the run continues bit for bit as `train --train-steps 4` does."""
    flags = (*KNOBS, "--image-size", "16", *TRAIN)  # 16 shapes at 16x16, seed 3
    for folder, steps in (("straight", "4"), ("run", "2")):
        assert main(["train", *flags, "--train-steps", steps, "--out",
                     str(tmp_path / folder)]) == 0, capsys.readouterr()
    resumed = Trainer.load(tmp_path / "run", device="cpu", train_steps=4,
                           out_dir=str(tmp_path / "run"))  # as 05 resumes
    setup = NotebookSetup(device=torch.device("cpu"), smoke=False, data_root=tmp_path / "data",
                          runs=tmp_path / "runs", in_colab=False, seed=3)
    loaded = load_training_images(setup, n=16, data="shapes", size=16)
    assert loaded.info == resumed.data_info == DataInfo("shapes", 16, 16, "train", seed=3, class_names=SHAPE_KINDS)
    assert resumed.step == 2
    resumed.fit(loaded.images)
    assert_same_run(tmp_path / "run", tmp_path / "straight")


@pytest.mark.slow
def test_export_writes_a_diffusers_pipeline_of_the_ema_weights(run):
    diffusers = pytest.importorskip("diffusers")
    out = run.parent / "pipeline"
    rc, _, err = finish(cli("export", "--ckpt", run, "--out", out, cwd=run.parent))
    assert rc == 0, err
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    ema, raw = load_model(run, ema=True, device="cpu"), load_model(run, ema=False, device="cpu")
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod, ema.schedule.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert pipe.scheduler.config.prediction_type == "epsilon"  # the run's objective: eps
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 19])
    with torch.no_grad():
        expected, theirs, other = ema.net(x, t), pipe.unet(x, t).sample, raw.net(x, t)
    scale = expected.abs().max()
    assert (theirs - expected).abs().max() / scale < 1e-4
    assert (other - expected).abs().max() / scale > 1e-3  # the EMA differs from the raw weights: it is the EMA
    images = pipe(batch_size=1, num_inference_steps=2, generator=g, output_type="pt").images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


@pytest.mark.slow
def test_push_to_hub_writes_the_model_card_and_offline_keeps_the_folder(run):
    """Up to the upload: the pipeline folder and its card (network, objective, schedule, recipe, steps, data, the
    evaluations fid wrote, how to load it); offline (HF_HUB_OFFLINE), the upload is one line and the folder stays."""
    pytest.importorskip("diffusers")
    scores = {"fid": 123.4, "kid_mean": 0.1, "kid_std": 0.01, "is_mean": 2.5, "is_std": 0.1, "n": 100,
              "sampler": "ddim", "sample_steps": 20, "guidance_scale": 1.0, "ref": "cifar10"}  # as fid writes them
    (run / "checkpoint_fid_ddim20_n100.json").write_text(json.dumps(scores))
    out = run.parent / "hub-pipeline"
    rc, _, err = finish(cli("export", "--ckpt", run, "--out", out, "--push-to-hub", "someone/ddpm-shapes",
                            cwd=run.parent))
    assert_one_line_error((rc, "", err.splitlines()[-1] + "\n"), "--push-to-hub someone/ddpm-shapes: the upload "
                                                                  "failed")
    assert f"{out} is kept" in err and (out / "model_index.json").is_file()
    card, ckpt = (out / "README.md").read_text(), read_checkpoint(run)
    # the module's run, resumed by now
    steps = f"{ckpt['step']:,} of {ckpt['train_config']['train_steps']:,} training steps"
    for text in ("library_name: diffusers", "# someone/ddpm-shapes", "channels (3, 16, 32)", "| predicts | eps",
                 "`epsilon`", "loss weighting uniform", "| schedule | linear, T = 20, beta_min=0.0001, beta_max=0.05",
                 steps,
                 "| data | shapes, 16 images at 32x32", "| 100 | ddim | 20 | 123.40 |", "2.50 ± 0.10",
                 'DDPMPipeline.from_pretrained("someone/ddpm-shapes")'):
        assert text in card, text
    other = model_card({**ckpt, "objective": Objective("x0", "min-snr").to_dict()}, run / "checkpoint.pt", "a/b")
    assert "| predicts | x0 (diffusers' prediction_type `sample`) |" in other and "loss weighting min-snr" in other
    (run / "checkpoint_fid_ddim20_n100.json").unlink()


@pytest.mark.slow
def test_class_conditional_training_and_guided_sampling(tmp_path):
    run = tmp_path / "run"
    rc, _, err = finish(cli("train", "--preset", "tiny", "--class-cond", "--cond-drop-prob", "0.3", *TRAIN,
                            "--train-steps", "1", "--out", run, cwd=tmp_path))
    assert rc == 0, err
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["unet_config"]["num_classes"] == len(SHAPE_KINDS)
    assert ckpt["data"]["class_names"] == SHAPE_KINDS and ckpt["train_config"]["cond_drop_prob"] == 0.3
    rc, _, err = finish(cli("sample", "--ckpt", run, "--class", len(SHAPE_KINDS) - 1, "--guidance", "2.5",
                            "--sample-steps", "2", "--n", "2", "--out", tmp_path / "grid.png", "--device", "cpu",
                            cwd=tmp_path))
    assert rc == 0, err
    assert Image.open(tmp_path / "grid.png").size == (2 * 32 + 3 * 2, 32 + 2 * 2)  # 2 images in a row


def test_a_folder_trains_at_its_own_size_without_image_size(tmp_path, capsys, one_thread):
    """No --image-size (nor a recipe or --config that sets one): the network is built for the folder's images, 16x16
    here, and nothing is resized; with --image-size they are resized to it."""
    folder = write_image_folder(tmp_path / "sixteen", make_shapes(4, size=16, seed=0)[0])
    common = ["train", "--preset", "tiny", "--data", str(folder), "--train-steps", "1", "--batch-size", "2",
              "--device", "cpu", "--no-progress", "--sample-every", "0"]
    for out, extra, size in (("own", [], 16), ("asked", ["--image-size", "8"], 8)):
        assert main([*common, "--out", str(tmp_path / out), *extra]) == 0, capsys.readouterr().err
        ckpt = torch.load(tmp_path / out / "checkpoint.pt", weights_only=True)
        assert ckpt["unet_config"]["image_size"] == ckpt["data"]["size"] == size


# -- the data people bring: grayscale folders, other sizes, folders over the memory budget ---------------------
# the tiny preset as diffusers can express it (one head, temb_dim = the first level's channels), at any multiple of 4
EXPRESSIBLE = ("--preset", "tiny", "--heads", "1", "--temb-dim", "32", "--num-timesteps", "20", "--batch-size", "4",
               "--device", "cpu", "--no-progress", "--sample-every", "0", "--seed", "1")


def test_a_grayscale_folder_streams_over_the_budget_trains_and_samples(tmp_path, capsys, monkeypatch, one_thread):
    """28x28 grayscale digits (PIL mode L): a 1-channel network at 28x28, recorded with the data's channels; over
    --memory-budget the folder streams (one line says so), resumes streaming with other workers, and is the run in
    memory, bit for bit; sample writes its grid; fid scores its samples against the folder."""
    folder = gray_folder(tmp_path / "digits", make_shapes(10, size=28, seed=3)[0])
    streamed, in_memory = tmp_path / "streamed", tmp_path / "memory"
    common = ["train", "--data", str(folder), *EXPRESSIBLE]
    assert main([*common, "--train-steps", "2", "--out", str(in_memory)]) == 0, capsys.readouterr().err
    assert "streaming" not in capsys.readouterr().err
    assert main([*common, "--train-steps", "1", "--out", str(streamed), "--memory-budget", "1e-6", "--workers",
                 "1"]) == 0
    assert ("streaming " + str(folder.resolve()) + ": 7.84e-06 GB decoded, over the memory budget of 1e-06 GB"
            in capsys.readouterr().err)
    ckpt = read_checkpoint(streamed)
    assert ckpt["unet_config"]["ch_list"][0] == ckpt["data"]["channels"] == 1
    assert ckpt["unet_config"]["image_size"] == ckpt["data"]["size"] == 28
    assert ckpt["train_config"]["memory_budget"] == 1e-6 and ckpt["train_config"]["workers"] == 1
    assert json.loads((streamed / "config.json").read_text())["data"]["channels"] == 1
    assert main(["train", "--out", str(streamed), "--resume", "--train-steps", "2", "--device", "cpu",
                 "--no-progress", "--workers", "0"]) == 0, capsys.readouterr().err
    assert_same_run(streamed, in_memory)
    grid = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(streamed), "--sample-steps", "2", "--n", "4", "--out", str(grid),
                 "--device", "cpu"]) == 0
    assert Image.open(grid).size == (2 * 28 + 3 * 2, 2 * 28 + 3 * 2)
    from ddpm_lib import evaluation

    monkeypatch.setenv("DDPM_LIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(evaluation, "inception_extractor", lambda *args, **kwargs: ChannelMeans())
    assert main(["fid", "--ckpt", str(streamed), "--n", "2", "--sample-steps", "2", "--ref", str(folder),
                 "--batch-size", "2", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert "FID " in capsys.readouterr().out


@pytest.mark.parametrize("size", [16, 64])
def test_folders_of_other_sizes_train_sample_and_score_at_their_size(tmp_path, capsys, monkeypatch, one_thread,
                                                                     size):
    from ddpm_lib import evaluation

    folder = write_image_folder(tmp_path / "images", make_shapes(4, size=size, seed=0)[0])
    run = tmp_path / "run"
    assert main(["train", "--data", str(folder), *EXPRESSIBLE, "--train-steps", "1", "--out", str(run)]) == 0
    ckpt = read_checkpoint(run)
    assert ckpt["unet_config"]["image_size"] == ckpt["data"]["size"] == size and ckpt["data"]["channels"] == 3
    grid = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(run), "--sample-steps", "2", "--n", "1", "--out", str(grid),
                 "--device", "cpu"]) == 0
    assert Image.open(grid).size == (size, size)  # one image: no padding
    monkeypatch.setenv("DDPM_LIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(evaluation, "inception_extractor", lambda *args, **kwargs: ChannelMeans())
    assert main(["fid", "--ckpt", str(run), "--n", "2", "--sample-steps", "2", "--ref", str(folder), "--batch-size",
                 "2", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert "FID " in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("size, mode", [(28, "L"), (64, "RGB")])
def test_export_of_a_grayscale_or_64_pixel_run_is_a_unet2dmodel_of_its_channels(tmp_path, capsys, one_thread, size,
                                                                                  mode):
    """`export` writes a UNet2DModel of the run's channels in and out (1 for grayscale) that computes the EMA
    network's output."""
    diffusers = pytest.importorskip("diffusers")
    images = make_shapes(2, size=size, seed=0)[0]
    folder = (gray_folder if mode == "L" else write_image_folder)(tmp_path / "images", images)
    run, out = tmp_path / "run", tmp_path / "pipeline"
    assert main(["train", "--data", str(folder), *EXPRESSIBLE, "--train-steps", "1", "--out", str(run)]) == 0
    assert main(["export", "--ckpt", str(run), "--out", str(out)]) == 0, capsys.readouterr().err
    channels = 1 if mode == "L" else 3
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    assert pipe.unet.config.in_channels == pipe.unet.config.out_channels == channels
    assert pipe.unet.config.sample_size == size
    ema = load_model(run, device="cpu")
    x, t = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 19])
    with torch.no_grad():
        expected = ema.net(x, t)
        assert (pipe.unet(x, t).sample - expected).abs().max() / expected.abs().max() < 1e-4


def test_evaluating_a_streamed_folder_is_refused_before_training(tmp_path, capsys, monkeypatch, one_thread):
    from ddpm_lib import metrics

    monkeypatch.setattr(metrics, "inception_extractor", lambda *args, **kwargs: ChannelMeans())
    folder = gray_folder(tmp_path / "digits", make_shapes(2, size=28, seed=0)[0])
    rc = main(["train", "--data", str(folder), *EXPRESSIBLE, "--train-steps", "1", "--out", str(tmp_path / "run"),
               "--memory-budget", "1e-9", "--eval-every", "1", "--eval-n", "2"])
    assert_one_line_error((rc, *capsys.readouterr()), "--eval-every: " + str(folder.resolve()))
    assert not (tmp_path / "run").exists()
