"""Worker for tests/test_train_distributed.py: run with 2 processes (``torchrun --nproc_per_node 2``).

``worker.py OUT``: each process trains the same tiny runs (fp32, bf16, one stopped by an observer on rank 0 only,
one with a monitor on rank 0) and writes what it saw to ``OUT/rank<r>.json`` plus its final weights to
``OUT/<run>-rank<r>.safetensors``. ``worker.py OUT fsdp`` (with ``ACCELERATE_USE_FSDP=true``): a run under FSDP2 on
CPU, stopped at step 2 and resumed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch  # the script's folder (tests/) is on sys.path: _train_data imports
from _train_data import losses, records
from safetensors.torch import save_file

from nbft.config import TrainConfig
from nbft.models import tiny_random
from nbft.train import StopTraining, finetune

CONFIG = {"max_steps": 4, "batch_size": 2, "grad_accum": 2, "learning_rate": 1e-3, "warmup_steps": 1}


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, state):
        if state.step >= self.step:
            raise StopTraining("asked by the test")


class Floor:
    every = 1

    def measure(self, model, tokenizer, step):
        if step == 2:
            raise StopTraining("below the floor")
        return {"score": step, "save_checkpoint": step == 1}


def main(out: Path) -> None:
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else -1
    seen: dict[str, dict] = {}
    for precision in ("fp32", "bf16"):
        model, tok = tiny_random("llama", seed=5)
        cfg = TrainConfig(**CONFIG, precision=precision)
        run = finetune(model, tok, records(24), config=cfg, run_dir=out / precision)
        rank = torch.distributed.get_rank()
        seen[precision] = {"status": run.status, "losses": losses(run), "world": torch.distributed.get_world_size()}
        weights = {n: p.detach().float().contiguous() for n, p in model.named_parameters()}
        save_file(weights, str(out / f"{precision}-rank{rank}.safetensors"))
    model, tok = tiny_random("llama", seed=5)
    observers = [StopAt(2)] if rank == 0 else []  # only rank 0 asks: the stop must reach rank 1
    cfg = TrainConfig(**{**CONFIG, "max_steps": 6}, precision="fp32")
    run = finetune(model, tok, records(24), config=cfg, run_dir=out / "stop", observers=observers)
    seen["stop"] = {"status": run.status, "steps": len(losses(run)), "reason": getattr(run, "stop_reason", None)}
    # A monitor on rank 0 asks for a checkpoint at step 1 and a stop at step 2; the data mixes two tasks.
    model, tok = tiny_random("llama", seed=5)
    data = [{**r, "task": "odd" if i % 2 else "even"} for i, r in enumerate(records(24))]
    run = finetune(model, tok, data, config=cfg, run_dir=out / "monitor", observers=[Floor()] if rank == 0 else [])
    seen["monitor"] = {
        "status": run.status,
        "steps": len(losses(run)),
        "task_losses": [h.get("task_losses") for h in run.history if h["kind"] == "train"],
        "monitor_rows": [h["step"] for h in run.history if h["kind"] == "monitor"],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


def fsdp_on_cpu() -> None:
    """accelerate builds FSDP only for GPU-type launches; treat this CPU (gloo) launch as one, so that nbft's FSDP
    path (FSDP2 on gloo) runs in CI. Only this test does this."""
    import accelerate.state
    from accelerate.utils import DistributedType

    original = accelerate.state.PartialState.__init__

    def init(self, cpu: bool = False, **kwargs):
        original(self, cpu=cpu, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.MULTI_GPU

    accelerate.state.PartialState.__init__ = init


def main_fsdp(out: Path) -> None:
    from accelerate.state import AcceleratorState

    from nbft.models import load_model
    from nbft.train import resume

    fsdp_on_cpu()
    model, tok = tiny_random("llama", seed=5)
    cfg = TrainConfig(**CONFIG, precision="fp32")
    first = finetune(model, tok, records(24), config=cfg, run_dir=out / "fsdp", observers=[StopAt(2)])
    kind = str(AcceleratorState().distributed_type)
    rest = resume(out / "fsdp")
    rank = torch.distributed.get_rank()
    seen = {"kind": kind, "first": first.status, "status": rest.status, "losses": losses(rest)}
    if rank == 0:
        tuned, _ = load_model(out / "fsdp" / "model")
        weights = {n: p.detach().float().contiguous() for n, p in tuned.named_parameters()}
        save_file(weights, str(out / "fsdp-rank0.safetensors"))
    (out / f"fsdp-rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    if sys.argv[2:] == ["fsdp"]:
        main_fsdp(Path(sys.argv[1]))
    else:
        main(Path(sys.argv[1]))
