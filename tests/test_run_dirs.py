"""nbft.runs() and friends: find runs on disk, tell their status from the files, never write to them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import nbft
from nbft.models import tiny_random
from nbft.run_dirs import config_diff, free_memory, live_runs, load_history, memory_report, read_run, stop_run
from nbft.train import StopTraining, TrainConfig, finetune


def _pairs(n: int = 16) -> list[dict[str, str]]:
    return [{"prompt": f"Repeat {i}.\n", "completion": str(i)} for i in range(n)]


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, state) -> None:
        if state.step == self.step:
            raise StopTraining


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """runs/: one completed, one stopped, one interrupted (kill after a checkpoint), one without checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    model, tok = tiny_random("llama")
    finetune(model, tok, _pairs(), config=TrainConfig(max_steps=2, batch_size=4), run_dir=root / "done")
    model, tok = tiny_random("llama")
    cfg = TrainConfig(max_steps=6, batch_size=4, learning_rate=3e-4)
    finetune(model, tok, _pairs(), val=_pairs(4), config=cfg, observers=[StopAt(3)], run_dir=root / "stopped")
    # "interrupted": a copy of the stopped run whose history goes on past its checkpoint, as when a kernel dies
    shutil.copytree(root / "stopped", root / "interrupted")
    lines = (root / "interrupted" / "history.jsonl").read_text().splitlines()
    last = json.loads([ln for ln in lines if '"train"' in ln][-1])
    extra = [{**last, "step": last["step"] + k, "loss": last["loss"] - 0.01 * k} for k in (1, 2)]
    with (root / "interrupted" / "history.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in extra) + '{"kind": "train", "step": 6, "lo')  # torn line
    # "nocheck": history but no checkpoint (no save_every, and the process died)
    shutil.copytree(root / "interrupted", root / "nested" / "nocheck")
    shutil.rmtree(root / "nested" / "nocheck" / "checkpoints")
    (root / "empty").mkdir()
    (root / "empty" / "run.json").write_text((root / "done" / "run.json").read_text())
    (root / "not-a-run").mkdir()
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_runs_lists_every_run_with_its_status_and_writes_nothing(folder):
    before = _snapshot(folder)
    table = nbft.runs(folder)
    assert _snapshot(folder) == before, "listing runs must not write"
    status = dict(zip(table.run, table.status))
    assert status == {
        "done": "completed",
        "stopped": "stopped",
        "interrupted": "interrupted",
        "nocheck": "no checkpoint",
        "empty": "not started",
    }
    resumable = dict(zip(table.run, table.resumable))
    assert resumable == {"done": False, "stopped": True, "interrupted": True, "nocheck": False, "empty": False}
    row = table.set_index("run").loc["stopped"]
    history = load_history(folder / "stopped")
    train = [h for h in history if h["kind"] == "train"]
    assert (row.step, row.of, row.checkpoint) == (3, 6, 3)
    assert row.loss == pytest.approx(train[-1]["loss"])
    assert row.val_loss is None or row.val_loss != row.val_loss  # no eval configured
    inter = table.set_index("run").loc["interrupted"]
    assert (inter.step, inter.checkpoint) == (5, 3), "the torn last line is skipped, the two extra steps count"
    assert list(table.columns[:5]) == ["run", "status", "step", "of", "loss"]


def test_runs_names_the_fix_for_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass the folder that holds your run directories"):
        nbft.runs(tmp_path / "nope")


def test_read_run_refuses_a_folder_that_is_not_a_run(folder):
    with pytest.raises(FileNotFoundError, match="not an nbft run directory"):
        read_run(folder / "not-a-run")
    info = read_run(folder / "interrupted")
    assert info.checkpoint == folder / "interrupted" / "checkpoints" / "step-000003"
    assert info.config["max_steps"] == 6 and info.config["learning_rate"] == 3e-4


def test_a_live_run_is_running_and_stop_run_stops_it(tmp_path):
    model, tok = tiny_random("llama")
    at_step, release = threading.Event(), threading.Event()

    class Hold:
        def on_step(self, state) -> None:
            if state.step == 2:
                at_step.set()
                release.wait(30)

    run = finetune(
        model, tok, _pairs(), config=TrainConfig(max_steps=50, batch_size=4), observers=[Hold()],
        run_dir=tmp_path / "live", background=True,
    )  # fmt: skip
    try:
        assert at_step.wait(60)
        assert run in live_runs()
        assert nbft.runs(tmp_path).status.tolist() == ["running"]
        with pytest.raises(LookupError, match="no training run matches 'other'"):
            stop_run("other")
        assert stop_run("live") is run
    finally:
        release.set()
        run.wait(60)
    assert run.status == "stopped"
    assert nbft.runs(tmp_path).status.tolist() == ["stopped"]
    with pytest.raises(LookupError, match="no run is training"):
        stop_run()


def test_a_lock_held_by_a_live_process_means_running(folder, tmp_path):
    run_dir = tmp_path / "locked"
    shutil.copytree(folder / "stopped", run_dir)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / "run.lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        assert read_run(run_dir).status == "running"
        (run_dir / "run.lock").write_text(json.dumps({"pid": sleeper.pid, "host": "another-machine"}))
        assert read_run(run_dir).status == "stopped", "a PID on another host says nothing about this one"
    finally:
        sleeper.kill()
        sleeper.wait()
    (run_dir / "run.lock").write_text(f"{sleeper.pid} {socket.gethostname()}\n")
    assert read_run(run_dir).status == "stopped", "a stale lock of a dead process"


def test_an_os_level_lock_means_running(folder, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    run_dir = tmp_path / "flocked"
    shutil.copytree(folder / "stopped", run_dir)
    code = (
        "import fcntl, sys, time\n"
        f"f = open({str(run_dir / '.lock')!r}, 'w'); fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert read_run(run_dir).status == "running"
    finally:
        holder.kill()
        holder.wait()
    assert read_run(run_dir).status == "stopped"
    assert fcntl is not None


def test_config_diff_lists_only_the_settings_that_differ():
    diff = config_diff(
        {"a": {"learning_rate": 1e-4, "seed": 0, "extra": {"x": 1}}, "b": {"learning_rate": 3e-4, "seed": 0}}
    )
    assert list(diff.index) == ["extra.x", "learning_rate"]
    assert diff.loc["learning_rate"].tolist() == [1e-4, 3e-4]
    assert diff.loc["extra.x", "b"] is None


def test_memory_report_names_the_variables_that_hold_a_model():
    model, _ = tiny_random("llama")
    namespace = {"base": model, "pair": (model, None), "other": 3}
    report = memory_report(namespace)
    mine = report[report.held_by.str.contains("base")]
    assert len(mine) == 1 and "pair[…]" in mine.held_by.iloc[0]
    assert mine.MiB.iloc[0] > 0 and mine.device.iloc[0] == "cpu"
    freed = free_memory()
    assert set(freed) == {"before", "after"} and freed["after"][0]["device"] in ("cpu", "cuda:0")
    assert os.environ.get("NBFT_CACHE")  # the autouse fixture keeps tests off the shared cache
