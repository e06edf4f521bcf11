"""Training throughput: nbft's engine against transformers.Trainer, measured in the same run.

Every variant trains the same randomly initialised model, from the same seed, on the same tokenized examples
(prompts several times longer than completions, loss on completions only), with the same examples per optimizer
step, learning rate, schedule and gradient clipping. Each variant runs in its own subprocess so that peak memory
(process RSS on CPU, ``max_memory_allocated`` on CUDA) is its own.

Variants:
  nbft       nbft.finetune: packing, LM head + cross-entropy on completion tokens only, bf16 autocast where native
  competent  Trainer, bf16 autocast where supported, dynamic padding, default optimizer
  naive      Trainer, fp32, every batch padded to max_length (as many tutorials do)

Modes:
  --quick    a tiny Llama (vocab 49152) for a smoke run in about a minute
  (default)  SmolLM2-135M-shaped Llama on CPU (hidden 576, 30 layers, 9 heads, 3 KV heads, tied, vocab 49152)
  --gpu      Qwen2.5-0.5B-shaped model (hidden 896, 24 layers, 14/2 heads, vocab 151936, tied), ~16k tokens per
             optimizer step, reports MFU (6·N FLOPs per real token against the GPU's dense bf16 peak)

Only torch, transformers and accelerate are needed (no ``datasets`` import on any path).

    python benchmarks/train_throughput.py            # CPU, ~8 minutes on 2 cores
    python benchmarks/train_throughput.py --quick
    python benchmarks/train_throughput.py --gpu      # one command, < 5 minutes on an H100/H200
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

MODES = {
    "quick": {
        "model": {
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 49152,
        },
        "batch": 4,
        "accum": 1,
        "steps": {"nbft": 8, "competent": 8, "naive": 8},
        "skip": 2,
        "prompt": (100, 400),
        "completion": (15, 60),
        "max_length": 512,
        "lr": 3e-4,
    },
    "cpu": {
        "model": {
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "vocab_size": 49152,
        },
        "batch": 4,
        "accum": 1,
        "steps": {"nbft": 6, "competent": 6, "naive": 4},  # naive is slowest: fewer steps, loss not comparable
        "skip": 2,
        "prompt": (100, 400),
        "completion": (15, 60),
        "max_length": 512,
        "lr": 3e-4,
    },
    "gpu": {
        "model": {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
        },
        # 56 examples x ~290 tokens = ~16k real tokens per optimizer step for every variant. The Trainer runs them
        # as 7 micro-batches of 8 (its reference setup); nbft, which needs no logits memory, as one packed batch.
        "batch": 8,
        "accum": 7,
        "nbft_batch": 56,
        "nbft_accum": 1,
        "steps": {"nbft": 24, "competent": 8, "naive": 0},
        "skip": 4,
        "prompt": (100, 400),
        "completion": (15, 60),
        "max_length": 512,
        "lr": 3e-4,
    },
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def make_model(mode: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    spec = MODES[mode]["model"]
    torch.manual_seed(0)
    common = {"tie_word_embeddings": True, "max_position_embeddings": 2048, "attn_implementation": "sdpa"}
    if mode == "gpu":
        return Qwen2ForCausalLM(Qwen2Config(**spec, **common))
    return LlamaForCausalLM(LlamaConfig(**spec, **common))


def make_examples(mode: str, n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Prompts of 100-400 tokens, completions of 15-60 from a 100-token sub-vocabulary (so the loss can fall)."""
    import torch

    spec = MODES[mode]
    g = torch.Generator().manual_seed(seed)
    vocab = spec["model"]["vocab_size"]
    out = []
    for _ in range(n):
        p = int(torch.randint(spec["prompt"][0], spec["prompt"][1] + 1, (1,), generator=g))
        c = int(torch.randint(spec["completion"][0], spec["completion"][1] + 1, (1,), generator=g))
        prompt = torch.randint(3, vocab, (p,), generator=g).tolist()
        completion = torch.randint(1000, 1100, (c,), generator=g).tolist()
        out.append({"input_ids": prompt + completion, "labels": [-100] * p + completion})
    return out


# ------------------------------------------------------------------------------------------------- workers


def peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def no_grad_eval(model):
    import torch

    model.eval()
    with torch.no_grad():
        yield
    model.train()


