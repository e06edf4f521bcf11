"""Nothing lost, nothing mixed: atomic writes that never delete what nbft did not write, one writer per run
directory, checkpoints verified with fallback, leftovers of a kill tidied, the NaN guard, resume of completed and
changed runs, autosave by time, the history line before the observers."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from _train_data import losses, records
from safetensors.torch import load_file

import nbft
from nbft._utils import OWNER_MARKER, atomic_path, replace_folder
from nbft.config import TrainConfig
from nbft.models import tiny_random
from nbft.run_dirs import read_run
from nbft.train import TrainingError, finetune, resume
from nbft.train.checkpoint import list_checkpoints, tidy_checkpoints, verify_checkpoint
from nbft.train.lock import LOCK_NAME, RunInUseError, RunLock

FP32 = {"precision": "fp32"}


def tree(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root`` with (is folder, size, mtime): equal trees mean nothing was written or deleted."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        # a folder's own mtime moves with the lock file that comes and goes: folders count by name only
        out[p.relative_to(root).as_posix()] = (True, 0, 0) if p.is_dir() else (False, st.st_size, st.st_mtime_ns)
    return out


# ------------------------------------------------------------------------------------------------ atomic writes


def test_atomic_path_never_replaces_a_folder_nbft_did_not_write(tmp_path):
    user = tmp_path / "exports"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    for kind, fix in (("file", "is a folder.*Give a file path"), ("dir", "overwrite=True"), (None, "overwrite=True")):
        with pytest.raises(FileExistsError, match=fix) as info, atomic_path(user, kind=kind) as tmp:
            tmp.write_text("x") if kind != "dir" else tmp.mkdir()
        assert "nbft never deletes what it did not write" in str(info.value)
    assert tree(tmp_path) == before, "a refused write leaves no trace"
    with atomic_path(user, overwrite=True) as tmp:  # asked for explicitly
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in user.iterdir()) == [OWNER_MARKER, "new.txt"]


def test_atomic_path_replaces_its_own_folders_and_files_but_never_a_folder_by_a_file(tmp_path):
    target = tmp_path / "out"
    for text in ("one", "two"):  # the second write replaces nbft's own folder
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "a.txt").write_text(text)
    assert (target / "a.txt").read_text() == "two" and (target / OWNER_MARKER).is_file()
    with pytest.raises(FileExistsError, match="is a folder: .*Give a file path"), atomic_path(target) as tmp:
        tmp.write_text("a file where nbft's folder is")
    assert (target / "a.txt").read_text() == "two"
    f = tmp_path / "report.html"
    f.write_text("old")
    with atomic_path(f) as tmp:
        tmp.write_text("new")
    assert f.read_text() == "new"
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "broken") as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "report.html"], "no temporary left"


def test_replace_folder_keeps_a_whole_folder_in_place_at_every_moment(tmp_path, monkeypatch):
    old, new = tmp_path / "step-000001", tmp_path / ".new"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        (folder / "w").write_text(text)
    calls = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append((a, b)) or real_replace(a, b))
    replace_folder(new, old)
    assert (old / "w").read_text() == "new" and not new.exists()
    if sys.platform.startswith("linux"):
        assert calls == [], "Linux swaps the two folders in one step (renameat2), never leaving a gap"


def test_run_save_into_its_run_directory_is_refused_and_deletes_nothing(tmp_path):
    model, tok = tiny_random("llama")
    run = finetune(model, tok, records(8), config=TrainConfig(max_steps=1, **FP32), run_dir=tmp_path / "r")
    before = tree(tmp_path)
    with pytest.raises(FileExistsError, match="is a run directory: save the model into a folder of its own"):
        run.save(run.run_dir)
    with pytest.raises(FileExistsError, match="is a run directory"):
        run.save(run.run_dir, overwrite=True)  # not even with overwrite: a run directory is never a model folder
    assert tree(tmp_path) == before
    run.save()  # the default, <run_dir>/model, is nbft's own folder: saved again
    assert (tmp_path / "r" / "model" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ one writer


class Gate:
    """Holds a run inside step ``at`` until released (the test needs it training while it tries things)."""

    def __init__(self, at: int = 1) -> None:
        self.at, self.inside, self.release = at, threading.Event(), threading.Event()

    def on_step(self, state):
        if state.step == self.at:
            self.inside.set()
            self.release.wait(60)


def test_one_writer_per_run_directory_and_one_run_per_model(tmp_path):
    model, tok = tiny_random("llama")
    gate = Gate()
    cfg = TrainConfig(max_steps=3, batch_size=4, save_every=1, **FP32)
    run = finetune(model, tok, records(8), config=cfg, run_dir=tmp_path / "r", observers=[gate], background=True)
    try:
        assert gate.inside.wait(60)
        lock = json.loads((tmp_path / "r" / LOCK_NAME).read_text())
        assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname() and lock["os_lock"] is True
        other, tok2 = tiny_random("llama")
        with pytest.raises(RunInUseError, match="being written by this process .*run.stop"):
            finetune(other, tok2, records(8), config=cfg, run_dir=tmp_path / "r")
        with pytest.raises(RunInUseError, match="being written by this process"):
            resume(tmp_path / "r")
        with pytest.raises(RuntimeError, match="already being trained by the run in .*copy.deepcopy"):
            finetune(model, tok, records(8), config=cfg, run_dir=tmp_path / "elsewhere")
        assert not (tmp_path / "elsewhere").exists(), "a refused run leaves no folder"
        assert nbft.runs(tmp_path).set_index("run").status["r"] == "running"
    finally:
        gate.release.set()
        run.wait(60)
    assert run.status == "completed" and not (tmp_path / "r" / LOCK_NAME).exists()
    # the model is free again once its run ended
    again = finetune(model, tok, records(8), config=TrainConfig(max_steps=1, **FP32), run_dir=tmp_path / "r2")
    assert again.status == "completed"


HOLD = """
import sys, time
from nbft.train.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_run_directory_locked_by_another_process_is_refused_naming_it(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"config": {}}))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert read_run(run_dir).status == "running", "nbft.runs() sees the other process's run as running"
        with pytest.raises(RunInUseError, match=rf"process {holder.pid} on {socket.gethostname()}"):
            RunLock(run_dir).acquire()
        model, tok = tiny_random("llama")
        with pytest.raises(RunInUseError, match=f"process {holder.pid}"):
            finetune(model, tok, records(8), config=TrainConfig(max_steps=1), run_dir=run_dir)
    finally:
        holder.kill()
        holder.wait()
    # kill -9 leaves the file, but not the OS lock: the next writer takes it, and runs() no longer says running
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == holder.pid
    assert read_run(run_dir).status == "not started"
    with RunLock(run_dir) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (run_dir / LOCK_NAME).exists()


