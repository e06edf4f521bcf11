"""Architecture parity matrix: on tiny random models of the architectures people fine-tune, nbft's loss and
gradients equal those of the model's own forward run one example at a time (fp32, packing on and off, examples
longer than the attention windows), one bf16 training step gives a finite loss, and every generation engine equals
one-at-a-time greedy ``model.generate``.

A new architecture is one line in ``ARCHS``: its ``nbft.models.tiny_random`` name and keywords (``sliding_window``
is a window, or for llama4_text a chunk, of that many tokens, shorter than the examples).
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from _train_data import losses, records, spread
from test_evaluate_generation import _generate_each

from nbft.config import TrainConfig
from nbft.evaluate.generation import encode_continuation, encode_prompt, generate_ids, score_choices
from nbft.models import tiny_random
from nbft.train import finetune
from nbft.train.layout import attention_pattern, choose_layout
from nbft.train.loss import CausalLMLoss, Seq2SeqLoss, check_fused_head

WINDOW = 32  # longer than the 24-token examples the old setup check used, shorter than these
ARCHS = [  # (tiny_random arch, its keywords): one line per architecture
    ("llama", {}),
    ("qwen2", {"sliding_window": WINDOW}),  # window on the later layers (max_window_layers)
    ("qwen3", {"sliding_window": WINDOW}),
    ("mistral", {"sliding_window": WINDOW}),  # one window on every layer
    ("gemma2", {"sliding_window": WINDOW}),  # sliding/full alternating, attention and final soft-capping, eager
    ("gemma3_text", {"sliding_window": WINDOW}),  # sliding layers and a full one
    ("phi3", {"sliding_window": WINDOW}),
    ("olmo2", {}),
    ("gpt2", {}),
    ("gpt_neox", {}),
    ("opt", {}),
    ("llama4_text", {"sliding_window": WINDOW}),  # chunked attention: no per-layer attention function serves it
    ("t5", {}),
    ("bart", {}),
]
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 4}
LENGTHS = (70, 45, 20, 36)  # one example crosses two windows, two cross one, one fits
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread does the work, and a second only spins on each small kernel (several times the CPU
    time on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(arch: str, keywords: dict, std: float = 0.15):
    model, tok = tiny_random(arch, seed=0, **TINY, **keywords)
    return spread(model, std=std).eval(), tok  # larger weights: attention differences show in the loss


def _examples(vocab: int, seq2seq: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(4, vocab, (n,), generator=g) for n in LENGTHS]
    if seq2seq:
        return ids, [torch.randint(4, vocab, (n // 2,), generator=g) for n in LENGTHS]
    labels = [x.clone() for x in ids]
    for lab in labels:
        lab[: len(lab) // 3] = -100  # a prompt without loss, as tokenize_for_training makes
    return ids, labels


def _own_forward(model, ids, labels) -> torch.Tensor:
    """The model's own loss, one example at a time: summed cross-entropy over labelled tokens / their count."""
    total, count = torch.zeros(()), 0
    for x, y in zip(ids, labels, strict=True):
        if model.config.is_encoder_decoder:
            out = model(input_ids=x[None], labels=y[None], use_cache=False)
            logits, targets = out.logits[0], y
        else:
            logits, targets = model(input_ids=x[None], use_cache=False).logits[0, :-1], y[1:]
        total = total + torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        count += int((targets != -100).sum())
    return total / count


def _nbft(model, ids, labels, packing: bool, pad_id: int) -> tuple[torch.Tensor, str]:
    """nbft's loss: the module and layout its training loop uses (the layout chosen by the setup check)."""
    seq2seq = model.config.is_encoder_decoder
    module = Seq2SeqLoss(model) if seq2seq else CausalLMLoss(model, fused=check_fused_head(model))
    layout = choose_layout(module, packing=packing, pad_id=pad_id, device=CPU, sample=(ids, labels))
    model.eval()  # the check restores the mode it found; dropout stays off for an exact comparison
    count = sum(int((y[0 if seq2seq else 1 :] != -100).sum()) for y in labels)  # causal: the first predicts nothing
    total = sum(module(**batch) for batch in layout.batches(ids, labels))
    return total / count, layout.name


def _grads(model) -> list[torch.Tensor]:
    out = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize(("arch", "keywords"), ARCHS, ids=[a for a, _ in ARCHS])
def test_loss_and_gradients_equal_the_models_own_forward(arch, keywords):
    model, tok = _model(arch, keywords)
    window = keywords.get("sliding_window")
    assert window is None or max(LENGTHS) > 2 * window  # the examples cross the window
    ids, labels = _examples(model.config.vocab_size, model.config.is_encoder_decoder)
    want = _own_forward(model, ids, labels)
    want.backward()
    want_grads = _grads(model)
    scale = max(float(g.abs().max()) for g in want_grads)
    result: dict[str, object] = {"pattern": attention_pattern(model.config)}  # printed with pytest -s
    for packing in (True, False):
        got, layout = _nbft(model, ids, labels, packing, tok.pad_token_id)
        got.backward()
        loss_diff = abs(float(got.detach()) - float(want.detach()))
        grad_diff = max(float((a - b).abs().max()) for a, b in zip(_grads(model), want_grads, strict=True)) / scale
        result[f"packing={packing}"] = {"layout": layout, "loss": loss_diff, "grad(rel)": grad_diff}
        assert loss_diff <= 2e-6 * max(1.0, float(want)), (arch, packing, layout, float(got), float(want))
        assert grad_diff <= 1e-4, (arch, packing, layout, grad_diff)
        if packing and not model.config.is_encoder_decoder:
            assert layout != "single", arch  # a packed layout serves the architecture: no slow fallback
    print(arch, result)


