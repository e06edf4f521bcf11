"""Training throughput: nbft's engine against transformers.Trainer, measured in the same run.

Every variant trains the same randomly initialised model, from the same seed, on the same tokenized examples
(prompts several times longer than completions, loss on completions only), with the same examples per optimizer
step, learning rate, schedule and gradient clipping. Each variant runs in its own subprocess so that peak memory
(process RSS on CPU, ``max_memory_allocated`` on CUDA) is its own.

Variants:
  nbft          nbft.finetune: packing, LM head + cross-entropy on completion tokens only, bf16 compute with fp32
                master weights where bf16 is native, TrainConfig(kernels="auto")
  nbft-compile  the same with kernels="compile" (torch.compile of every decoder layer)   } with --kernels, or
  nbft-eager    the same with kernels="none" (plain eager PyTorch)                        } by name in --only
  competent     Trainer, bf16 autocast where supported, dynamic padding, batch 8 (GPU) / the mode's batch (CPU):
                the notebook Trainer
  best          the best Trainer setup found: pure bf16 weights (model cast to bf16, no autocast), group_by_length
                sampling, batch 32 in the issue; here the mode's examples per optimizer step in as few micro-batches
                as divide it (GPU: 2 x 28 = 56; CPU: all of them in one), so every variant sees equal tokens per
                step. Runs in bf16 where the hardware has native bf16, else it is the same as competent minus amp.
  best-liger    best with the Trainer's own use_liger_kernel=True; only on CUDA with liger_kernel importable
                (otherwise the driver prints that it was skipped and why)
  naive         Trainer, fp32, every batch padded to max_length (as many tutorials do)

Every variant uses the same learning rate (linear decay, no warm-up), clipping and seed. The driver prints each
nbft variant's tokens/s and peak-memory ratio against every baseline, and whether its final train loss (mean of the
last 3 steps) is within 2% of that baseline's (only when both ran the same number of steps).

What TrainConfig(kernels="auto") does (nbft/train/kernels.py): Liger on CUDA when liger_kernel is installed; else,
on CUDA, torch.compile of the decoder layers for models of 50M parameters or more (not with activation
checkpointing); else none. On CPU it never compiles (measured: no faster than eager on 2 cores). nbft-compile /
nbft-eager pin each path; the result rows say which path ran (a compile that fails its check falls back to eager
with a logged message).

Modes:
  --quick    a tiny Llama (vocab 49152) for a smoke run in about a minute
  (default)  SmolLM2-135M-shaped Llama on CPU (hidden 576, 30 layers, 9 heads, 3 KV heads, tied, vocab 49152)
  --gpu      Qwen2.5-0.5B-shaped model (hidden 896, 24 layers, 14/2 heads, vocab 151936, tied), ~16k tokens per
             optimizer step, reports MFU (6·N FLOPs per real token against the GPU's dense bf16 peak)

Only torch, transformers and accelerate are needed (no ``datasets`` import on any path).

    python benchmarks/train_throughput.py            # CPU, ~8 minutes on 2 cores
    python benchmarks/train_throughput.py --quick
    python benchmarks/train_throughput.py --gpu      # one command, < 5 minutes on an H100/H200
    python benchmarks/train_throughput.py --quick --kernels --only nbft-compile nbft-eager
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
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
        "steps": {"nbft": 8, "competent": 8, "best": 8, "best-liger": 8, "naive": 8},
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
        # naive is slowest: fewer steps, loss not comparable
        "steps": {"nbft": 6, "competent": 6, "best": 6, "best-liger": 6, "naive": 4},
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
        # The best Trainer setup ran batch 32 in the issue; 28 x 2 keeps the same 56 examples per step.
        "best_batch": 28,
        "best_accum": 2,
        "steps": {"nbft": 24, "competent": 8, "best": 8, "best-liger": 8, "naive": 0},
        "skip": 4,
        "prompt": (100, 400),
        "completion": (15, 60),
        "max_length": 512,
        "lr": 3e-4,
    },
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
NBFT_KERNELS = {"nbft": "auto", "nbft-compile": "compile", "nbft-eager": "none", "nbft-pure": "auto"}
NBFT_EXTRA = {"nbft-pure": {"master_weights": False}}
"""nbft-pure: pure bf16 weights with torchao's stochastic-rounding AdamW (no fp32 master copy), the memory mode that
matches the ``best`` Trainer setup's bf16 weights."""
BASELINES = ("competent", "best", "best-liger", "naive")


def steps_for(spec: dict, variant: str) -> int:
    return spec["steps"].get(variant, spec["steps"]["nbft"] if variant in NBFT_KERNELS else 0)


