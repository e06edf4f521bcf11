"""Batched greedy generation and log-likelihood scoring of choices: the two ways nbft runs a model on a task.

Fairness rules (the same for every model in a comparison): greedy decoding with ``do_sample=False`` set explicitly,
the same ``max_new_tokens`` and stop strings, the same batch size; decoder-only models get **left padding** (so every
prompt ends where generation starts) and the KV cache. Prompts are sorted by length so a batch wastes little on
padding, and results come back in the caller's order.

Example::

    from nbft.evaluate.generation import generate, score_choices
    outs = generate(model, tok, ["Say hi.\\n", "Count to 3.\\n"], max_new_tokens=8, stop=("\\n",))
    ll = score_choices(model, tok, ["Sentiment of 'great!':\\n"], ["negative", "positive"])   # shape (1, 2)
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from nbft.prompting import encode_prompt

__all__ = [
    "encode_prompt",  # re-exported from nbft.data: one prompt encoding for training and evaluation
    "generate",
    "generate_and_score",
    "generate_ids",
    "is_seq2seq",
    "prompt_token_counts",
    "score_choices",
]

logger = logging.getLogger(__name__)


def is_seq2seq(model: Any) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def encode_continuation(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a completion appended after a prompt (no BOS/EOS of its own)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_token_counts(tokenizer: Any, prompts: Sequence[str], *, chat: bool = False) -> list[int]:
    """How many tokens each prompt costs (what k-shot examples add to the context window)."""
    return [len(encode_prompt(tokenizer, p, chat=chat)) for p in prompts]


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _batches(order: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(order), size):
        yield list(order[i : i + size])


BATCH_DONE: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "nbft_batch_done", default=None
)
"""Called with the number of examples each generation or scoring batch finished (the runner's progress report)."""


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm  # plain tqdm: tqdm.auto would import IPython, which the core never does

    bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="ex")
    hook = BATCH_DONE.get()
    if hook is not None:  # a panel's progress line counts the same batches the bar counts
        update = bar.update

        def counted(n: float | None = 1) -> Any:
            hook(int(n or 0))
            return update(n)

        bar.update = counted
    return bar


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i >= 0:
                cut = min(cut, i)
    return text[:cut]


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    gc_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, gc_eos):
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if int(v) not in ids:
                ids.append(int(v))
    return ids


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    stop: Sequence[str] = (),
    halt: Sequence[str] = (),
    batch_size: int = 16,
    chat: bool = False,
    progress: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Greedy completions of ``prompts``, batched; the text after each prompt, cut at the first stop string.

    ``halt`` strings end generation too but stay in the text (a classification task halts at its labels, so an
    answer is never cut off before its label and no time goes to words after it). ``chat=True`` says the prompts
    are already wrapped in the chat template (see :func:`nbft.prompting.format_prompt`).

    Example::

        generate(model, tok, ["Q: 2+2?\\nA:"], max_new_tokens=4, stop=("\\n",))   # ['4'] (for a good model)
    """
    texts, _ = _generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop, halt=halt, batch_size=batch_size,
        chat=chat, progress=progress, desc=desc,
    )  # fmt: skip
    return texts


def generate_and_score(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    choices: Sequence[str],
    **kwargs: Any,
) -> tuple[list[str], np.ndarray]:
    """Generate, and score ``choices`` by log-likelihood in the same pass when each is a single token.

    Falls back to :func:`score_choices` (a separate forward per prompt and choice) for multi-token choices.

    Example::

        texts, ll = generate_and_score(model, tok, prompts, ["negative", "neutral", "positive"], max_new_tokens=4)
    """
    ids = [encode_continuation(tokenizer, c) for c in choices]
    if all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(ids):
        texts, ll = _generate(model, tokenizer, prompts, first_token_ids=[i[0] for i in ids], **kwargs)
        assert ll is not None
        return texts, ll
    score_kwargs = {k: v for k, v in kwargs.items() if k in ("batch_size", "chat", "progress")}
    texts, _ = _generate(model, tokenizer, prompts, **kwargs)
    return texts, score_choices(model, tokenizer, prompts, choices, **score_kwargs)


def _generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    stop: Sequence[str] = (),
    halt: Sequence[str] = (),
    batch_size: int = 16,
    chat: bool = False,
    progress: bool = True,
    desc: str = "generate",
    first_token_ids: Sequence[int] | None = None,
) -> tuple[list[str], np.ndarray | None]:
    """:func:`generate`, plus the log-probabilities of ``first_token_ids`` at the first generated position."""
    if not prompts:
        return [], (np.zeros((0, len(first_token_ids))) if first_token_ids is not None else None)
    seq2seq = is_seq2seq(model)
    encoded = [encode_prompt(tokenizer, p, chat=chat, seq2seq=seq2seq) for p in prompts]
    new_ids, first = generate_ids(
        model,
        encoded,
        max_new_tokens=max_new_tokens,
        pad_id=_pad_id(tokenizer),
        eos_ids=_eos_ids(model, tokenizer),
        batch_size=batch_size,
        stop_strings=list(dict.fromkeys(s for s in (*stop, *halt) if s)),
        tokenizer=tokenizer,
        first_token_ids=first_token_ids,
        progress=progress,
        desc=desc,
    )
    texts = tokenizer.batch_decode(new_ids, skip_special_tokens=True)
    return [_cut_at_stop(t, stop).strip() for t in texts], first


def generate_ids(
    model: Any,
    encoded: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    pad_id: int,
    eos_ids: Sequence[int] = (),
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    tokenizer: Any = None,
    first_token_ids: Sequence[int] | None = None,
    progress: bool = False,
    desc: str = "generate",
    engine: str = "auto",
) -> tuple[list[list[int]], np.ndarray | None]:
    """The token-level core of :func:`generate`: greedy, batched, sorted by length, KV cache.

    Returns the new token ids of each prompt (in the given order, padding removed) and, when ``first_token_ids``
    is given, the log-probabilities of those tokens at the first generated position.

    ``engine`` (the outputs are the same greedy tokens with each; only the speed differs):

    * ``"shared-prefix"``: nbft's own decoding loop. The tokens that every prompt of a batch starts with (a task's
      instruction and k-shot examples, the chat template's system turn) run once and their KV cache is shared by
      the batch; rows that finish (EOS, a stop string) leave the batch at once. The CPU default.
    * ``"static"``: ``model.generate`` with transformers' static KV cache, whose decode step transformers compiles
      once (CUDA graphs) on a GPU. The GPU default: there, one decode step is bound by kernel launches.
    * ``"hf"``: plain ``model.generate`` (left padding, dynamic cache).
    * ``"auto"``: ``"static"`` on CUDA, else ``"shared-prefix"``; ``"hf"`` for encoder-decoder models and where the
      model's generation config asks for logits processors that only ``generate`` applies.

    Example::

        new, _ = generate_ids(model, [[1, 5, 9], [1, 7]], max_new_tokens=8, pad_id=0)
    """
    from transformers import GenerationConfig

    seq2seq = is_seq2seq(model)
    device = _device(model)
    engine = _choose_engine(engine, model, device, seq2seq)
    # Longest first: the largest batch shows up first (an OOM happens at once, not at the end), and neighbours in
    # the sorted order have similar lengths, so little compute goes to padding.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,  # explicit: an Instruct model's generation_config may default to sampling
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=list(eos_ids) or None,
        stop_strings=list(stop_strings) or None,
        return_dict_in_generate=True,
        output_logits=first_token_ids is not None,
    )
    if seq2seq:
        config.decoder_start_token_id = getattr(model.config, "decoder_start_token_id", None)
    if engine == "static":
        config.cache_implementation = "static"  # transformers compiles the decode step once for a static cache
    elif engine == "shared-prefix" and _needs_generate(model, config):
        engine = "hf"
    outputs: list[list[int]] = [[] for _ in encoded]
    first = np.zeros((len(encoded), len(first_token_ids))) if first_token_ids is not None else None
    eos = set(eos_ids)  # only EOS and stop strings end a row: a generated pad id is an ordinary token
    stopper = _stop_criteria(tokenizer, stop_strings)
    if engine == "shared-prefix":
        with _eval_mode(model), _progress(len(encoded), desc, progress) as bar:
            for batch in _batches(order, batch_size):
                new_ids, logp = _greedy_shared_prefix(
                    model, [list(encoded[i]) for i in batch], max_new_tokens, eos_ids, stopper, pad_id, first_token_ids
                )
                for row, i in enumerate(batch):
                    outputs[i] = new_ids[row]
                    if first is not None and logp is not None:
                        first[i] = logp[row].cpu().numpy()
                bar.update(len(batch))
        return outputs, first
    with _eval_mode(model), _progress(len(encoded), desc, progress) as bar:
        for batch in _batches(order, batch_size):
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                seq = list(encoded[i])
                if seq2seq:  # the encoder doesn't care about the side; right padding is the T5 convention
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                else:  # left padding: every prompt ends at the last column, where generation continues
                    ids[row, width - len(seq) :] = torch.tensor(seq)
                    mask[row, width - len(seq) :] = 1
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                tokenizer=tokenizer if config.stop_strings else None,
            )
            if first is not None:
                # The first step's logits are exactly a forward pass over the prompt: the log-likelihood of any
                # single-token answer comes for free with generation.
                logp = torch.log_softmax(gen.logits[0].float(), dim=-1)[:, list(first_token_ids)]
                for row, i in enumerate(batch):
                    first[i] = logp[row].cpu().numpy()
            seqs = gen.sequences
            new = (seqs if seq2seq else seqs[:, width:]).tolist()
            for row, i in enumerate(batch):
                toks = new[row][1:] if seq2seq else new[row]  # a seq2seq output starts with the decoder start
                # keep tokens up to the end of the row (EOS or stop string); what follows pads a finished row
                outputs[i] = toks[: _finished_at(list(encoded[i]), toks, eos, stopper, pad_id, device)]
            bar.update(len(batch))
    return outputs, first


# ----------------------------------------------------------------------------------------- decoding engines

_MIN_SHARED = 4
"""A shared prefix shorter than this is not worth a separate forward pass."""

_PROCESSOR_FIELDS = {
    # GenerationConfig fields that make greedy generate() apply a logits processor (value when inactive)
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "sequence_bias": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "exponential_decay_length_penalty": None,
    "guidance_scale": None,
    "watermarking_config": None,
    "renormalize_logits": False,
    "remove_invalid_values": False,
}


def _choose_engine(engine: str, model: Any, device: torch.device, seq2seq: bool) -> str:
    if engine not in ("auto", "shared-prefix", "static", "hf"):
        raise ValueError(f"engine must be 'auto', 'shared-prefix', 'static' or 'hf', got {engine!r}")
    if seq2seq and engine != "hf":
        return "hf"  # the encoder runs once per prompt anyway; generate() handles the decoder start
    if engine == "auto":
        return "static" if device.type == "cuda" else "shared-prefix"
    return engine


def _needs_generate(model: Any, config: Any) -> bool:
    """True when ``model.generate`` would apply a logits processor (from the model's generation config): nbft's
    own loop does plain argmax, so it gives way to keep the outputs identical."""
    merged = copy.deepcopy(config)
    own = getattr(model, "generation_config", None)
    if own is not None:
        merged.update(**own.to_dict(), defaults_only=True)
    for name, inactive in _PROCESSOR_FIELDS.items():
        value = getattr(merged, name, inactive)
        if value is not None and value != inactive and not (name == "min_length" and value <= 0):
            logger.info("generation config sets %s=%r: decoding with model.generate", name, value)
            return True
    return False


def _stop_criteria(tokenizer: Any, stop_strings: Sequence[str]) -> Any:
    """transformers' own stop-string check (the same rule ``generate`` applies), or ``None``."""
    if not stop_strings:
        return None
    if tokenizer is None:
        raise ValueError("stop strings need the tokenizer")
    from transformers import StopStringCriteria

    return StopStringCriteria(tokenizer, list(stop_strings))


def _finished_at(
    prompt: list[int], toks: list[int], eos: set[int], stopper: Any, pad_id: int, device: torch.device
) -> int:
    """How many of ``generate``'s tokens for a row are its own: up to and including the first EOS or the token that
    completes a stop string (the same rule, transformers' ``StopStringCriteria``, that ended the row). The rest is
    padding added after the row finished; a generated pad id before that is an ordinary token."""
    end = next((j + 1 for j, t in enumerate(toks) if t in eos), len(toks))
    if stopper is not None and end > 0:
        tails = _tails([prompt + toks[: j + 1] for j in range(end)], pad_id, device, stopper.maximum_token_len + 1)
        hits = stopper(tails, None).tolist()
        end = next((j + 1 for j, hit in enumerate(hits) if hit), end)
    return end


def _common_prefix(prompts: list[list[int]]) -> int:
    first, n = prompts[0], min(len(p) for p in prompts) - 1  # every row keeps one token of its own
    k = 0
    while k < n and all(p[k] == first[k] for p in prompts):
        k += 1
    return k


@torch.inference_mode()
def _greedy_shared_prefix(
    model: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_ids: Sequence[int],
    stopper: Any,
    pad_id: int,
    first_token_ids: Sequence[int] | None,
) -> tuple[list[list[int]], torch.Tensor | None]:
    """Greedy decoding of one batch: the shared prefix once, each row's own tokens, then one token per step for the
    rows still running. Each row's attention sees exactly its own prompt (prefix + its tokens; the padding between
    them is masked) at the positions it has alone, so its tokens equal one-at-a-time greedy decoding. transformers
    counts a sliding window in cache slots, not positions, so padding between the prefix and a row's tokens would
    shift the window: a model with a window that a row crosses decodes the batch without a shared prefix."""
    device = _device(model)
    rows = len(prompts)
    shared = _common_prefix(prompts) if rows > 1 else 0
    shared = shared if shared >= _MIN_SHARED else 0
    if shared and _window_shifts(model, prompts, shared, max_new_tokens):
        shared = 0  # plain left padding: no padding between a row's tokens, so its sliding window is its own
    cache = None
    if shared:
        prefix = torch.tensor([prompts[0][:shared]], device=device)
        cache = _cache_of(model(input_ids=prefix, use_cache=True, logits_to_keep=1))
        cache.batch_repeat_interleave(rows)
    own = [p[shared:] for p in prompts]
    width = max(len(o) for o in own)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    positions = torch.zeros((rows, width), dtype=torch.long)
    for r, tokens in enumerate(own):
        ids[r, width - len(tokens) :] = torch.tensor(tokens)
        mask[r, shared + width - len(tokens) :] = 1
        positions[r, width - len(tokens) :] = torch.arange(shared, shared + len(tokens))
    mask, positions = mask.to(device), positions.to(device)
    cache_kw = _cache_keyword(model)
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **{cache_kw: cache},
    )
    cache, logits = _cache_of(out), out.logits[:, -1]
    first = torch.log_softmax(logits.float(), -1)[:, list(first_token_ids)] if first_token_ids is not None else None
    next_position = positions[:, -1] + 1
    eos = set(eos_ids)
    outputs: list[list[int]] = [[] for _ in prompts]
    active = list(range(rows))
    for step in range(max_new_tokens):
        tokens = logits.argmax(-1)
        values = tokens.tolist()
        for r, t in zip(active, values, strict=True):
            outputs[r].append(t)
        if step == max_new_tokens - 1:
            break
        done = [t in eos for t in values]
        if stopper is not None:
            tails = _tails([prompts[r] + outputs[r] for r in active], pad_id, device, stopper.maximum_token_len + 1)
            done = [d or bool(s) for d, s in zip(done, stopper(tails, None).tolist(), strict=True)]
        keep = [j for j, d in enumerate(done) if not d]
        if not keep:
            break
        if len(keep) < len(active):  # finished rows leave the batch: no more compute on them
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, next_position, tokens = mask[index], next_position[index], tokens[index]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        out = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=next_position[:, None],
            use_cache=True,
            **{cache_kw: cache},
        )
        cache, logits = _cache_of(out), out.logits[:, -1]
        next_position = next_position + 1
    return outputs, first


