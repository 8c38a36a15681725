"""Checkpoint files: atomic writes, stale temp files, run folders, safe reads, clear errors, load_model."""
import os

import pytest
import torch
from helpers import MICRO, Payload, perturbed

import ddpm_lib
from ddpm_lib.checkpoint import (CHECKPOINT_VERSION, REQUIRED_KEYS, load_model, read_checkpoint,
                                 remove_stale_temp_files, resolve_checkpoint, write_checkpoint)
from ddpm_lib.data import CIFAR10_CLASSES, DataInfo
from ddpm_lib.objective import Denoiser, Objective
from ddpm_lib.record import data_info_of, objective_of
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import UNet


OBJECTIVE = Objective("v", "min-snr", 2.0)  # not the default: a reader that ignored the entry would show


@pytest.fixture
def run(tmp_path):
    """A run folder with a step-0 checkpoint whose EMA differs from the raw weights, of a v-prediction objective."""
    config = TrainConfig(batch_size=2, train_steps=1, out_dir=str(tmp_path / "run"), progress=False)
    trainer = Trainer(UNet(MICRO), NoiseSchedule.linear(10), config, OBJECTIVE, device="cpu")
    perturbed(trainer.ema)
    trainer.save()
    return trainer


def test_resolve_checkpoint_takes_a_file_or_a_run_folder(tmp_path, run):
    folder = tmp_path / "run"
    assert resolve_checkpoint(folder) == resolve_checkpoint(folder / "checkpoint.pt") == folder / "checkpoint.pt"
    with pytest.raises(FileNotFoundError, match="has no checkpoint.pt"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_checkpoint(tmp_path / "missing.pt")


def test_load_model_returns_a_denoiser_of_the_ema_its_schedule_and_objective(tmp_path, run):
    denoiser = load_model(tmp_path / "run", device="cpu")
    assert isinstance(denoiser, Denoiser) and denoiser.objective == OBJECTIVE == run.objective
    model, schedule = denoiser.net, denoiser.schedule
    assert isinstance(model, UNet) and not model.training and model.config == run.model.config
    torch.testing.assert_close(schedule.betas, run.schedule.betas, rtol=0, atol=0)
    assert schedule.kind == "linear" and schedule.device == torch.device("cpu")
    for name, x in run.ema.state_dict().items():
        assert torch.equal(model.state_dict()[name], x), name
    raw = ddpm_lib.load_model(tmp_path / "run" / "checkpoint.pt", ema=False, device="cpu")
    assert isinstance(raw, Denoiser) and raw.objective == OBJECTIVE
    for name, x in run.model.state_dict().items():
        assert torch.equal(raw.net.state_dict()[name], x), name
    ckpt = ddpm_lib.read_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 0 and ckpt["version"] == CHECKPOINT_VERSION == 6
    assert ckpt["objective"] == OBJECTIVE.to_dict() and objective_of(ckpt, "run") == OBJECTIVE
    assert "objective" in REQUIRED_KEYS and "prediction" not in ckpt["unet_config"]


def test_interrupted_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = write_checkpoint({"step": 1}, tmp_path / "checkpoint.pt")
    good = path.read_bytes()
    real_save = torch.save

    def dies_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half a file on disk, then the "crash"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint({"step": 2}, path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    """A SIGKILL between open and os.replace leaves .checkpoint.pt.tmp<pid>; the next write removes it
    (and only temp files of that checkpoint)."""
    stale = [tmp_path / ".checkpoint.pt.tmp12345", tmp_path / ".checkpoint.pt.tmp999999999"]
    kept = [tmp_path / ".other.pt.tmp12345", tmp_path / ".checkpoint.pt.tmpx", tmp_path / "checkpoint.pt.bak"]
    for p in stale + kept:
        p.write_bytes(b"partial")
    write_checkpoint({"step": 3}, tmp_path / "checkpoint.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.pt"] + [p.name for p in kept])
    assert remove_stale_temp_files(tmp_path / "checkpoint.pt") == []
    ours = tmp_path / f".checkpoint.pt.tmp{os.getpid()}"  # our own write in progress is not stale
    ours.write_bytes(b"writing")
    assert remove_stale_temp_files(tmp_path / "checkpoint.pt") == [] and ours.exists()


def test_bad_checkpoint_files_are_refused(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        Trainer.load(tmp_path / "junk.pt")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a ddpm_lib checkpoint"):
        load_model(tmp_path / "other.pt")
    torch.save({"format": "ddpm_lib.checkpoint", "x": Payload()}, tmp_path / "evil.pt", pickle_protocol=2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="not a ddpm_lib checkpoint.*weights_only=True"):
        load_model(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_an_objective_entry_without_all_its_fields_is_refused_not_read_as_the_papers(tmp_path, run):
    """A version 5 checkpoint written by hand with an incomplete objective: a missing field would silently make
    an x0 network an eps one, so it is refused, naming the entry and the fields; a complete one reads back."""
    good = read_checkpoint(tmp_path / "run")
    for partial in ({}, {"prediction": "x0"}):
        torch.save({**good, "objective": partial}, tmp_path / "bare.pt")
        for load in (load_model, Trainer.load):
            with pytest.raises(ValueError, match=r"checkpoint entry 'objective' is not a valid Objective \(objective: "
                                                 r".*missing"):
                load(tmp_path / "bare.pt", device="cpu")
    torch.save({**good, "objective": {"prediction": "x0", "weighting": "uniform", "snr_gamma": 5.0}},
               tmp_path / "x0.pt")
    assert Trainer.load(tmp_path / "x0.pt", device="cpu").objective == Objective("x0", "uniform", 5.0)


def test_a_version_5_checkpoint_is_refused_in_one_line(tmp_path, run):
    """Before version 6 T was the schedule's "steps" and the training's length TrainConfig's "steps": no reader of
    that form is kept (the version says which ddpm_lib wrote it)."""
    good = read_checkpoint(tmp_path / "run")
    schedule = {**good["schedule"], "params": {("steps" if k == "num_timesteps" else k): v
                                               for k, v in good["schedule"]["params"].items()}}
    training = {("steps" if k == "train_steps" else k): v for k, v in good["train_config"].items()}
    old = {**good, "version": 5, "schedule": schedule, "train_config": training}
    torch.save(old, tmp_path / "old.pt")
    for load in (load_model, Trainer.load):
        with pytest.raises(ValueError, match="is a version 5 ddpm_lib checkpoint; this ddpm_lib reads version 6") as e:
            load(tmp_path / "old.pt", device="cpu")
        assert str(e.value).count("\n") == 0


def test_checkpoint_contents_are_validated(tmp_path, run):
    good = read_checkpoint(tmp_path / "run")

    def refused(match, **changes):
        path = tmp_path / "bad.pt"
        torch.save({**good, **changes}, path)
        with pytest.raises(ValueError, match=match):
            load_model(path, device="cpu")

    refused("version 99 ddpm_lib checkpoint", version=99)
    refused("version 1 ddpm_lib checkpoint", version=1)  # no reader of older formats is kept
    path = tmp_path / "incomplete.pt"
    torch.save({k: v for k, v in good.items() if k not in ("ema", "schedule")}, path)
    with pytest.raises(ValueError, match=r"missing ema, schedule"):
        load_model(path)
    refused(r"stored UNetConfig is invalid .*norm_groups", unet_config={**good["unet_config"], "norm_groups": 5})
    refused(r"checkpoint entry 'objective' is not a valid Objective \(Objective.prediction must be one of",
            objective={**good["objective"], "prediction": "score"})
    refused("weights do not fit the stored UNetConfig",
            unet_config={**good["unet_config"], "ch_list": [3, 16, 48]})
    path = tmp_path / "bad_train_config.pt"
    torch.save({**good, "train_config": {**good["train_config"], "lr": -1.0}}, path)
    with pytest.raises(ValueError, match=r"stored TrainConfig is invalid .*lr"):
        Trainer.load(path, device="cpu")
    torch.save({**good, "objective": {**good["objective"], "weighting": "snr"}}, path)
    with pytest.raises(ValueError, match=r"checkpoint entry 'objective' is not a valid Objective \(Objective.weighting "
                                         r"must be one of"):
        Trainer.load(path, device="cpu")
    path = tmp_path / "no_data.pt"
    torch.save({k: v for k, v in good.items() if k != "data"}, path)
    with pytest.raises(ValueError, match=r"missing data"):
        read_checkpoint(path)
    path = tmp_path / "no_objective.pt"
    torch.save({k: v for k, v in good.items() if k != "objective"}, path)
    with pytest.raises(ValueError, match=r"incomplete ddpm_lib checkpoint \(missing objective\)"):
        load_model(path, device="cpu")


def test_the_data_record_round_trips_through_the_checkpoint(tmp_path, run):
    assert data_info_of(read_checkpoint(tmp_path / "run"), "run") is None  # not recorded
    info = DataInfo("/data/cifar10-jpeg/train", 5000, 16, None, class_names=CIFAR10_CLASSES,
                    fallback=None)
    run.data_info = info
    run.save()
    ckpt = read_checkpoint(tmp_path / "run")
    assert ckpt["data"] == info.to_dict() and isinstance(ckpt["data"]["class_names"], tuple)
    assert data_info_of(ckpt, "run") == info
    assert Trainer.load(tmp_path / "run", device="cpu").data_info == info


@pytest.mark.parametrize("entry, match", [
    ({"name": "CIFAR-10", "images": 4}, r"unknown field\(s\) images; missing n, size, split"),
    ({"data": "shapes", "n": 16, "size": 32, "class_names": None}, "unknown field.s. data; missing name, split"),
    ({"name": "shapes", "n": 0, "size": 32, "split": "train", "seed": 0}, "DataInfo.n must be a positive int"),
    ({"name": "cifar10", "n": 4, "size": 32, "split": "train", "class_names": "airplane"}, "class_names"),
    (["cifar10"], "expected a dict of DataInfo's fields, got list"),
])
def test_a_data_entry_that_is_no_data_record_is_refused(tmp_path, run, entry, match):
    path = tmp_path / "bad_data.pt"
    torch.save({**read_checkpoint(tmp_path / "run"), "data": entry}, path)
    with pytest.raises(ValueError, match=rf"{path}: checkpoint entry 'data' is not a valid DataInfo \(.*{match}"):
        Trainer.load(path, device="cpu")


@pytest.mark.parametrize("entry, match", [
    ({"prediction": "score", "weighting": "uniform", "snr_gamma": 5.0},
     r"Objective\.prediction must be one of \('eps', 'x0', 'v', 'flow'\), got 'score'"),
    ({"prediction": "eps", "weighting": "min_snr", "snr_gamma": 5.0}, r"Objective\.weighting must be one of"),
    ({"prediction": "x0", "weighting": "min-snr", "snr_gamma": 0.0}, r"Objective\.snr_gamma must be a number > 0"),
    ({"prediction": "eps", "loss_weighting": "uniform"}, r"'loss_weighting' is not a field of Objective"),
    ("eps", r"objective: expected a dict of .*got str"),
    (None, r"objective: expected a dict of .*got NoneType"),
])
def test_an_objective_entry_that_is_no_objective_is_refused(tmp_path, run, entry, match):
    """A bad "objective" entry is one ValueError naming the file and the entry, from every reader."""
    path = tmp_path / "bad_objective.pt"
    torch.save({**read_checkpoint(tmp_path / "run"), "objective": entry}, path)
    for load in (load_model, Trainer.load):
        with pytest.raises(ValueError, match=rf"{path}: checkpoint entry 'objective' is not a valid Objective "
                                             rf"\(.*{match}") as caught:
            load(path, device="cpu")
        assert str(caught.value).count("\n") == 0
    with pytest.raises(ValueError, match=r"entry 'objective' is not a valid Objective"):
        objective_of({"objective": entry}, path)
