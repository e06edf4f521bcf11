"""Bad inputs, round 3: the last silent results and raw library exceptions become clear nbft errors.

Each test runs in a workspace holding a user's files and checks that nothing outside what the call may write was
written or deleted. The disk-full test runs on a real, small tmpfs where the machine lets us mount one (skipped with
the reason where it does not); the read-only disk is simulated by injecting the OSError at the writes, because a
file system cannot be remounted read-only while the run's lock file is open for writing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest
from _train_data import records
from test_bad_inputs import _tree  # one tree snapshot for both catalogues

import nbft
from nbft.config import TrainConfig
from nbft.evaluate import Task, TaskError
from nbft.models import tiny_random
from nbft.train import finetune, resume
from nbft.train.checkpoint import list_checkpoints, verify_checkpoint
from nbft.train.lock import RunLock

# ------------------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def only_writes(ws: Path, *allowed: str) -> Iterator[None]:
    """Nothing under ``ws`` changes except paths under ``allowed`` (relative to ``ws``)."""
    before = _tree(ws)
    yield
    after = _tree(ws)

    def ok(p: str) -> bool:  # under an allowed path, or a folder above one (made to hold it)
        p = p.rstrip("/")
        return any(p == a or p.startswith(a + "/") or a.startswith(p + "/") for a in allowed)

    changed = [p for p, st in before.items() if after.get(p) != st and not ok(p)]
    created = [p for p in after if p not in before and not ok(p)]
    assert not changed, f"changed or deleted: {changed}"
    assert not created, f"written: {created}"


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "ws"
    (ws / "mine").mkdir(parents=True)
    (ws / "mine" / "notes.txt").write_text("a user's notes")
    monkeypatch.chdir(ws)
    return ws


def cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(**{"max_steps": 1, "batch_size": 4, "precision": "fp32", **kw})


QA = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(40)]


def qa_task(name: str, *, train: list[dict], validation: list[dict], test: list[dict]) -> Task:
    splits = {"train": train, "validation": validation, "test": test}
    data = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
    return Task.from_data(data, "qa/1", name=name)


_STOPPED: dict[str, Path] = {}


def stopped_run(ws: Path) -> Path:
    """A copy in the workspace of a tiny run stopped at step 2 of 4 (checkpoints at steps 1 and 2)."""
    if "run" not in _STOPPED:
        root = Path(tempfile.mkdtemp(prefix="nbft-round3-"))

        class StopAt2:
            def on_step(self, state: Any) -> None:
                if state.step == 2:
                    raise nbft.StopTraining

        finetune(*tiny_random("llama"), records(8), config=cfg(max_steps=4, save_every=1), run_dir=root / "run",
                 observers=[StopAt2()])  # fmt: skip
        _STOPPED["run"] = root / "run"
    target = ws / "runs" / "stopped"
    shutil.copytree(_STOPPED["run"], target)
    return target


# ------------------------------------------------------------------------------------------------ silent -> clear


def test_monitor_records_the_n_it_used_and_warns_once_when_a_split_is_smaller(ws: Path) -> None:
    from nbft.evaluate.monitor import ForgettingMonitor

    big = qa_task("big", train=QA[:10], validation=QA[10:22], test=QA[22:30])  # 12 validation rows
    one = qa_task("one", train=QA[:10], validation=QA[30:31], test=QA[31:40])  # 1 validation row
    model, tok = tiny_random("llama")
    monitor = ForgettingMonitor([big, one], n=100000, samples=0, max_new_tokens=2)
    with only_writes(ws), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.prepare()
        row = monitor.measure(model, tok, 0)
        monitor.prepare()  # a second call (on_train_begin) does not warn again
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(said) == 2, said
    assert re.search(r"task 'big'.*n=100000.*12 examples", said[0]), said[0]
    assert re.search(r"task 'one'.*1 example\b", said[1]), said[1]
    assert row["n"] == {"big": 12, "one": 1}
    assert monitor.warnings == said


def test_forgetting_experiment_refuses_the_target_among_others(ws: Path) -> None:
    for replay in ((0,), (0, 0.1)):
        with only_writes(ws), pytest.raises(ValueError) as info:
            nbft.forgetting_experiment("tiny", target="qa", others=["qa"], replay=replay, out_dir=ws / "exp")
        message = str(info.value)
        assert re.search(r"others=\['qa'\] lists the target 'qa'", message), message
        assert "others=[" in message and "sentiment" in message, message  # the fix: other tasks, by name


# ------------------------------------------------------------------------------------------------ raw -> nbft


def test_load_model_of_a_folder_without_tokenizer_names_the_missing_files(ws: Path) -> None:
    from nbft.models import ModelNotFoundError, load_model

    model, tok = tiny_random("llama")
    folder = ws / "weights-only"
    model.save_pretrained(folder)
    with only_writes(ws), pytest.raises(ModelNotFoundError) as info:
        load_model(folder)
    message = str(info.value)
    assert "sentencepiece" not in message, message
    assert re.search(r"no tokenizer files.*tokenizer\.json.*tokenizer_config\.json", message), message
    assert "tokenizer.save_pretrained(" in message and "tokenizer=" in message, message
    # the fix works: the tokenizer passed along (an object, or the folder it was saved to)
    _, loaded_tok = load_model(folder, tokenizer=tok)
    assert loaded_tok is tok
    tok.save_pretrained(ws / "tok")
    _, from_folder = load_model(folder, tokenizer=ws / "tok")
    assert from_folder("hello")["input_ids"] == tok("hello")["input_ids"]


def test_estimate_on_cuda_without_cuda_says_so(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only torch, on any machine
    model, _ = tiny_random("llama")
    with only_writes(ws), pytest.raises(ValueError) as info:
        nbft.estimate(model, cfg(), device="cuda")
    message = str(info.value)
    assert re.search(r"device='cuda'.*no CUDA.*device='cpu'", message), message


def _fill(disk: Path) -> Path:
    """Fill the file system holding ``disk`` with a user's file (what a full disk looks like to a run)."""
    filler = disk / "filler.bin"
    chunk = 1 << 20
    with filler.open("wb", buffering=0) as f:  # unbuffered: each write meets the full disk itself
        while chunk >= 512:
            try:
                f.write(b"\0" * chunk)
            except OSError:
                chunk //= 2
    return filler


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8); the injected-error tests cover this path")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs ({done.stderr.decode().strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _resume_message(message: str, step: int, kept: int, run_dir: Path) -> None:
    assert f"step {step}" in message, message
    assert re.search(rf"nothing was lost.*step-{kept:06d}.*intact", message, re.I | re.S), message
    assert f"nbft.resume('{run_dir}')" in message, message
    assert "run.lock" not in message, message


