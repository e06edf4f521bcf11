"""Fault test: ``kill -9`` of a training process at seeded random moments, then ``resume``: the finished run is
bit-equal to one that was never interrupted, and a damaged newest checkpoint is skipped for the one before it.

The training processes are forked from a warm forkserver (torch and transformers already imported), so each start
costs a fraction of a second and the kills land in setup, in steps and (most often, with a checkpoint per step)
inside checkpoint writes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

fcntl = pytest.importorskip("fcntl")  # POSIX: SIGKILL and forkserver

import _fault_worker  # noqa: E402  (tests/ is on sys.path)

KILLS, SEED = 5, 20261127


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _finish(ctx, target, run_dir: Path, tmp: Path, name: str) -> dict:
    out = tmp / f"{name}.json"
    p = ctx.Process(target=target, args=(str(run_dir), str(tmp / f"{name}.started"), str(out)))
    p.start()
    p.join(180)
    assert p.exitcode == 0, f"{name} ended with exit code {p.exitcode}"
    return json.loads(out.read_text())


def test_kill_9_at_random_moments_then_resume_is_bit_equal_and_damage_falls_back(tmp_path, monkeypatch):
    # The forkserver imports torch, transformers and the worker once (it ignores sys.path: PYTHONPATH carries it).
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, *filter(None, [os.environ.get("PYTHONPATH")])]))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["_fault_worker"])
    _finish(ctx, _fault_worker.start, tmp_path / "warmup", tmp_path, "warmup")  # starts the forkserver
    t0 = time.monotonic()
    reference = _finish(ctx, _fault_worker.start, tmp_path / "reference", tmp_path, "reference")
    duration = time.monotonic() - t0
    assert reference["status"] == "completed"

    run_dir, rng = tmp_path / "killed", random.Random(SEED)
    checkpoints = run_dir / "checkpoints"
    kills: list[dict] = []
    target = _fault_worker.start
    for n in range(KILLS):
        started = tmp_path / f"kill{n}.started"
        p = ctx.Process(target=target, args=(str(run_dir), str(started), str(tmp_path / f"kill{n}.json")))
        p.start()
        _wait_for(started.exists, 60, "the training process to start")
        if n == 0:  # the first run must have written a checkpoint, or there is nothing to resume
            _wait_for(lambda: (checkpoints / "step-000001").is_dir(), 60, "the first checkpoint")
        # Odd kills time from the process start (they land in setup: loading, verifying, tidying), even ones from
        # its first step (in steps and checkpoint writes). Each gets a random share of the run's duration, so
        # together they cannot finish the run before the last kill.
        if n % 2 == 0:
            stepped = Path(f"{started}.step")
            _wait_for(lambda s=stepped, q=p: s.exists() or not q.is_alive(), 60, "a step")
        delay = rng.uniform(0.0, 0.6 * duration / KILLS)
        time.sleep(delay)
        assert p.is_alive(), f"run {n} ended before its kill after {delay:.2f}s"
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        assert p.exitcode == -signal.SIGKILL
        temps = sorted(e.name for e in checkpoints.iterdir() if e.name.startswith(".step-"))
        steps = sorted(e.name for e in checkpoints.iterdir() if e.name.startswith("step-"))
        kills.append(
            {
                "from": "first step" if n % 2 == 0 else "start",
                "after_s": round(delay, 3),
                "in_checkpoint_write": bool(temps),
                "checkpoints": steps,
            }
        )
        target = _fault_worker.proceed

    # Damage the newest checkpoint: resume must say so and continue from the one before it.
    newest = sorted(p for p in checkpoints.iterdir() if p.name.startswith("step-"))[-1]
    weights = newest / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    final = _finish(ctx, _fault_worker.proceed, run_dir, tmp_path, "final")

    print(f"\nrun {duration:.2f}s; kills: {json.dumps(kills)}\nskipped on the final resume: {final['skipped']}")
    assert final["status"] == "completed"
    assert final["skipped"] and final["skipped"][0][0] == newest.name and "truncated" in final["skipped"][0][1]
    assert final["losses"] == reference["losses"], "the loss curve differs from the uninterrupted run"
    got = load_file(run_dir / "model" / "model.safetensors")
    want = load_file(tmp_path / "reference" / "model" / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(got[k].equal(want[k]) for k in want), "the final weights are not bit-equal to the uninterrupted run"
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    ref_history = [json.loads(line) for line in (tmp_path / "reference" / "history.jsonl").read_text().splitlines()]
    assert [(h["kind"], h["step"]) for h in history] == [(h["kind"], h["step"]) for h in ref_history]
    assert not [e.name for e in checkpoints.iterdir() if e.name.startswith(".step-")], "temporaries were left"
    assert (checkpoints / f"{newest.name}.damaged").is_dir(), "the damaged checkpoint is kept aside, not deleted"
    assert not (run_dir / "run.lock").exists()
