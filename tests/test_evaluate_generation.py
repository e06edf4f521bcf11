"""Decoding engines (nbft/evaluate/generation.py): the shared-prefix loop and the static-cache path give the tokens
of one-at-a-time greedy ``model.generate`` in fp32, with finished rows leaving the batch."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import GenerationConfig

from nbft.evaluate import generation
from nbft.evaluate.generation import generate_ids
from nbft.models import tiny_random


@pytest.fixture(scope="module")
def model_and_eos():
    model, tok = tiny_random("llama", seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger weights than the default init: varied outputs that stop at different steps
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3, generator=g)
    model.eval()
    return model, tok


def _prompts(vocab: int, n: int = 14, shared: int = 30, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(3, vocab) for _ in range(shared)]  # an instruction every prompt starts with
    return [prefix + [rng.randrange(3, vocab) for _ in range(rng.randint(1, 20))] for _ in range(n)]


_SEEN: dict[tuple, list[list[int]]] = {}


def _one_at_a_time(model, prompts, max_new_tokens, eos):
    key = (id(model), tuple(map(tuple, prompts)), max_new_tokens, tuple(eos))
    if key not in _SEEN:
        _SEEN[key] = _generate_each(model, prompts, max_new_tokens, eos)
    return _SEEN[key]


def _generate_each(model, prompts, max_new_tokens, eos):
    """One-at-a-time greedy ``model.generate`` (no padding anywhere): the reference every engine must equal."""
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
        pad_token_id=0, eos_token_id=eos,
    )  # fmt: skip
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        toks = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)[0]
        toks = toks[1 if model.config.is_encoder_decoder else len(p) :].tolist()  # seq2seq: after the start
        out.append(toks[: next((j + 1 for j, t in enumerate(toks) if t in eos), len(toks))])
    return out


def _common_eos(model, prompts):
    """A token the model often emits early: used as EOS so rows finish at different steps."""
    first, _ = generate_ids(model, prompts, max_new_tokens=4, pad_id=0, engine="hf")
    counts: dict[int, int] = {}
    for toks in first:
        for t in toks[1:]:
            counts[t] = counts.get(t, 0) + 1
    return [max(counts, key=counts.get)]


@pytest.mark.parametrize("engine", ["shared-prefix", "static", "hf"])
def test_engines_equal_one_at_a_time_greedy_in_fp32(engine, model_and_eos):
    model, _ = model_and_eos
    prompts = _prompts(model.config.vocab_size)
    eos = _common_eos(model, prompts)
    want = _one_at_a_time(model, prompts, 12, eos)
    lengths = {len(w) for w in want}
    assert len(lengths) > 2  # rows finish at different steps: dropping finished rows is exercised
    got, first = generate_ids(
        model, prompts, max_new_tokens=12, pad_id=0, eos_ids=eos, batch_size=5, engine=engine, first_token_ids=[3, 4]
    )
    assert got == want
    ids = torch.tensor([prompts[0]])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), -1)[[3, 4]]
    torch.testing.assert_close(torch.as_tensor(first[0], dtype=torch.float32), logp, rtol=1e-4, atol=1e-5)


def test_shared_prefix_runs_once_per_batch_and_finished_rows_leave(model_and_eos, monkeypatch):
    model, _ = model_and_eos
    prompts = _prompts(model.config.vocab_size, n=6, shared=25)
    eos = _common_eos(model, prompts)
    widths: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        got, _ = generate_ids(model, prompts, max_new_tokens=10, pad_id=0, eos_ids=eos, batch_size=6)
    finally:
        hook.remove()
    assert widths[0] == (1, 25)  # the shared prefix, once, for the whole batch
    longest_own = max(len(p) - 25 for p in prompts)
    assert widths[1] == (6, longest_own)  # then each row's own tokens
    rows = [w[0] for w in widths[2:]]
    assert rows == sorted(rows, reverse=True) and rows[-1] < 6  # rows that finished left the batch
    assert got == _one_at_a_time(model, prompts, 10, eos)


def test_stop_strings_end_rows_as_generate_does(model_and_eos):
    model, tok = model_and_eos
    texts = [f"Prompt number {i}: tell me {'more ' * i}\n" for i in range(8)]
    prompts = [tok(t)["input_ids"] for t in texts]
    full, _ = generate_ids(model, prompts, max_new_tokens=14, pad_id=0, engine="hf")
    stop = next(tok.decode([t]) for t in full[0][1:] if tok.decode([t]).isalnum())  # a letter the answer holds
    kwargs = {"max_new_tokens": 14, "pad_id": 0, "stop_strings": [stop], "tokenizer": tok, "batch_size": 3}
    ours, _ = generate_ids(model, prompts, engine="shared-prefix", **kwargs)
    theirs, _ = generate_ids(model, prompts, engine="hf", **kwargs)
    decode = lambda rows: [tok.decode(r, skip_special_tokens=True) for r in rows]  # noqa: E731
    assert decode(ours) == decode(theirs)
    assert len(ours[0]) < len(full[0])


def test_logits_processors_in_the_models_generation_config_go_through_generate(model_and_eos, monkeypatch):
    model, _ = model_and_eos
    monkeypatch.setattr(model.generation_config, "repetition_penalty", 1.3)
    calls = []
    monkeypatch.setattr(generation, "_greedy_shared_prefix", lambda *a, **k: calls.append(1))
    prompts = _prompts(model.config.vocab_size, n=3)
    got, _ = generate_ids(model, prompts, max_new_tokens=5, pad_id=0, engine="shared-prefix")
    assert not calls and len(got) == 3  # generate() applied the penalty; nbft's loop was not used


def test_unknown_engine_is_refused(model_and_eos):
    with pytest.raises(ValueError, match="engine must be"):
        generate_ids(model_and_eos[0], [[1, 2]], max_new_tokens=2, pad_id=0, engine="vllm")


@pytest.mark.parametrize("engine", ["shared-prefix", "static", "hf"])
def test_a_generated_pad_id_is_an_ordinary_token_not_the_end_of_a_row(engine, model_and_eos):
    model, _ = model_and_eos
    prompts = _prompts(model.config.vocab_size, n=4)
    want = _one_at_a_time(model, prompts, 8, [2])
    pad = want[0][1]  # a token the model generates mid-row, used as the padding id (many tokenizers pad with EOS)
    assert pad != 2 and len(want[0]) > 2
    got, _ = generate_ids(model, prompts, max_new_tokens=8, pad_id=pad, eos_ids=[2], batch_size=4, engine=engine)
    assert got == want


@pytest.fixture(scope="module")
def windowed():
    model, _ = tiny_random("mistral", sliding_window=16, hidden_size=32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3, generator=g)
    return model.eval()


def test_shared_prefix_is_exact_on_a_sliding_window_model(windowed, monkeypatch):
    prompts = _prompts(windowed.config.vocab_size, n=4, shared=20)  # rows cross the 16-token window
    eos = _common_eos(windowed, prompts)
    got, _ = generate_ids(windowed, prompts, max_new_tokens=10, pad_id=0, eos_ids=eos, engine="shared-prefix")
    assert got == _one_at_a_time(windowed, prompts, 10, eos)
    # Inside the window the prefix is still shared: run once, as for any model.
    monkeypatch.setattr(windowed.config, "sliding_window", 4096)
    widths: list[tuple[int, int]] = []
    hook = windowed.register_forward_pre_hook(
        lambda m, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        generate_ids(windowed, prompts, max_new_tokens=4, pad_id=0, engine="shared-prefix")
    finally:
        hook.remove()
    assert widths[0] == (1, 20)
