"""``nbft.estimate`` against what a run really uses: peak memory (and step time) predicted, then measured.

Each configuration trains in its own subprocess (so the process's peak resident memory is its own): the estimate is
made first, then the run. On CPU the memory measured is the peak RSS minus the RSS after building the model, plus
the model's weights (the libraries and what model construction leaves behind are not training memory), with glibc
told to return freed blocks at once (``MALLOC_MMAP_THRESHOLD_=65536``): otherwise RSS keeps every freed activation
of every step and grows past the live memory. On CUDA, ``torch.cuda.max_memory_allocated`` is used.

    python benchmarks/estimate_vs_measured.py            # CPU, a 23M-parameter Llama, ~2 minutes
    python benchmarks/estimate_vs_measured.py --gpu      # CUDA, the Qwen2.5-0.5B shape
    python benchmarks/estimate_vs_measured.py --tiny --steps 2 --only bf16   # smoke run, a few seconds
    python benchmarks/estimate_vs_measured.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = {
    "bf16": {"precision": "bf16"},
    "bf16+checkpointing": {"precision": "bf16", "activation_checkpointing": True},
    "pure-bf16": {"precision": "bf16", "master_weights": False},
    "fp32": {"precision": "fp32"},
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make(gpu: bool, tiny: bool = False):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if tiny:  # a smoke run of the script itself: its numbers are dominated by the libraries
        cfg = LlamaConfig(
            hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=2048, tie_word_embeddings=True, attn_implementation="sdpa",
        )  # fmt: skip
        return LlamaForCausalLM(cfg)
    if gpu:
        cfg = Qwen2Config(
            hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
            num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, attn_implementation="sdpa",
        )  # fmt: skip
        return Qwen2ForCausalLM(cfg)
    cfg = LlamaConfig(
        hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
        vocab_size=8192, tie_word_embeddings=True, attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def data(vocab: int, n: int, seed: int = 0) -> list[dict[str, list[int]]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p, c = int(torch.randint(100, 400, (1,), generator=g)), int(torch.randint(15, 60, (1,), generator=g))
        ids = torch.randint(3, vocab, (p + c,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
    return out


def worker(name: str, gpu: bool, steps: int, tiny: bool = False) -> None:
    import tempfile

    import torch

    import nbft
    from nbft.train import finetune

    # Load every library a run touches before the baseline, with a throwaway run of a tiny model.
    warm, _ = nbft.tiny_random()
    with tempfile.TemporaryDirectory() as tmp:
        finetune(warm, None, data(warm.config.vocab_size, 4), config=nbft.TrainConfig(max_steps=1, batch_size=2,
                 **CONFIGS[name]), run_dir=Path(tmp) / "warm")  # fmt: skip
    del warm
    batch = 56 if gpu else 4 if tiny else 8
    cfg = nbft.TrainConfig(max_steps=steps, batch_size=batch, learning_rate=1e-4, max_length=512, **CONFIGS[name])
    model = make(gpu, tiny)
    # The baseline is the process after building the model, less the model's own weights (which the estimate
    # counts): what building it left behind besides the weights is not training memory.
    base = rss_bytes() - sum(p.numel() * p.element_size() for p in model.parameters())
    examples = data(model.config.vocab_size, batch * steps)
    if gpu:
        model.cuda()
        torch.cuda.reset_peak_memory_stats()
    est = nbft.estimate(model, cfg, data=examples)
    times = []

    class Timer:
        def on_step(self, state):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        finetune(model, None, examples, config=cfg, observers=[Timer()], run_dir=Path(tmp) / "run")
    measured = torch.cuda.max_memory_allocated() if gpu else peak_rss_bytes() - base
    step_s = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
    print("RESULT " + json.dumps({
        "config": name, "predicted_gib": est.peak_bytes / 2**30, "measured_gib": measured / 2**30,
        "ratio": est.peak_bytes / measured, "predicted_step_s": est.step_seconds, "measured_step_s": step_s,
        "parts_gib": {k: round(v / 2**30, 3) for k, v in est.memory.items()},
        "notes": est.notes,
    }), flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="CUDA, the Qwen2.5-0.5B shape")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer Llama: a smoke run of the script (CPU)")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per configuration (default 3)")
    ap.add_argument("--only", nargs="*", default=list(CONFIGS), choices=list(CONFIGS), help="configurations to run")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.gpu, args.steps, args.tiny)
        return
    results = []
    for name in args.only:
        flags = [*(["--gpu"] if args.gpu else []), *(["--tiny"] if args.tiny else [])]
        cmd = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps), *flags]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(line[-1][7:])
        results.append(r)
        step = (
            f"step {r['predicted_step_s']:.2f} s predicted, {r['measured_step_s']:.2f} s measured"
            if r["predicted_step_s"] and r["measured_step_s"]
            else ""
        )
        print(
            f"{name:<20} peak {r['predicted_gib']:.3f} GiB predicted, {r['measured_gib']:.3f} GiB measured "
            f"(x{r['ratio']:.2f}); {step}",
            flush=True,
        )
        for note in r.get("notes", []):
            print(f"{'':<20} note: {note}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