def test_a_lock_without_os_lock_support_falls_back_to_the_pid(tmp_path, monkeypatch):
    monkeypatch.setattr("nbft.train.lock._flock", lambda fd: None)  # a file system without flock
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        body = {"pid": sleeper.pid, "host": socket.gethostname(), "started": "2026-11-27T10:00:00"}
        (run_dir / LOCK_NAME).write_text(json.dumps(body))
        with pytest.raises(RunInUseError, match=f"process {sleeper.pid} .* since 2026-11-27T10:00:00"):
            RunLock(run_dir).acquire()
        (run_dir / LOCK_NAME).write_text(json.dumps({**body, "host": "another-machine"}))
        with pytest.raises(RunInUseError, match="if that process no longer runs, delete .*run.lock"):
            RunLock(run_dir).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
    RunLock(run_dir).acquire().release()  # a stale lock: its process is gone


def test_a_run_directory_holding_another_run_is_not_overwritten(tmp_path):
    model, tok = tiny_random("llama")
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"config": {"learning_rate": 0.1}}))
    (run_dir / "history.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2.0}\n')
    (run_dir / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(FileExistsError, match=r"already holds a run \(history.jsonl with 1 step.*overwrite=True"):
        finetune(model, tok, records(8), config=TrainConfig(max_steps=1, **FP32), run_dir=run_dir)
    assert tree(tmp_path) == before
    with pytest.raises(ValueError, match="no labelled token"):  # bad data: the earlier run keeps its files
        finetune(model, tok, [{"input_ids": [1, 2], "labels": [-100, -100]}], run_dir=run_dir, overwrite=True)
    assert tree(tmp_path) == before
    run = finetune(model, tok, records(8), config=TrainConfig(max_steps=1, **FP32), run_dir=run_dir, overwrite=True)
    assert run.status == "completed" and (run_dir / "notes.txt").read_text() == "mine", "only nbft's files go"
    assert [json.loads(ln)["step"] for ln in (run_dir / "history.jsonl").read_text().splitlines()] == [1]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="is a file; give a folder"):
        finetune(model, tok, records(8), config=TrainConfig(max_steps=1), run_dir=tmp_path / "afile")


def _users_folder(root: Path) -> Path:
    """A folder of the user's own: notes beside a ``data/`` and a ``tokenizer/`` subfolder of theirs."""
    (root / "data").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    (root / "notes.txt").write_text("mine")
    (root / "data" / "reviews.csv").write_text("text,label\ngood,positive\n")
    (root / "tokenizer" / "tokenizer.json").write_text('{"my": "tokenizer"}')
    return root


def test_a_run_never_lands_in_a_folder_holding_the_users_files(tmp_path):
    model, tok = tiny_random("llama")
    folder = _users_folder(tmp_path / "project")
    before = tree(tmp_path)
    for overwrite in (False, True):  # overwrite=True replaces an earlier run, never a folder of the user's
        with pytest.raises(FileExistsError, match=r"holds files that are not an nbft run \(data/, notes.txt, "
                           r"tokenizer/\): a run needs an empty or new folder.*run-1"):  # fmt: skip
            finetune(model, tok, records(8), config=TrainConfig(max_steps=1, **FP32), run_dir=folder,
                     overwrite=overwrite)  # fmt: skip
        assert tree(tmp_path) == before, "nothing written, nothing deleted"
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine
    run = finetune(model, tok, records(8), config=TrainConfig(max_steps=1, **FP32), run_dir=empty)
    assert run.status == "completed" and (empty / "data" / "train.safetensors").is_file()


def test_what_a_run_killed_during_setup_left_is_nbfts_not_the_users(tmp_path):
    from nbft.train.guard import foreign_entries

    run_dir = tmp_path / "r"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "tokenizer").mkdir()
    (run_dir / "data" / "train.safetensors").write_bytes(b"x")  # killed before run.json: a new run may go here
    (run_dir / "tokenizer" / "tokenizer.json").write_text("{}")
    (run_dir / ".run.json.abcd1234").write_text("{")  # an atomic write's temporary
    assert foreign_entries(run_dir) == []
    (run_dir / "tokenizer" / "my-notes.txt").write_text("mine")
    assert foreign_entries(run_dir) == ["tokenizer/"]
    (run_dir / "data" / "train.safetensors").unlink()  # a tokenizer/ folder alone is the user's
    (run_dir / "tokenizer" / "my-notes.txt").unlink()
    assert foreign_entries(run_dir) == ["data/", "tokenizer/"]
    (run_dir / "model").mkdir()  # a model/ folder nbft did not mark is the user's, not a run
    assert foreign_entries(run_dir) == ["data/", "model/", "tokenizer/"]