@pytest.mark.parametrize(("arch", "keywords"), ARCHS, ids=[a for a, _ in ARCHS])
def test_one_bf16_step_gives_a_finite_loss(arch, keywords, tmp_path):
    model, tok = tiny_random(arch, seed=0, **TINY, **keywords)
    cfg = TrainConfig(max_steps=1, batch_size=4, precision="bf16", learning_rate=1e-3)
    run = finetune(model, tok, records(4), config=cfg, run_dir=tmp_path / "r")
    assert run.status == "completed" and all(math.isfinite(x) for x in losses(run))


def _prompts(vocab: int, n: int = 5, shared: int = 6) -> list[list[int]]:
    rng = random.Random(0)
    prefix = [rng.randrange(4, vocab) for _ in range(shared)]  # a shared prefix, as a task's instruction gives
    return [prefix + [rng.randrange(4, vocab) for _ in range(rng.randint(3, 30))] for _ in range(n)]


@pytest.mark.parametrize(("arch", "keywords"), ARCHS, ids=[a for a, _ in ARCHS])
def test_every_generation_engine_equals_one_at_a_time_greedy(arch, keywords):
    model, _ = _model(arch, keywords, std=0.3)
    prompts = _prompts(model.config.vocab_size)
    assert max(map(len, prompts)) + 10 > WINDOW  # generation crosses the window
    want = _generate_each(model, prompts, 10, [2])
    engines = ["hf"] if model.config.is_encoder_decoder else ["shared-prefix", "static", "hf"]
    for engine in engines:
        got, _ = generate_ids(model, prompts, max_new_tokens=10, pad_id=0, eos_ids=[2], batch_size=5, engine=engine)
        assert got == want, (arch, engine)


def _assert_equal_own_forward(model, tok, prompts, choices, got, arch):
    """Each score equals log p(choice | prompt) from the model's own forward on prompt + choice, one at a time."""
    seq2seq = model.config.is_encoder_decoder
    for i, prompt in enumerate(prompts):
        p = encode_prompt(tok, prompt, seq2seq=seq2seq)
        for j, choice in enumerate(choices):
            c = torch.tensor(encode_continuation(tok, choice))
            with torch.no_grad():
                if seq2seq:
                    logits = model(input_ids=torch.tensor([p]), labels=c[None]).logits[0]
                else:
                    logits = model(input_ids=torch.cat([torch.tensor(p), c])[None]).logits[0, len(p) - 1 : -1]
            want = float(torch.log_softmax(logits.float(), -1).gather(-1, c[:, None]).sum())
            assert got[i, j] == pytest.approx(want, abs=1e-4), (arch, i, j)


@pytest.mark.parametrize(("arch", "keywords"), ARCHS, ids=[a for a, _ in ARCHS])
def test_choice_scores_equal_the_models_own_forward(arch, keywords):
    model, tok = _model(arch, keywords, std=0.3)
    prompts = [f"Question {i}: " + "abc " * (6 + 4 * i) + "\nAnswer:" for i in range(3)]  # 35 to 67 tokens
    choices = [" yes", " no", " maybe not"]
    got = score_choices(model, tok, prompts, choices, batch_size=4, progress=False)  # left-padded batches
    _assert_equal_own_forward(model, tok, prompts, choices, got, arch)


@pytest.mark.parametrize(("arch", "keywords"), ARCHS, ids=[a for a, _ in ARCHS])
def test_single_token_choice_scores_equal_the_models_own_forward_with_one_forward_per_batch(arch, keywords):
    model, tok = _model(arch, keywords, std=0.3)
    seq2seq = model.config.is_encoder_decoder
    candidates = [" yes", " no", "a", "b", "c", " the", "x", "1", "2"]
    choices = [c for c in candidates if len(encode_continuation(tok, c)) == 1][:3]
    assert len(choices) >= 2, choices
    prompts = [f"Question {i}: " + "abc " * (6 + 4 * i) + "\nAnswer:" for i in range(5)]  # 35 to 99 tokens
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        got = score_choices(model, tok, prompts, choices, batch_size=4, progress=False)  # left-padded batches
    finally:
        hook.remove()
    if not seq2seq:
        assert len(calls) == 2, "one forward per batch of prompts, not one per (prompt, choice) pair"
    _assert_equal_own_forward(model, tok, prompts, choices, got, arch)


@pytest.mark.parametrize("arch", ["mistral", "gemma3_text"])
def test_training_and_validation_losses_honour_the_window(arch, tmp_path):
    # Through finetune: the setup check picks a layout that honours the window, and evaluate_loss uses it too.
    model, tok = _model(arch, {"sliding_window": WINDOW})
    ids, labels = _examples(model.config.vocab_size, seq2seq=False)
    data = [{"input_ids": x.tolist(), "labels": y.tolist()} for x, y in zip(ids, labels, strict=True)]
    with torch.no_grad():
        before = float(_own_forward(model, ids, labels))
    cfg = TrainConfig(max_steps=1, batch_size=len(data), precision="fp32", learning_rate=1e-3)
    run = finetune(model, tok, data, val=data, config=cfg, run_dir=tmp_path / "r")
    assert losses(run) == [pytest.approx(before, rel=1e-6)]  # the step's loss, at the weights it started from
    model.eval()
    with torch.no_grad():
        after = float(_own_forward(model, ids, labels))
    assert after != pytest.approx(before, rel=1e-4)  # the step changed the model
    assert run.history[-1]["kind"] == "eval" and run.history[-1]["val_loss"] == pytest.approx(after, rel=1e-6)
