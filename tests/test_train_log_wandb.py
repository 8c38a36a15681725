"""The W&B log: offline runs read back from their .wandb files (wandb's own Record messages) against the TensorBoard
log of the same training, the run folder's config and samples, and a resume."""
import io
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_evaluation import run
from test_train import make_trainer

from ddpm_lib.train import Trainer
from ddpm_lib.train_log import check_logger

wandb = pytest.importorskip("wandb")
records_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

BLOCK, HEADER = 32768, 7  # W&B's transaction log: LevelDB's log format (32 KiB blocks, 7-byte record headers)


def records(path: Path):
    """The Record messages of a .wandb file, read as wandb's DataStore read them before wandb-core took it over:
    a ':W&B' header, then LevelDB log records (crc32 of type and data, length, type: full, first, middle, last)."""
    data, i, parts = path.read_bytes(), HEADER, b""
    assert struct.unpack_from("<4sHB", data) == (b":W&B", 0xBEE1, 0)
    while i + HEADER <= len(data):
        if BLOCK - i % BLOCK < HEADER:  # a block's tail too short for a header is padding
            i += BLOCK - i % BLOCK
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, i)
        if kind == 0:  # zeros past the last record
            break
        chunk = data[i + HEADER:i + HEADER + length]
        assert crc == zlib.crc32(chunk, zlib.crc32(bytes([kind]))), f"corrupt record at byte {i} of {path}"
        parts, i = parts + chunk, i + HEADER + length
        if kind in (1, 4):  # full, or last of first + middle* + last
            record = records_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


class WandbRun:
    """One session's .wandb file: its run record, config and history by step."""

    def __init__(self, path: Path):
        self.folder, self.history = path.parent, {}
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.run = record.run
            elif kind == "history":  # one row per step; an image's entries as a nested key each
                row: dict = {}
                for item in record.history.item:
                    *path, key = item.nested_key or [item.key]
                    node = row
                    for name in path:
                        node = node.setdefault(name, {})
                    node[key] = json.loads(item.value_json)
                self.history.setdefault(row.pop("_step"), {}).update(row)
        self.config = {u.key: json.loads(u.value_json) for u in self.run.config.update if u.key != "_wandb"}

    def scalars(self, key):
        return [(step, row[key]) for step, row in sorted(self.history.items()) if key in row]


def sessions(out: Path) -> list[WandbRun]:
    """Each session's W&B run in the run folder `out`, in the order they started."""
    runs = [WandbRun(p) for p in (out / "wandb").glob("offline-run-*/run-*.wandb")]
    return sorted(runs, key=lambda r: (r.run.start_time.seconds, r.run.start_time.nanos))


def wandb_children() -> list[str]:
    """This process's child processes that are W&B's (its service, wandb-core)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().rsplit(")", 1)[0].split("(", 1)[1], stat.read_text().rsplit(")", 1)[1]
        except OSError:  # ended meanwhile
            continue
        if int(rest.split()[1]) == os.getpid() and "wandb" in name:
            children.append(name)
    return children


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No account, no network, no W&B state outside tmp_path: the defaults a user without W&B settings has."""
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_NAME", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "home" / name))


@pytest.fixture(scope="module")
def images():
    from ddpm_lib.data import make_shapes

    return make_shapes(40, size=16, seed=1)[0]