def test_overwrite_removes_only_the_runs_files(tmp_path, caplog):
    model, tok = tiny_random("llama")
    run_dir = tmp_path / "r"
    finetune(model, tok, records(8), config=TrainConfig(max_steps=1, **FP32), run_dir=run_dir)
    assert (run_dir / "tokenizer").is_dir() and (run_dir / "model" / OWNER_MARKER).is_file()
    (run_dir / "notes.txt").write_text("beside the run")
    (run_dir / "data" / "my-labels.csv").write_text("inside its data folder")
    (run_dir / "tokenizer" / "README.txt").write_text("inside its tokenizer folder")
    old = {p: p.stat().st_mtime_ns for p in (run_dir / "data").iterdir()}
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        run = finetune(model, tok, records(8), config=TrainConfig(max_steps=1, **FP32), run_dir=run_dir,
                       overwrite=True)  # fmt: skip
    assert run.status == "completed"
    assert (run_dir / "notes.txt").read_text() == "beside the run"
    assert (run_dir / "data" / "my-labels.csv").read_text() == "inside its data folder"
    assert (run_dir / "tokenizer" / "README.txt").read_text() == "inside its tokenizer folder"
    fresh = run_dir / "data" / "train.safetensors"
    assert fresh.stat().st_mtime_ns != old[fresh], "the run's own data file was written anew"
    said = "\n".join(r.getMessage() for r in caplog.records if "overwrite=True" in r.getMessage())
    assert "data/train.safetensors" in said and "model/" in said, said
    assert "kept what nbft did not write: data/my-labels.csv, tokenizer/README.txt" in said, said


