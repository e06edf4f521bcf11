"""nbft.launch: several worker processes from a notebook, their main worker's events fed to local observers."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from _train_data import records

import nbft
from nbft.config import TrainConfig
from nbft.train import StopTraining


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.seen: list[tuple[str, object]] = []

    def on_train_begin(self, info):
        self.seen.append(("begin", info["world_size"]))

    def on_step(self, state):
        self.seen.append(("step", state.step))
        if self.stop_at is not None and state.step >= self.stop_at:
            raise StopTraining

    def on_phase(self, phase):
        self.seen.append(("phase", phase["phase"]))

    def on_train_end(self, summary):
        self.seen.append(("end", summary["status"]))


def train(run_dir):
    model, tok = nbft.tiny_random("llama")
    cfg = TrainConfig(max_steps=40, batch_size=2, precision="fp32")
    run = nbft.finetune(model, tok, records(24), config=cfg, run_dir=run_dir)
    return {"status": run.status, "steps": run.summary["steps"], "rank": torch.distributed.get_rank()}


def test_launch_feeds_local_observers_and_stops_every_worker(tmp_path):
    torch.randn(256, 256) @ torch.randn(256, 256)  # this process has computed already, as a notebook has
    recorder = Recorder(stop_at=2)
    job = nbft.launch(train, args=(tmp_path / "run",), num_processes=2, observers=[recorder])
    assert job.status == "stopped" and job.error is None
    assert job.result["rank"] == 0 and job.result["status"] == "stopped"  # what the main worker returned
    steps = job.summary["steps"]
    assert 2 <= steps < 40 and job.summary["world_size"] == 2
    assert ("begin", 2) in recorder.seen and recorder.seen[-1] == ("end", "stopped")
    assert [s for k, s in recorder.seen if k == "step"] == list(range(1, steps + 1))
    assert [h["step"] for h in job.history] == list(range(1, steps + 1))
    lines = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == list(range(1, steps + 1))  # both workers stopped there
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == [f"step-{steps:06d}"]


def test_launch_after_bitsandbytes_was_imported(tmp_path, monkeypatch):
    """nbft.estimate and optimizer='adamw-8bit' import bitsandbytes; accelerate's launcher then refuses to fork (it
    may have initialised a GPU). On a machine without CUDA it cannot have: the launch goes ahead. With CUDA: one
    clear error before any process starts, naming the fix."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    job = nbft.launch(train, args=(tmp_path / "run",), num_processes=2, observers=[Recorder(stop_at=1)])
    assert job.error is None and job.status == "stopped"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match=r"bitsandbytes is already imported(?s:.*)Restart the kernel"):
        nbft.launch(train, args=(tmp_path / "run2",), num_processes=2)
    assert not (tmp_path / "run2").exists()


def test_launch_reports_a_worker_error(tmp_path):
    def broken():
        raise ValueError("no data here")

    with pytest.raises(RuntimeError, match="no data here"):
        nbft.launch(broken, num_processes=2)
    with pytest.raises(ValueError, match="num_processes"):
        nbft.launch(broken, num_processes=0)


def test_launch_checks_a_config_before_starting_processes(tmp_path):
    from nbft.job import ConfigError

    with pytest.raises(ConfigError, match="Did you mean 'sentiment'"):
        nbft.launch({"model": "tiny", "data": "sentimnt", "output_dir": str(tmp_path / "r")}, num_processes=2)
    assert not (tmp_path / "r").exists()
