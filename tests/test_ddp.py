"""DistributedDataParallel on CPU (gloo): 2 ranks == 1 process with the same global batch; bit-exact resume."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from helpers import MICRO

from ddpm_lib.data import make_shapes
from ddpm_lib.objective import Objective
from ddpm_lib.schedule import NoiseSchedule
from ddpm_lib.train import Trainer
from ddpm_lib.train_config import TrainConfig
from ddpm_lib.unet import UNet


OBJECTIVE = Objective("v", "min-snr", 2.0)  # not the default: a resume must restore it on every rank


def make_trainer(out_dir, train_steps, dropout=0.0, grad_accum=1):
    """dropout 0 to compare with one process: ranks draw their own dropout masks, from (seed, step, rank)."""
    torch.manual_seed(0)
    config = TrainConfig(batch_size=8, train_steps=train_steps, warmup_steps=2, log_every=1, sample_every=0,
                         checkpoint_every=0, out_dir=str(out_dir), progress=False, grad_accum=grad_accum)
    return Trainer(UNet(replace(MICRO, dropout=dropout)), NoiseSchedule.linear(100), config, OBJECTIVE,
                   device="cpu")


def _count_all_reduces(trainer) -> list:
    """A list that grows by one at every gradient all-reduce (one per bucket) of the trainer's DDP."""
    calls: list = []

    def hook(state, bucket):
        calls.append(bucket.index())
        return allreduce_hook(None, bucket)

    trainer._ddp.register_comm_hook(None, hook)
    return calls


def _rank(rank, world_size, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world_size)
    try:
        images, _ = make_shapes(40, size=16, seed=1)
        trainer = make_trainer(tmp / "ddp", train_steps=2).fit(images)  # checkpoint at step 2 (rank 0 writes)
        trainer = Trainer.load(tmp / "ddp" / "checkpoint.pt", device="cpu", train_steps=4)
        assert trainer.objective == OBJECTIVE  # read on every rank from the file rank 0 wrote
        trainer.fit(images)
        # with dropout: a resumed DDP run continues every rank's dropout stream (nothing stored but the step)
        straight = make_trainer(tmp / "straight", train_steps=4, dropout=0.1).fit(images)
        make_trainer(tmp / "resumed", train_steps=2, dropout=0.1).fit(images)
        resumed = Trainer.load(tmp / "resumed", device="cpu", train_steps=4).fit(images)
        # gradient accumulation: 2 micro-batches per step, all-reduced once per step (no_sync on the first)
        plain, accum = make_trainer(tmp / "plain", train_steps=2), make_trainer(tmp / "accum", train_steps=2,
                                                                                grad_accum=2)
        calls = [_count_all_reduces(t) for t in (plain, accum)]
        plain.fit(images), accum.fit(images)
        torch.save({"model": trainer.model.state_dict(), "history": trainer.history, "calls": calls,
                    "plain": plain.model.state_dict(), "accum": accum.model.state_dict(),
                    "straight": straight.model.state_dict(), "resumed": resumed.model.state_dict()},
                   tmp / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path):
    mp.spawn(_rank, args=(2, tmp_path), nprocs=2, join=True)
    single = make_trainer(tmp_path / "single", train_steps=4).fit(make_shapes(40, size=16, seed=1)[0])
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, w in single.model.state_dict().items():
        assert torch.equal(rank0["model"][name], rank1["model"][name]), name  # ranks hold identical weights
        torch.testing.assert_close(rank0["model"][name], w, rtol=1e-4, atol=1e-5)  # == one process, same batch
        assert torch.equal(rank0["straight"][name], rank0["resumed"][name]), name  # bit-exact DDP resume
    # the logged loss is the global-batch mean on every rank, as in one process
    assert [s for s, _ in rank0["history"]] == [3, 4] and rank0["history"] == rank1["history"]
    for (_, loss_ddp), (_, loss) in zip(rank0["history"], single.history[2:]):
        assert abs(loss_ddp - loss) < 1e-5
    resumed = Trainer.load(tmp_path / "ddp" / "checkpoint.pt", device="cpu")
    assert resumed.step == 4 and resumed.objective == OBJECTIVE
    plain_calls, accum_calls = rank0["calls"]
    assert plain_calls and accum_calls == plain_calls  # the same all-reduces: none for the first micro-batch
    for name, w in rank0["plain"].items():
        torch.testing.assert_close(rank0["accum"][name], w, rtol=1e-4, atol=1e-5)  # the same 2 steps


@pytest.mark.slow
def test_torchrun_cli_trains_and_resumes(tmp_path):
    """torchrun -m ddpm_lib train: 2 gloo ranks, rank 0 writes the checkpoint and log, --resume continues (the
    objective the first run's flags set, without repeating them)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddpm_lib",
            "train", "--preset", "tiny", "--data", "shapes", "--n-images", "16", "--batch-size", "4",
            "--device", "cpu", "--out", str(tmp_path / "run"), "--log-every", "1", "--sample-every", "0",
            "--no-progress"]
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    objective = ["--prediction", "v", "--loss-weighting", "min-snr"]
    for steps in ("1", "2"):
        done = subprocess.run(args + ["--train-steps", steps] + (["--resume"] if steps == "2" else objective),
                              cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["objective"] == {"prediction": "v", "weighting": "min-snr", "snr_gamma": 5.0}
    log = (tmp_path / "run" / "loss.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2]  # rank 0 alone writes the log