def test_disk_full_during_a_checkpoint_loses_nothing_and_says_how_to_resume(ws: Path) -> None:
    with small_disk(ws / "disk", "48m") as disk:
        run_dir = disk / "run"
        filled: list[Path] = []

        class FillAfterFirstSave:
            def on_save(self, path: Path) -> None:
                if not filled:
                    filled.append(_fill(disk))

        with pytest.raises(OSError) as info:
            finetune(*tiny_random("llama"), records(8), config=cfg(max_steps=6, save_every=2), run_dir=run_dir,
                     observers=[FillAfterFirstSave()])  # fmt: skip
        message = str(info.value)
        assert re.search(r"could not write the checkpoint of step 4.*No space left on device", message), message
        _resume_message(message, 4, 2, run_dir)
        assert [p.name for p in list_checkpoints(run_dir)] == ["step-000002"]
        assert verify_checkpoint(run_dir / "checkpoints" / "step-000002") is None
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002"]  # no half checkpoint
        assert not (run_dir / "run.lock").exists()
        filled[0].unlink()  # the user frees space; the advice works
        done = resume(run_dir)
        assert done.status == "completed" and done.summary["steps"] == 6


@pytest.mark.parametrize("kind", ["read-only", "disk full"])
def test_a_failed_checkpoint_write_is_not_masked_by_the_lock_release(
    ws: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The first error is the one reported (the lock file cannot be removed from a read-only disk either)."""
    import pathlib

    from safetensors import SafetensorError

    import nbft.train.checkpoint as checkpoint

    run_dir = ws / "runs" / "r"
    broken: list[bool] = []
    real_mkdtemp, real_unlink, real_save = tempfile.mkdtemp, pathlib.Path.unlink, checkpoint.save_file

    def mkdtemp(*a: Any, **kw: Any) -> str:
        if broken and kind == "read-only" and str(run_dir) in str(kw.get("dir", "")):
            raise OSError(errno.EROFS, "Read-only file system", str(kw["dir"]))
        return real_mkdtemp(*a, **kw)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if broken and kind == "read-only" and run_dir in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_unlink(self, missing_ok=missing_ok)

    def save_file(*a: Any, **kw: Any) -> None:
        if broken and kind == "disk full":
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                                  'space left on device" })')  # fmt: skip
        real_save(*a, **kw)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    monkeypatch.setattr(checkpoint, "save_file", save_file)

    class BreakAfterFirstSave:
        def on_save(self, path: Path) -> None:
            broken.append(True)

    with only_writes(ws, "runs/r"), pytest.raises(OSError) as info:
        finetune(*tiny_random("llama"), records(8), config=cfg(max_steps=6, save_every=2), run_dir=run_dir,
                 observers=[BreakAfterFirstSave()])  # fmt: skip
    message = str(info.value)
    assert re.search(r"could not write the checkpoint of step 4", message), message
    assert ("Read-only file system" if kind == "read-only" else "No space left on device") in message, message
    _resume_message(message, 4, 2, run_dir)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-000002"]
    assert verify_checkpoint(run_dir / "checkpoints" / "step-000002") is None
    broken.clear()  # the disk is writable again: the advice works
    done = resume(run_dir)
    assert done.status == "completed" and done.summary["steps"] == 6


def test_pickled_weights_are_refused_with_the_reason_and_the_conversion(ws: Path) -> None:
    import numpy as np
    import torch

    from nbft.models import UnsafeWeightsError, load_model

    model, tok = tiny_random("llama")
    folder = ws / "pickled"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    state = dict(model.state_dict())
    state["numpy_extra"] = np.zeros(3)  # an object a weights-only load refuses
    torch.save(state, folder / "pytorch_model.bin")
    with only_writes(ws), pytest.raises(UnsafeWeightsError) as info:
        load_model(folder)
    message = str(info.value)
    code = "\n".join(ln[4:] for ln in message.splitlines() if ln.startswith("    "))
    prose = "\n".join(ln for ln in message.splitlines() if not ln.startswith("    "))
    assert re.search(r"pickle.*can run arbitrary code", prose, re.S), message
    assert "safetensors" in prose and "weights_only=False" not in prose, message  # not torch's advice
    exec(code, {})  # the two-line conversion it shows works
    assert (folder / "model.safetensors").is_file()
    loaded, _ = load_model(folder)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


# ------------------------------------------------------------------------------------------------ unclear -> clear


def test_eval_with_no_tasks_is_refused_before_training(ws: Path) -> None:
    from nbft.job import ConfigError, load_job

    path = ws / "mine" / "train.yaml"
    path.write_text("model: tiny\ndata: qa\noutput_dir: runs/x\neval:\n  tasks: []\n")
    with only_writes(ws), pytest.raises(ConfigError) as info:
        load_job(path)
    assert re.search(r"eval\.tasks is empty.*tasks: \[sentiment, qa\].*drop eval", str(info.value)), str(info.value)


def test_run_json_written_by_a_newer_nbft_names_the_version(ws: Path) -> None:
    from nbft.run_dirs import read_run

    run_dir = stopped_run(ws)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["nbft"] == nbft.__version__  # every run records the nbft that wrote it
    meta["nbft"] = "9.2.0"
    meta["config"]["a_field_from_the_future"] = 1
    (run_dir / "run.json").write_text(json.dumps(meta))
    fix = rf"written by nbft 9\.2\.0 \(this is {re.escape(nbft.__version__)}\).*pip install -U nbft"
    with only_writes(ws), pytest.raises(ValueError) as info:
        resume(run_dir)
    assert re.search(fix, str(info.value)), str(info.value)
    (run_dir / "run.json").write_text('{"nbft": "9.2.0", "config": "packed in a format from the future"}')
    for call in (lambda: resume(run_dir), lambda: read_run(run_dir)):
        with only_writes(ws), pytest.raises(ValueError) as info:
            call()
        assert re.search(fix, str(info.value)), str(info.value)


def test_compare_on_a_run_still_being_written_names_the_writer(ws: Path) -> None:
    run_dir = ws / "runs" / "busy"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"config": {}}))
    lock = RunLock(run_dir).acquire()  # what a live run holds
    try:
        with only_writes(ws), pytest.raises(nbft.train.lock.RunInUseError) as info:
            nbft.compare({"tuned": str(run_dir)}, ["qa"], n=2, progress=False)
    finally:
        lock.release()
    message = str(info.value)
    assert re.search(rf"still being written by process {os.getpid()} on \S+.*wait for it.*or stop it", message, re.I)
    assert "nbft.resume" not in message, message


def test_launch_checks_output_dir_before_any_process_starts(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbft.launcher as launcher
    from nbft.job import ConfigError

    run_dir = stopped_run(ws)

    def no_process(*a: Any, **kw: Any) -> None:
        raise AssertionError("a process was about to start")

    monkeypatch.setattr(launcher.Launch, "__init__", no_process)
    config = {"model": "tiny", "data": "qa", "output_dir": str(run_dir)}
    with only_writes(ws), pytest.raises(ConfigError) as info:
        nbft.launch(config, num_processes=2)
    assert re.search(r"output_dir .* already holds a run.*--resume", str(info.value)), str(info.value)


def test_k_shot_pool_emptied_by_the_test_split_says_so(ws: Path) -> None:
    task = qa_task("dup", train=QA[:12], validation=QA[12:14], test=QA[:12] + QA[14:20])
    with only_writes(ws), pytest.raises(TaskError) as info:
        nbft.compare({"base": tiny_random("llama")}, [task], icl_shots=(0, 5), n=2, progress=False)
    message = str(info.value)
    assert re.search(r"5-shot.*train split has 12 examples.*all 12 are also in its test split", message), message
    assert "never" in message and "icl_shots" in message, message


def test_dataset_builder_examples_field_gets_the_fields_message(ws: Path) -> None:
    from nbft.widgets import DatasetBuilder

    builder = DatasetBuilder(QA, task="qa", debounce=None)
    builder.n.value = -3
    with only_writes(ws), pytest.raises(ValueError) as info:
        builder.build()
    message = str(info.value)
    assert re.search(r"examples \(0=all\).*-3.*0 = all", message), message
    assert "None" not in message, message
    builder._safely(builder.build)  # the Build button's path shows the same words
    assert "0 = all" in builder.status_label.value