def _window_shifts(model: Any, prompts: list[list[int]], shared: int, max_new_tokens: int) -> bool:
    """True when padding between the shared prefix and the rows' own tokens would move some row's sliding window
    (or chunk): rows of different lengths, and a row that reaches past the model's smallest window."""
    from nbft.train.layout import attention_pattern, smallest_span  # the model's attention rules, read once

    span = smallest_span(attention_pattern(model.config))
    own = {len(p) - shared for p in prompts}
    return span is not None and len(own) > 1 and shared + max(own) + max_new_tokens > span


def _cache_keyword(model: Any) -> str:
    """transformers 5.2x renamed ``past_key_values`` to ``cache``; use whichever this model's forward takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _tails(sequences: list[list[int]], pad_id: int, device: torch.device, width: int) -> torch.Tensor:
    """The last ``width`` tokens of each sequence, left-padded: all a stop-string check looks at (a stop string
    of n characters spans at most n tokens)."""
    out = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for r, seq in enumerate(sequences):
        tail = seq[-width:]
        out[r, width - len(tail) :] = torch.tensor(tail)
    return out.to(device)


def score_choices(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    choices: Sequence[str],
    *,
    batch_size: int = 16,
    chat: bool = False,
    progress: bool = True,
    desc: str = "log-likelihood",
    one_forward_per_prompt: bool = True,
) -> np.ndarray:
    """Sum of log-probabilities of each choice's tokens after each prompt: an array of shape (prompts, choices).

    Like lm-evaluation-harness' ``multiple_choice``: the prompt and the choice are encoded separately and
    concatenated (as training concatenates prompt and completion ids), and only the choice tokens are scored.
    The answer is ``choices[argmax]``; it doesn't depend on the model following an output format. When every choice
    is one token (``negative``/``neutral``/``positive`` for most tokenizers) and ``one_forward_per_prompt`` is on,
    a decoder-only model scores all choices from one forward of the prompt (the same numbers, a third of the work
    for three labels); ``False`` forces one forward per (prompt, choice) pair.

    Example::

        ll = score_choices(model, tok, prompts, ["negative", "neutral", "positive"])
        predicted = [choices[j] for j in ll.argmax(axis=1)]
    """
    if not prompts:
        return np.zeros((0, len(choices)))
    device = _device(model)
    pad = _pad_id(tokenizer)
    seq2seq = is_seq2seq(model)
    choice_ids = [encode_continuation(tokenizer, c) for c in choices]
    if any(not c for c in choice_ids):
        raise ValueError(f"a choice encodes to no tokens: {choices!r}")
    prompt_ids = [encode_prompt(tokenizer, p, chat=chat, seq2seq=seq2seq) for p in prompts]
    if one_forward_per_prompt and not seq2seq and all(len(c) == 1 for c in choice_ids):
        # one token per choice (e.g. negative/neutral/positive): every choice is scored from the logits at the
        # prompt's last position, so each prompt takes one forward instead of one per choice
        return _score_single_tokens(model, prompt_ids, [c[0] for c in choice_ids], pad, device, batch_size,
                                    progress, desc)  # fmt: skip
    pairs = [(i, j) for i in range(len(prompts)) for j in range(len(choices))]
    pairs.sort(key=lambda ij: -(len(prompt_ids[ij[0]]) + len(choice_ids[ij[1]])))
    scores = np.zeros((len(prompts), len(choices)))
    with _eval_mode(model), _progress(len(pairs), desc, progress) as bar:
        for batch in _batches(range(len(pairs)), batch_size):
            items = [pairs[b] for b in batch]
            if seq2seq:
                _score_seq2seq(model, items, prompt_ids, choice_ids, pad, device, scores)
            else:
                _score_causal(model, items, prompt_ids, choice_ids, pad, device, scores)
            bar.update(len(batch))
    return scores


def _score_single_tokens(
    model: Any,
    prompt_ids: list[list[int]],
    choice_tokens: list[int],
    pad: int,
    device: torch.device,
    batch_size: int,
    progress: bool,
    desc: str,
) -> np.ndarray:
    """:func:`score_choices` when every choice is one token: log p(choice | prompt) read at each prompt's last
    position, one forward per prompt (left padding, positions counting real tokens only, as in ``_score_causal``)."""
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    scores = np.zeros((len(prompt_ids), len(choice_tokens)))
    target = torch.tensor(choice_tokens)
    with _eval_mode(model), _progress(len(prompt_ids) * len(choice_tokens), desc, progress) as bar:
        for batch in _batches(order, batch_size):
            rows = [prompt_ids[i] for i in batch]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, r in enumerate(rows):
                ids[row, width - len(r) :] = torch.tensor(r)
                mask[row, width - len(r) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                                      "position_ids": pos.to(device)}  # fmt: skip
            try:
                logits = model(**kwargs, logits_to_keep=1, use_cache=False).logits[:, -1]
            except TypeError:
                logits = model(**kwargs, use_cache=False).logits[:, -1]
            logp = torch.log_softmax(logits.float(), dim=-1)[:, target.to(logits.device)]
            scores[list(batch)] = logp.cpu().numpy()
            bar.update(len(rows) * len(choice_tokens))
    return scores


def _score_causal(
    model: Any,
    items: list[tuple[int, int]],
    prompt_ids: list[list[int]],
    choice_ids: list[list[int]],
    pad: int,
    device: torch.device,
    scores: np.ndarray,
) -> None:
    seqs = [prompt_ids[i] + choice_ids[j] for i, j in items]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, width - len(s) :] = torch.tensor(s)  # left padding: every choice ends at the last column
        mask[row, width - len(s) :] = 1
    # Positions count real tokens only, so a padded row sees the same positions as it would alone.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = max(len(choice_ids[j]) for _, j in items) + 1
    kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    kwargs["position_ids"] = pos.to(device)
    try:
        # Only the last `keep` positions predict choice tokens: skip the LM head (vocab-sized) everywhere else.
        logits = model(**kwargs, logits_to_keep=keep, use_cache=False).logits
    except TypeError:
        logits = model(**kwargs, use_cache=False).logits[:, -keep:]
    logp = torch.log_softmax(logits.float(), dim=-1)
    for row, (i, j) in enumerate(items):
        c = choice_ids[j]
        # logits at column t predict the token at column t+1; the choice occupies the last len(c) columns.
        pred = logp[row, keep - 1 - len(c) : keep - 1]
        target = torch.tensor(c, device=pred.device)
        scores[i, j] = float(pred.gather(-1, target[:, None]).sum())


def _score_seq2seq(
    model: Any,
    items: list[tuple[int, int]],
    prompt_ids: list[list[int]],
    choice_ids: list[list[int]],
    pad: int,
    device: torch.device,
    scores: np.ndarray,
) -> None:
    enc_w = max(len(prompt_ids[i]) for i, _ in items)
    dec_w = max(len(choice_ids[j]) for _, j in items)
    ids = torch.full((len(items), enc_w), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full((len(items), dec_w), -100, dtype=torch.long)
    for row, (i, j) in enumerate(items):
        ids[row, : len(prompt_ids[i])] = torch.tensor(prompt_ids[i])
        mask[row, : len(prompt_ids[i])] = 1
        labels[row, : len(choice_ids[j])] = torch.tensor(choice_ids[j])
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device), use_cache=False)
    logp = torch.log_softmax(out.logits.float(), dim=-1)
    for row, (_, j) in enumerate(items):
        c = choice_ids[j]
        target = torch.tensor(c, device=logp.device)
        scores[items[row][0], j] = float(logp[row, : len(c)].gather(-1, target[:, None]).sum())
