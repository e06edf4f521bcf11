"""nbft's batched evaluation vs a one-prompt-at-a-time ``model.generate`` loop: same prompts, same settings, same run.

Both sides decode greedily (``do_sample=False``), with the same ``max_new_tokens``, EOS and dtype. The baseline is
what most tutorials write: ``for prompt in prompts: model.generate(**tokenizer(prompt), ...)``. nbft's side is
:func:`nbft.evaluate.generation.generate_ids` (length-sorted batches, left padding, KV cache). The script prints
generated tokens/s for both, the ratio, and how many outputs are identical.

Usage::

    python benchmarks/eval_throughput.py                 # CPU: SmolLM2-135M-Instruct (offline fallback), real prompts
    python benchmarks/eval_throughput.py --tiny          # seconds: a tiny random model
    python benchmarks/eval_throughput.py --gpu           # GPU: Qwen2.5-0.5B-shaped random model, bf16, < 2 minutes

``--gpu`` needs only torch and transformers (no downloads): the model is randomly initialised from the config of the
engine issue (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936, tied embeddings) and
the prompts are random token ids with realistic instruction lengths.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nbft.evaluate.generation import generate_ids


def qwen05b_random(device: str, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        intermediate_size=4864, tie_word_embeddings=True, max_position_embeddings=4096, rope_theta=1_000_000.0,
        bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(dtype).eval(), config


def real_prompts(tokenizer, count: int, chat: bool) -> list[list[int]]:
    """Sentiment and QA prompts from nbft's offline tasks, encoded as nbft encodes them."""
    from nbft.evaluate.generation import encode_prompt
    from nbft.evaluate.tasks import get_task

    out: list[list[int]] = []
    for name in ("sentiment", "qa"):
        task = get_task(name)
        test = task.load()["test"]
        for i in range(count // 2):
            text = task.prompt(test[i], tokenizer, chat=chat)
            out.append(encode_prompt(tokenizer, text, chat=chat))
    return out


def random_prompts(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    # instruction prompts: 40-200 tokens, like a tweet or a question with its instruction
    return [[rng.randrange(100, vocab) for _ in range(rng.randint(40, 200))] for _ in range(count)]


def one_at_a_time(model, prompts, max_new_tokens, pad_id, eos_ids, device) -> tuple[list[list[int]], float]:
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
        pad_token_id=pad_id, eos_token_id=list(eos_ids) or None, use_cache=True,
    )  # fmt: skip
    outs = []
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            toks = gen[0, len(p) :].tolist()
            cut = next((j + 1 for j, t in enumerate(toks) if t in set(eos_ids)), len(toks))
            outs.append(toks[:cut])
    sync(device)
    return outs, time.perf_counter() - t0


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="Qwen2.5-0.5B-shaped random model on CUDA in bf16")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (seconds)")
    ap.add_argument("--prompts", type=int, default=None, help="number of prompts (default 48 CPU, 64 GPU)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 24 CPU, 32 GPU")
    ap.add_argument("--batch-size", type=int, default=None, help="nbft batch size (default 32 CPU, 64 GPU)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = ap.parse_args()

    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA device")
        device, dtype = "cuda", torch.bfloat16
        model, config = qwen05b_random(device, dtype)
        n, new, bs = args.prompts or 64, args.max_new_tokens or 32, args.batch_size or 64
        prompts = random_prompts(n, config.vocab_size)
        pad_id, eos_ids, label = config.pad_token_id, [config.eos_token_id], "Qwen2.5-0.5B-shaped, random, bf16"
    else:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        device, dtype = "cpu", torch.float32
        n, new, bs = args.prompts or 48, args.max_new_tokens or 24, args.batch_size or 32
        if args.tiny:
            from nbft.models import tiny_random

            model, tok = tiny_random("llama", hidden_size=128, num_layers=4)
            prompts = random_prompts(n, len(tok))
            label = "tiny random llama"
        else:
            from nbft.models import DEFAULT_MODEL, load_model

            model, tok = load_model()
            prompts = real_prompts(tok, n, chat=bool(tok.chat_template))
            label = f"{DEFAULT_MODEL} (fp32, chat template)"
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos_ids = [tok.eos_token_id]
        model.eval()

    # warm-up both paths once (first calls pay for allocation and kernel selection)
    generate_ids(model, prompts[:2], max_new_tokens=2, pad_id=pad_id, eos_ids=eos_ids, batch_size=2)
    one_at_a_time(model, prompts[:1], 2, pad_id, eos_ids, device)

    base_out, base_s = one_at_a_time(model, prompts, new, pad_id, eos_ids, device)
    sync(device)
    t0 = time.perf_counter()
    nbft_out, _ = generate_ids(model, prompts, max_new_tokens=new, pad_id=pad_id, eos_ids=eos_ids, batch_size=bs)
    sync(device)
    nbft_s = time.perf_counter() - t0

    base_tokens = sum(len(o) for o in base_out)
    nbft_tokens = sum(len(o) for o in nbft_out)
    same = sum(a == b for a, b in zip(base_out, nbft_out, strict=True))
    result = {
        "model": label,
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "prompts": n,
        "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
        "max_new_tokens": new,
        "batch_size": bs,
        "one_at_a_time_s": round(base_s, 2),
        "one_at_a_time_tok_s": round(base_tokens / base_s, 1),
        "nbft_batched_s": round(nbft_s, 2),
        "nbft_batched_tok_s": round(nbft_tokens / nbft_s, 1),
        "speedup": round(base_s / nbft_s, 2),
        "identical_outputs": f"{same}/{n}",
    }
    for k, v in result.items():
        print(f"{k:>22}: {v}")
    print(f"\nnbft batched evaluation is {result['speedup']}x the one-at-a-time generate loop ({same}/{n} identical)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