# ------------------------------------------------------------------------------------------------ checkpoints

CFG = {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-3, "keep_last": 3, **FP32}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped at step 4 with checkpoints at steps 2, 3, 4, and the losses of the same run uninterrupted."""
    root = tmp_path_factory.mktemp("runs")
    model, tok = tiny_random("llama", seed=1)
    whole = finetune(model, tok, records(), config=TrainConfig(**CFG), run_dir=root / "whole")

    class StopAt4:
        def on_step(self, state):
            if state.step == 4:
                raise nbft.StopTraining

    model, tok = tiny_random("llama", seed=1)
    cfg = TrainConfig(**CFG, save_every=1)
    stopped = finetune(model, tok, records(), config=cfg, run_dir=root / "stopped", observers=[StopAt4()])
    assert stopped.status == "stopped"
    assert [p.name for p in list_checkpoints(root / "stopped")] == ["step-000002", "step-000003", "step-000004"]
    return root / "stopped", losses(whole)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for i in range(header, len(data), max(1, (len(data) - header) // 1000)):  # ~1000 bytes of the weights
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": (lambda c: _truncate(c / "model" / "model.safetensors"), "model/model.safetensors has"),
    "truncated optimizer": (lambda c: _truncate(c / "optimizer.safetensors"), "optimizer.safetensors has"),
    "0-byte rng file": (lambda c: (c / "rng.safetensors").write_bytes(b""), "rng.safetensors has 0 bytes"),
    "missing state.json": (lambda c: (c / "state.json").unlink(), "state.json is missing"),
    "truncated state.json": (lambda c: _truncate(c / "state.json"), "state.json has"),
    "empty folder": (lambda c: [shutil.rmtree(c), c.mkdir()], "the folder is empty"),
    "missing config.json": (lambda c: (c / "model" / "config.json").unlink(), "model/config.json is missing"),
    "flipped bytes in the weights": (lambda c: _flip(c / "model" / "model.safetensors"), "checksum"),
    "damaged manifest": (lambda c: (c / "manifest.json").write_text("{"), "manifest.json is damaged"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_skips_a_damaged_newest_checkpoint_and_says_why(damage, stopped_run, tmp_path, caplog):
    source, whole = stopped_run
    run_dir = tmp_path / "r"
    shutil.copytree(source, run_dir)
    harm, reason = DAMAGE[damage]
    newest = run_dir / "checkpoints" / "step-000004"
    harm(newest)
    assert reason in verify_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        run = resume(run_dir)
    assert run.status == "completed"
    assert [p.name for p, _ in run.skipped_checkpoints] == ["step-000004"]
    assert reason in run.skipped_checkpoints[0][1]
    assert "skipped checkpoint step-000004" in caplog.text and "resuming from step-000003" in caplog.text
    assert losses(run) == whole, "continued from step 3: the same curve as the uninterrupted run"
    assert (run_dir / "checkpoints" / "step-000004.damaged").is_dir(), "set aside, not deleted"


def test_resume_with_every_checkpoint_damaged_says_so(stopped_run, tmp_path):
    source, _ = stopped_run
    run_dir = tmp_path / "r"
    shutil.copytree(source, run_dir)
    for c in list_checkpoints(run_dir):
        (c / "rng.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from .none is intact: step-000004: rng"):
        resume(run_dir)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000002", "step-000003", "step-000004"]


def test_leftovers_of_a_killed_save_are_tidied_and_a_whole_one_restored(stopped_run, tmp_path, caplog):
    source, whole = stopped_run
    run_dir = tmp_path / "r"
    shutil.copytree(source, run_dir)
    ck = run_dir / "checkpoints"
    # A kill between the two renames of a re-save (keep_last=1, no renameat2): the final name is missing, the old
    # copy sits moved aside and the new one in its temporary folder.
    (ck / "step-000004").rename(ck / ".step-000004.old-123")
    shutil.copytree(ck / ".step-000004.old-123", ck / ".step-000004.abcd1234" / "step-000004")
    (ck / ".step-000003.zz_9abcd").mkdir()  # a save killed half way: incomplete, removed
    (ck / ".step-000003.zz_9abcd" / "state.json").write_text("{")
    (ck / "notes.txt").write_text("mine")  # not nbft's: never touched
    (ck / ".step-mine").mkdir()
    (run_dir / ".history.jsonl.k2j4h5g6").mkdir()  # an interrupted rewrite of the history
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        run = resume(run_dir)
    assert run.status == "completed" and losses(run) == whole
    assert run.skipped_checkpoints == [] and "restored step-000004" in caplog.text
    names = sorted(p.name for p in ck.iterdir())
    assert ".step-000003.zz_9abcd" not in names and ".step-000004.abcd1234" not in names
    assert "notes.txt" in names and ".step-mine" in names
    assert not (run_dir / ".history.jsonl.k2j4h5g6").exists()
    assert tidy_checkpoints(run_dir) == []


# ------------------------------------------------------------------------------------------------ resume


def test_resume_of_a_completed_run_needs_more_steps(tmp_path):
    model, tok = tiny_random("llama")
    cfg = TrainConfig(max_steps=3, batch_size=4, **FP32)
    finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r")
    before = tree(tmp_path)
    with pytest.raises(ValueError, match="has completed .*more_steps=N"):
        resume(tmp_path / "r")
    assert tree(tmp_path) == before, "model/ is not retrained nor overwritten"
    more = resume(tmp_path / "r", more_steps=2)
    assert more.status == "completed" and [h["step"] for h in more.history if h["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["max_steps"] == 5
    assert read_run(tmp_path / "r").status == "completed"
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="more_steps must be a positive integer"):
            resume(tmp_path / "r", more_steps=bad)


def test_resume_after_a_torn_history_line_keeps_every_line_readable(stopped_run, tmp_path):
    source, whole = stopped_run
    run_dir = tmp_path / "r"
    shutil.copytree(source, run_dir)
    with (run_dir / "history.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 5, "lo')  # a kill in the middle of a line
    run = resume(run_dir)
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line parses
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert losses(run) == whole


def test_the_run_model_folder_of_an_older_nbft_is_still_replaced_by_its_run(tmp_path):
    model, tok = tiny_random("llama")
    run = finetune(model, tok, records(8), config=TrainConfig(max_steps=1, **FP32), run_dir=tmp_path / "r")
    (tmp_path / "r" / "model" / OWNER_MARKER).unlink()  # as written before folders were marked
    run.save()
    assert (tmp_path / "r" / "model" / OWNER_MARKER).is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="did not write.*overwrite=True"):
        run.save(mine)
    assert (mine / "notes.txt").read_text() == "x"
    run.save(mine, overwrite=True)  # asked for explicitly
    assert (mine / "model.safetensors").is_file() and not (mine / "notes.txt").exists()


def test_resume_refuses_a_changed_config_unless_allowed(stopped_run, tmp_path, caplog):
    source, _ = stopped_run
    run_dir = tmp_path / "r"
    shutil.copytree(source, run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    meta["config"]["learning_rate"] = 0.5
    (run_dir / "run.json").write_text(json.dumps(meta))
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=r"learning_rate: 0.001 -> 0.5.*allow_config_change=True"):
        resume(run_dir)
    assert tree(tmp_path) == before
    with caplog.at_level(logging.WARNING, logger="nbft.train"):
        run = resume(run_dir, allow_config_change=True)
    assert run.status == "completed" and run.config.learning_rate == 0.5
    assert "continuing with a changed config (learning_rate: 0.001 -> 0.5)" in caplog.text


def test_resume_reports_a_damaged_run_json(stopped_run, tmp_path):
    source, _ = stopped_run
    run_dir = tmp_path / "r"
    shutil.copytree(source, run_dir)
    (run_dir / "run.json").write_text('{"config": {"learning_')
    with pytest.raises(ValueError, match="run.json is damaged .*Restore it"):
        resume(run_dir)
    (run_dir / "run.json").write_text(json.dumps({"config": {"learning_rate": "fast"}, "kind": "causal"}))
    with pytest.raises(ValueError, match="holds a config that is not valid: TrainConfig.learning_rate"):
        resume(run_dir)


# ------------------------------------------------------------------------------------------------ guards


def test_non_finite_weights_are_never_saved_as_a_good_checkpoint(tmp_path):
    model, tok = tiny_random("llama")

    class Poison:  # reaches into the model on purpose, after step 2's update, before its checkpoint
        def on_step(self, state):
            if state.step == 2:
                with torch.no_grad():
                    model.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")

    cfg = TrainConfig(max_steps=5, batch_size=4, save_every=1, **FP32)
    with pytest.raises(TrainingError, match="weights became non-finite .* by step 2.*step-000001.*learning_rate"):
        finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[Poison()])
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-000001"]
    saved = load_file(tmp_path / "r" / "checkpoints" / "step-000001" / "model" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert not (tmp_path / "r" / "model").exists()


def test_a_learning_rate_that_saturates_the_model_is_detected(tmp_path):
    model, tok = tiny_random("llama")
    cfg = TrainConfig(max_steps=9, batch_size=4, learning_rate=1e6, **FP32)
    with pytest.raises(TrainingError, match=r"gradient was exactly 0 for 3 steps .*learning_rate=1e\+06.*lower"):
        finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r")
    assert not (tmp_path / "r" / "model").exists(), "no completed model from a dead run"


def test_autosave_by_time_writes_checkpoints_without_save_every(tmp_path):
    model, tok = tiny_random("llama")
    cfg = TrainConfig(max_steps=3, batch_size=4, save_every_minutes=1e-9, keep_last=5, **FP32)
    finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r")
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-000001", "step-000002", "step-000003"]
    assert TrainConfig().save_every_minutes == 10.0, "on by default: a crash loses at most ten minutes"
    cfg = TrainConfig(max_steps=3, batch_size=4, save_every_minutes=None, **FP32)
    finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "off")
    assert [p.name for p in list_checkpoints(tmp_path / "off")] == ["step-000003"]  # the final one only


def test_the_history_line_is_written_before_a_hanging_observer_runs(tmp_path):
    model, tok = tiny_random("llama")
    gate = Gate(at=2)
    cfg = TrainConfig(max_steps=3, batch_size=4, **FP32)
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[gate], background=True)
    try:
        assert gate.inside.wait(60)
        lines = (tmp_path / "r" / "history.jsonl").read_text().splitlines()
        assert [json.loads(ln)["step"] for ln in lines] == [1, 2]
    finally:
        gate.release.set()
        run.wait(60)


def test_finetune_and_resume_show_no_library_progress_bars(tmp_path, capfd):
    model, tok = tiny_random("llama")
    import datasets

    data = nbft.tokenize_for_training(datasets.Dataset.from_list(records(8)), tok, max_length=64)  # not finetune's
    capfd.readouterr()
    finetune(model, tok, records(8), config=TrainConfig(max_steps=2, batch_size=4), run_dir=tmp_path / "r")
    err = capfd.readouterr().err
    assert "%|" not in err and "Writing model shards" not in err, err[-500:]
    assert len(data) == 8