def liger_problem() -> str | None:
    """Why best-liger cannot run here, or None."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU (Liger's kernels are Triton, CUDA only)"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger_kernel is not installed (pip install liger-kernel)"
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception as exc:  # a Triton that does not load
        return f"liger_kernel does not import ({type(exc).__name__}: {exc})"
    return None


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


def run_nbft(mode: str, train, heldout, steps: int, variant: str = "nbft") -> dict:
    from nbft.config import TrainConfig
    from nbft.train import finetune

    spec = MODES[mode]
    model = make_model(mode)
    times: list[float] = []
    tokens: list[int] = []
    losses: list[float] = []
    began: dict = {}

    class Timer:
        def on_train_begin(self, info):
            began.update(info)
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
        kernels=NBFT_KERNELS[variant],
        **NBFT_EXTRA.get(variant, {}),
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = finetune(model, None, train, config=cfg, observers=[Timer()], run_dir=Path(tmp) / "run")
    device = next(model.parameters()).device
    assert run.status == "completed", run
    return finish(
        variant,
        times,
        tokens,
        losses,
        model,
        heldout,
        device,
        spec,
        extra={
            "precision": began.get("precision") or ("bf16" if _bf16(device) else "fp32"),
            "kernels": began.get("kernels"),
        },
    )


def _bf16(device) -> bool:
    from nbft.train.precision import resolve_precision

    return resolve_precision("auto", device) is not None


def run_trainer(mode: str, train, heldout, steps: int, variant: str) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    spec = MODES[mode]
    model = make_model(mode)
    cuda = torch.cuda.is_available()
    naive = variant == "naive"
    best = variant in ("best", "best-liger")
    bf16 = not naive and (torch.cuda.is_bf16_supported() if cuda else _cpu_bf16())
    batch, accum = spec["batch"], spec["accum"]
    if best:
        # Equal examples (and so, on average, tokens) per optimizer step as every other variant.
        batch, accum = spec.get("best_batch", batch * accum), spec.get("best_accum", 1)
        if bf16:
            model = model.to(torch.bfloat16)  # pure bf16 weights: no autocast, no fp32 copy
    amp = bf16 and not best
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

    sampling = {}
    if best:  # transformers 5.x names it train_sampling_strategy; 4.x had group_by_length=True
        names = {f.name for f in dataclasses.fields(TrainingArguments)}
        key = "train_sampling_strategy" if "train_sampling_strategy" in names else "group_by_length"
        sampling = {key: "group_by_length" if key == "train_sampling_strategy" else True}
    if variant == "best-liger":
        sampling["use_liger_kernel"] = True
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            max_steps=steps,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accum,
            learning_rate=spec["lr"],
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            bf16=amp,
            use_cpu=not cuda,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=0,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            **sampling,
        )
        Trainer(model=model, args=args, train_dataset=train, data_collator=collate, callbacks=[Timer()]).train()
    device = next(model.parameters()).device
    model = model.float()  # the held-out loss is computed in fp32 for every variant
    precision = ("pure bf16" if best else "bf16 amp") if bf16 else "fp32"
    return finish(
        variant,
        times,
        tokens,
        losses,
        model,
        heldout,
        device,
        spec,
        extra={"precision": precision, "batch": f"{accum} x {batch}"},
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
    if variant in NBFT_KERNELS:
        result = run_nbft(mode, examples, heldout, steps, variant)
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
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=[*NBFT_KERNELS, *BASELINES],
        help="variants to run (default: nbft competent best best-liger naive, as the mode has steps for)",
    )
    parser.add_argument(
        "--kernels", action="store_true", help="also run nbft-compile and nbft-eager (kernels='compile' / 'none')"
    )
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
    variants = list(args.only or [v for v, n in spec["steps"].items() if n])
    if args.kernels:
        variants[1:1] = [v for v in ("nbft-compile", "nbft-eager") if v not in variants]
    if "best-liger" in variants and (why := liger_problem()) is not None:
        print(f"  best-liger skipped: {why}", flush=True)
        variants.remove("best-liger")
    results = []
    started = time.time()
    for variant in variants:
        steps = args.steps or steps_for(spec, variant)
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
        print(f"  {variant:<12} {result['tokens_per_s']:>9.0f} tok/s  ({result['wall_s']:.0f} s)", flush=True)

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
    head = (
        "| variant | precision | kernels / batch | steps | real tok/s | peak MiB | train loss (last 3) "
        "| held-out loss |"
    )
    extra = " MFU |" if peak else ""
    print(head + extra)
    print("|---|---|---|---|---|---|---|---|" + ("---|" if peak else ""))
    for r in results:
        mfu = f" {100 * 6 * r['params'] * r['tokens_per_s'] / peak:.1f}% |" if peak else ""
        how = r.get("kernels") or r.get("batch") or ""
        print(
            f"| {r['variant']} | {r['precision']} | {how} | {r['steps']} | {r['tokens_per_s']:.0f} | "
            f"{r['peak_mb']:.0f} | {r['loss_last3']:.4f} | {r['heldout_loss']:.4f} |{mfu}"
        )
    ours = [v for v in NBFT_KERNELS if v in by]
    pairs = [(v, base) for v in ours for base in BASELINES if base in by]
    if "nbft-compile" in by and "nbft-eager" in by:
        pairs.append(("nbft-compile", "nbft-eager"))
    for name, base in pairs:
        n, b = by[name], by[base]
        if n["steps"] == b["steps"]:
            train = 100 * (n["loss_last3"] / b["loss_last3"] - 1)
            losses = (
                f"train loss {train:+.2f}% ({'within' if abs(train) <= 2 else 'NOT within'} 2%), "
                f"held-out loss {100 * (n['heldout_loss'] / b['heldout_loss'] - 1):+.2f}%"
            )
        else:
            losses = f"losses not comparable ({n['steps']} vs {b['steps']} steps)"
        print(
            f"{name} / {base}: speed {n['tokens_per_s'] / b['tokens_per_s']:.2f}x, "
            f"peak memory {n['peak_mb'] / b['peak_mb']:.2f}x, {losses}"
        )


if __name__ == "__main__":
    main()
