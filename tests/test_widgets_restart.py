"""A kernel dies during a background run with autosave on; a new kernel finds the run and resumes it from a panel.

Real kernels (jupyter_client), killed with SIGKILL, as when a notebook server restarts or Colab disconnects.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

jupyter_client = pytest.importorskip("jupyter_client")

TOTAL, SAVE_EVERY, HANG_AT = 24, 3, 8

TRAIN = f"""
import time
from nbft.models import tiny_random
from nbft.train import TrainConfig, finetune

class HangAt:  # hangs in an observer of step {HANG_AT}: the history line of step {HANG_AT} is written first (the
    # history writer runs before user observers), the last checkpoint is older
    def on_step(self, state):
        if state.step == {HANG_AT}:
            time.sleep(600)

model, tok = tiny_random("llama")
pairs = [{{"prompt": f"Repeat {{i}}.\\n", "completion": str(i)}} for i in range(32)]
run = finetune(model, tok, pairs, val=pairs[:4], config=TrainConfig(max_steps={TOTAL}, batch_size=4, eval_every=4,
               save_every={SAVE_EVERY}), observers=[HangAt()], run_dir="runs/autosaved", background=True)
"""

RESUME = """
import json, nbft
from nbft.widgets import TrainPanel

table = nbft.runs("runs")
found = table.to_dict("records")
panel = TrainPanel.from_run_dir(table.path[0])
before = [h["step"] for h in panel.plot.history if h["kind"] == "train"]
panel.resume_button.click()
run = panel.wait(300)
after = [h["step"] for h in panel.plot.history if h["kind"] == "train"]
print(json.dumps({"found": found, "before": before, "after": after, "status": run.status,
                  "markers": panel.plot.markers, "disk": nbft.runs("runs").status.tolist()}, default=str))
"""


def _kernel(cwd: Path):
    km = jupyter_client.KernelManager(kernel_name="python3")
    env = {**os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    km.start_kernel(cwd=str(cwd), env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    return km, kc


def _run(kc, code: str, timeout: float = 300) -> str:
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    assert reply["content"]["status"] == "ok", "".join(out)
    return "".join(out)


def test_kill_the_kernel_mid_run_then_find_and_resume_the_run_from_a_panel(tmp_path):
    run_dir = tmp_path / "runs" / "autosaved"
    km, kc = _kernel(tmp_path)
    try:
        _run(kc, TRAIN)
        deadline = time.monotonic() + 180
        history = run_dir / "history.jsonl"
        while True:  # wait until step HANG_AT is recorded: the run then hangs in an observer of that step
            steps = [json.loads(ln).get("step") for ln in history.read_text().splitlines()] if history.exists() else []
            if HANG_AT in steps:
                break
            assert time.monotonic() < deadline, "the background run did not reach the step where it hangs"
            time.sleep(0.2)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)  # SIGKILL: no cleanup, no final checkpoint
    assert not (run_dir / "model").exists()
    assert (
        sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))[-1] == "step-000006"
    )

    km, kc = _kernel(tmp_path)
    try:
        result = json.loads(_run(kc, RESUME).strip().splitlines()[-1])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    (found,) = result["found"]
    assert found["status"] == "interrupted" and found["resumable"] and found["step"] == HANG_AT
    assert found["checkpoint"] == 6, "the newest autosave before the kill"
    assert result["before"] == list(range(1, HANG_AT + 1)), "the panel shows the curve up to the kill"
    assert result["status"] == "completed"
    assert result["after"] == list(range(1, TOTAL + 1)), "the whole curve: from step 1, not from the resume step"
    assert [label for _, label in result["markers"]] == ["last checkpoint · resumed"]
    assert result["disk"] == ["completed"]