def heldout_loss(model, examples, device) -> float:
    """Mean completion-token loss on held-out examples, fp32, one example at a time: identical for all variants."""
    import torch

    total, count = 0.0, 0
    with no_grad_eval(model):
        for ex in examples:
            ids = torch.tensor([ex["input_ids"]], device=device)
            labels = torch.tensor([ex["labels"]], device=device)
            n = int((labels[0, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    return total / count


def run_nbft(mode: str, train, heldout, steps: int) -> dict:
    from nbft.config import TrainConfig
    from nbft.train import finetune

    spec = MODES[mode]
    model = make_model(mode)
    times: list[float] = []
    tokens: list[int] = []
    losses: list[float] = []

    class Timer:
        def on_train_begin(self, info):
            times.append(time.perf_counter())

        def on_step(self, state):
            times.append(time.perf_counter())
            tokens.append(state.tokens)
            losses.append(state.loss)

    cfg = TrainConfig(
        max_steps=steps,
        batch_size=spec.get("nbft_batch", spec["batch"]),
        grad_accum=spec.get("nbft_accum", spec["accum"]),
        learning_rate=spec["lr"],
        max_grad_norm=1.0,
        seed=0,
        precision="auto",
        packing=True,
        max_length=spec["max_length"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = finetune(model, None, train, config=cfg, observers=[Timer()], run_dir=Path(tmp) / "run")
    device = next(model.parameters()).device
    assert run.status == "completed", run
    return finish(
        "nbft",
        times,
        tokens,
        losses,
        model,
        heldout,
        device,
        spec,
        extra={"precision": "bf16" if _bf16(device) else "fp32"},
    )


def _bf16(device) -> bool:
    from nbft.train.loop import resolve_precision

    return resolve_precision("auto", device) is not None


def run_trainer(mode: str, train, heldout, steps: int, variant: str) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    spec = MODES[mode]
    model = make_model(mode)
    cuda = torch.cuda.is_available()
    naive = variant == "naive"
    bf16 = not naive and (torch.cuda.is_bf16_supported() if cuda else _cpu_bf16())
    times: list[float] = []
    tokens: list[int] = []
    losses: list[float] = []
    batch_tokens: list[int] = []

    def collate(rows):
        width = spec["max_length"] if naive else max(len(r["input_ids"]) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        batch_tokens.append(int(mask.sum()))
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())
            tokens.append(sum(batch_tokens))
            batch_tokens.clear()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            max_steps=steps,
            per_device_train_batch_size=spec["batch"],
            gradient_accumulation_steps=spec["accum"],
            learning_rate=spec["lr"],
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            bf16=bf16,
            use_cpu=not cuda,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=0,
            remove_unused_columns=False,
            dataloader_num_workers=0,
        )
        Trainer(model=model, args=args, train_dataset=train, data_collator=collate, callbacks=[Timer()]).train()
    device = next(model.parameters()).device
    return finish(
        variant, times, tokens, losses, model, heldout, device, spec, extra={"precision": "bf16" if bf16 else "fp32"}
    )


def _cpu_bf16() -> bool:
    import torch

    return _bf16(torch.device("cpu"))


def finish(name, times, tokens, losses, model, heldout, device, spec, extra) -> dict:
    skip = spec["skip"]
    measured_time = times[-1] - times[skip]
    measured_tokens = sum(tokens[skip:])
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "variant": name,
        "steps": len(tokens),
        "tokens_per_s": measured_tokens / measured_time,
        "s_per_step": measured_time / max(len(tokens) - skip, 1),
        "peak_mb": peak_mb(device),
        "loss_first": losses[0],
        "loss_last3": sum(losses[-3:]) / len(losses[-3:]),
        "heldout_loss": heldout_loss(model, heldout, device),
        "params": n_params,
        **extra,
    }


def worker(mode: str, variant: str, steps: int) -> None:
    import torch

    torch.manual_seed(0)
    examples = make_examples(mode, 400)
    heldout = make_examples(mode, 8, seed=99)
    if variant == "nbft":
        result = run_nbft(mode, examples, heldout, steps)
    else:
        result = run_trainer(mode, examples, heldout, steps, variant)
    print("RESULT " + json.dumps(result), flush=True)


def interleaved_ab(mode: str, reps: int) -> None:
    """One step's forward+backward, Trainer-style (autocast, padded) vs nbft (bf16, varlen), alternating; min of reps.

    Alternating in one process makes the comparison fair on a machine whose speed drifts (shared cores).
    """
    import torch

    from nbft.train.batching import collate_varlen
    from nbft.train.loss import CausalLMLoss

    spec = MODES[mode]
    examples = make_examples(mode, spec["batch"], seed=1)
    ids = [torch.tensor(e["input_ids"]) for e in examples]
    labels = [torch.tensor(e["labels"]) for e in examples]
    hf = make_model(mode).train()
    nb = make_model(mode).to(torch.bfloat16).train()
    loss_module = CausalLMLoss(nb, fused=True)
    width = max(len(x) for x in ids)
    inp = torch.zeros(len(ids), width, dtype=torch.long)
    lab = torch.full((len(ids), width), -100, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
        inp[i, : len(x)], lab[i, : len(y)], mask[i, : len(x)] = x, y, 1
    packed = collate_varlen(ids, labels)

    def trainer_style():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = hf(input_ids=inp, attention_mask=mask, labels=lab).loss
        loss.backward()
        hf.zero_grad(set_to_none=True)

    def nbft_style():
        loss_module(**packed).backward()
        nb.zero_grad(set_to_none=True)

    best = {"trainer-style": float("inf"), "nbft": float("inf")}
    for _ in range(reps):
        for name, fn in (("trainer-style", trainer_style), ("nbft", nbft_style)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    real = sum(len(x) for x in ids)
    for name, sec in best.items():
        print(f"{name:14s} {sec:7.2f} s  {real / sec:8.0f} real tok/s  ({real} real tokens, padded {inp.numel()})")
    print(f"nbft / trainer-style: {best['trainer-style'] / best['nbft']:.2f}x (forward + backward only)")


# ------------------------------------------------------------------------------------------------- driver


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, about a minute")
    parser.add_argument("--gpu", action="store_true", help="Qwen2.5-0.5B shape on CUDA with MFU")
    parser.add_argument("--only", nargs="*", default=None, help="variants to run (nbft competent naive)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per variant (default per mode)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--ab", type=int, default=0, metavar="REPS", help="interleaved forward+backward A/B only")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.steps)
        return

    mode = "gpu" if args.gpu else "quick" if args.quick else "cpu"
    if args.ab:
        interleaved_ab(mode, args.ab)
        return
    spec = MODES[mode]
    variants = args.only or [v for v, n in spec["steps"].items() if n]
    results = []
    started = time.time()
    for variant in variants:
        steps = args.steps or spec["steps"][variant]
        cmd = [sys.executable, __file__, "--worker", mode, variant, "--steps", str(steps)]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{variant} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        result = json.loads(line[-1][len("RESULT ") :])
        result["wall_s"] = time.time() - t0
        results.append(result)
        print(f"  {variant:<10} {result['tokens_per_s']:>9.0f} tok/s  ({result['wall_s']:.0f} s)", flush=True)

    report(mode, results, time.time() - started)
    if args.json:
        args.json.write_text(json.dumps({"mode": mode, "results": results}, indent=2))


def report(mode: str, results: list[dict], wall: float) -> None:
    import accelerate
    import torch
    import transformers

    by = {r["variant"]: r for r in results}
    gpu = gpu_name()
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if gpu and k in gpu), None)
    print()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"mode={mode}  device={gpu or platform.processor() or platform.machine()}  cpus={os.cpu_count()}  "
        f"load average at the end {load:.1f}  "
        f"torch={torch.__version__} transformers={transformers.__version__} accelerate={accelerate.__version__}  "
        f"date={time.strftime('%Y-%m-%d')}  total {wall:.0f} s"
    )
    head = "| variant | precision | steps | real tok/s | peak MiB | train loss (last 3) | held-out loss |"
    extra = " MFU |" if peak else ""
    print(head + extra)
    print("|---|---|---|---|---|---|---|" + ("---|" if peak else ""))
    for r in results:
        mfu = f" {100 * 6 * r['params'] * r['tokens_per_s'] / peak:.1f}% |" if peak else ""
        print(
            f"| {r['variant']} | {r['precision']} | {r['steps']} | {r['tokens_per_s']:.0f} | {r['peak_mb']:.0f} | "
            f"{r['loss_last3']:.4f} | {r['heldout_loss']:.4f} |{mfu}"
        )
    if "nbft" in by:
        n = by["nbft"]
        for base in ("competent", "naive"):
            if base in by:
                b = by[base]
                losses = (
                    f"held-out loss {100 * (n['heldout_loss'] / b['heldout_loss'] - 1):+.2f}%, "
                    f"train loss {100 * (n['loss_last3'] / b['loss_last3'] - 1):+.2f}%"
                    if n["steps"] == b["steps"]
                    else f"losses not comparable ({n['steps']} vs {b['steps']} steps)"
                )
                print(
                    f"nbft / {base}: speed {n['tokens_per_s'] / b['tokens_per_s']:.2f}x, "
                    f"peak memory {n['peak_mb'] / b['peak_mb']:.2f}x, {losses}"
                )


if __name__ == "__main__":
    main()