def test_the_wandb_run_holds_what_tensorboard_holds_and_the_runs_config(tmp_path, images):
    """The same training logged both ways: every TensorBoard scalar at the same steps with the same values (the
    loss exactly, TensorBoard's float32 aside), the sample grids as the run's PNGs, config.json as the config."""
    kw = {"train_steps": 4, "log_every": 2, "sample_every": 2, "sample_n": 4, "sample_steps": 2, "grad_clip": 0.5}
    board = make_trainer(tmp_path / "tb", logger="tensorboard", **kw).fit(images)
    trainer = make_trainer(tmp_path / "wb", logger="wandb", **kw).fit(images)
    assert not wandb_children()  # closing the log stopped W&B's service
    assert trainer.history == board.history
    (session,) = sessions(tmp_path / "wb")
    assert session.run.project == "ddpm_lib" and session.run.display_name == "wb"
    assert session.run.telemetry.feature.offline
    assert session.config == json.loads((tmp_path / "wb" / "config.json").read_text())
    assert session.scalars("loss") == trainer.history  # float64 in W&B: exactly the losses of loss.jsonl

    events = event_accumulator.EventAccumulator(str(tmp_path / "tb" / "tensorboard"),
                                                size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"]) - {"images_per_s"}  # a timing: the one value the two runs differ in
    logged = {key for row in session.history.values() for key in row if not key.startswith("_")}
    assert logged == tags | {"images_per_s", "samples"}
    for tag in tags:
        steps, values = zip(*session.scalars(tag))
        assert steps == tuple(e.step for e in events.Scalars(tag)), tag
        assert values == pytest.approx([e.value for e in events.Scalars(tag)], rel=1e-6), tag
    assert [step for step, _ in session.scalars("images_per_s")] == [2, 4]

    grids = events.Images("samples")
    assert [step for step, _ in session.scalars("samples")] == [g.step for g in grids] == [2, 4]
    for (step, image), grid in zip(session.scalars("samples"), grids):
        assert image["_type"] == "image-file"
        with Image.open(session.folder / "files" / image["path"]) as logged_image:
            pixels = np.asarray(logged_image.convert("RGB"), dtype=int)
        with Image.open(tmp_path / "wb" / "samples" / f"step_{step:07d}.png") as saved:
            assert np.array_equal(pixels, np.asarray(saved.convert("RGB"), dtype=int))  # the run's PNG
        with Image.open(io.BytesIO(grid.encoded_image_string)) as board_image:
            assert np.abs(pixels - np.asarray(board_image.convert("RGB"), dtype=int)).max() <= 1  # TB truncates


def test_evaluations_reach_wandb_under_eval(tmp_path):
    """The evaluator's numbers at the evaluation steps, as in eval.jsonl."""
    from ddpm_lib.data import make_shapes

    run(tmp_path, 4, {2: 5.0, 4: 3.0}, logger="wandb").fit(make_shapes(24, size=16, seed=1)[0])
    (session,) = sessions(tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert session.scalars("eval/fid") == [(e["step"], e["fid"]) for e in lines] == [(2, 5.0), (4, 3.0)]
    assert session.scalars("eval/eval_s") == [(2, 0.25), (4, 0.25)]


def test_a_resume_continues_the_wandb_run_in_a_new_session(tmp_path, images):
    """A run killed after step 4 whose last checkpoint is step 2, then resumed: one W&B run id throughout; the
    resumed session logs steps 3 and 4 with the resumed run's losses, and the interrupted session's file keeps
    its own (W&B has no purge); loss.jsonl holds each step once."""
    started = make_trainer(tmp_path, train_steps=2, logger="wandb", log_every=1).fit(images)
    shutil.copy(tmp_path / "checkpoint.pt", tmp_path / "step2.pt")
    interrupted = Trainer.load(tmp_path, device="cpu", train_steps=4).fit(images)
    shutil.copy(tmp_path / "step2.pt", tmp_path / "checkpoint.pt")  # ... but its checkpoint is lost
    resumed = Trainer.load(tmp_path, device="cpu", train_steps=4).fit(images)
    first, lost, last = sessions(tmp_path)
    assert first.run.run_id == lost.run.run_id == last.run.run_id
    assert first.scalars("loss") == started.history and [s for s, _ in started.history] == [1, 2]
    assert lost.scalars("loss") == interrupted.history and [s for s, _ in resumed.history] == [3, 4]
    assert last.scalars("loss") == resumed.history
    assert len((tmp_path / "loss.jsonl").read_text().splitlines()) == 4
    make_trainer(tmp_path, train_steps=1, logger="wandb").fit(images)  # a new run in the same folder: a new id
    assert sessions(tmp_path)[-1].run.run_id != first.run.run_id


def test_a_wandb_run_of_the_callers_stays_open(tmp_path, images):
    """Training with logger="wandb" neither logs into nor finishes a W&B run the caller has open, and leaves the
    service it needs running."""
    (tmp_path / "mine").mkdir()
    mine = wandb.init(mode="offline", dir=tmp_path / "mine", project="mine",
                      settings=wandb.Settings(silent=True, console="off"))
    try:
        make_trainer(tmp_path / "run", train_steps=2, logger="wandb").fit(images)
        assert wandb.run is mine and wandb_children()
        mine.log({"x": 1.0}, step=1)
    finally:
        mine.finish()
        wandb.teardown()
    (session,) = sessions(tmp_path / "mine")
    assert session.scalars("x") == [(1, 1.0)] and "loss" not in session.history.get(1, {})


def test_a_missing_wandb_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ImportError, match=r"needs the wandb package: pip install 'ddpm_lib\[wandb\]'"):
        check_logger("wandb")
