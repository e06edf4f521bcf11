"""Worker for tests/test_fault_kill.py: training runs in processes forked from a warm server, to be killed with
SIGKILL at random moments. Module-level functions only (the forkserver imports this module by name)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import accelerate  # noqa: F401  (imported once in the forkserver: each forked run starts warm)
import datasets  # noqa: F401
import torch
from _train_data import losses, records
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401

from nbft.config import TrainConfig
from nbft.models import tiny_random
from nbft.train import finetune, resume

STEPS = 60
CONFIG = {"max_steps": STEPS, "batch_size": 2, "learning_rate": 1e-3, "warmup_steps": 2, "save_every": 1,
          "keep_last": 2, "precision": "fp32", "eval_every": 20}  # fmt: skip


def _report(out: Path, run, model) -> None:
    data = {
        "status": run.status,
        "losses": losses(run),
        "skipped": [[p.name, why] for p, why in getattr(run, "skipped_checkpoints", [])],
    }
    out.write_text(json.dumps(data))


class Stepped:
    """Creates ``<started>.step`` after this process's first optimizer step (the killer may time from it)."""

    def __init__(self, started: str) -> None:
        self.path = Path(started + ".step")

    def on_step(self, state) -> None:
        if not self.path.exists():
            self.path.touch()


def start(run_dir: str, started: str, out: str) -> None:
    """A fresh run into ``run_dir`` (``started`` is created once this process runs)."""
    Path(started).touch()
    torch.set_num_threads(1)  # the same arithmetic in every process, whatever the machine's load
    model, tok = tiny_random("llama", seed=3)
    cfg = TrainConfig(**CONFIG)
    run = finetune(model, tok, records(24), val=records(4, seed=1), config=cfg, run_dir=run_dir,
                   observers=[Stepped(started)])  # fmt: skip
    _report(Path(out), run, model)


def proceed(run_dir: str, started: str, out: str) -> None:
    """``resume(run_dir)`` to the end."""
    Path(started).touch()
    torch.set_num_threads(1)
    run = resume(run_dir, observers=[Stepped(started)])
    _report(Path(out), run, run.model)


def pid() -> int:
    return os.getpid()
