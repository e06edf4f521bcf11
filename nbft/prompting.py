"""Prompt encoding, the same in training and in evaluation: the text a model sees before its completion
(:func:`format_prompt`, plain or chat template, with in-context shots), its token ids (:func:`encode_prompt`), a
prompt and completion tokenized for training (:func:`encode_pair`), and the choice of causal or seq2seq
tokenization (:func:`resolve_mode`).

A light module: it imports neither ``datasets`` nor ``torch``, so :mod:`nbft.data` (training sets) and
:mod:`nbft.evaluate` (generation, scoring) both build on it without importing each other.

Example:
    >>> format_prompt(None, "Q: 3+3?\\nA:", shots=[("Q: 1+1?\\nA:", " 2")])
    'Q: 1+1?\\nA: 2\\n\\nQ: 3+3?\\nA:'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from nbft.errors import DataError
from nbft.models import tokenizer_kind

__all__ = ["encode_pair", "encode_prompt", "format_prompt", "resolve_mode"]


def format_prompt(
    tokenizer: Any,
    prompt: str,
    chat_template: bool = False,
    shots: Sequence[tuple[str, str]] = (),
) -> str:
    """The exact text a model sees before its completion, in training and in evaluation alike.

    ``shots`` are solved examples ``(prompt, completion)`` put before the prompt (in-context learning). Plain text:
    each shot is its prompt, its completion and a blank line. With ``chat_template=True`` each shot is a user turn
    and an assistant turn, and the prompt becomes the last user turn followed by the assistant's generation prompt.

    Example:
        >>> format_prompt(None, "Q: 3+3?\\nA:", shots=[("Q: 1+1?\\nA:", " 2")])
        'Q: 1+1?\\nA: 2\\n\\nQ: 3+3?\\nA:'
    """
    if not chat_template:
        return "".join(p + c + "\n\n" for p, c in shots) + prompt
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"chat_template=True but tokenizer {type(tokenizer).__name__} has no chat template; "
            "use chat_template=False or an instruct model's tokenizer"
        )
    messages: list[dict[str, str]] = []
    for p, c in shots:
        messages += [{"role": "user", "content": p.rstrip("\n")}, {"role": "assistant", "content": c}]
    messages.append({"role": "user", "content": prompt.rstrip("\n")})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer: Any, text: str, *, chat: bool = False, seq2seq: bool = False) -> list[int]:
    """Token ids of a formatted prompt (:func:`format_prompt`), the same in training and in evaluation.

    Plain prompts get the tokenizer's special tokens (BOS) but never a trailing EOS; chat-formatted prompts already
    hold their special tokens as text. A seq2seq encoder input ends with EOS.
    """
    if seq2seq:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        eos = tokenizer.eos_token_id
        return ids if (ids and ids[-1] == eos) or eos is None else [*ids, eos]
    if chat:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]  # some tokenizers append EOS to every text; a prompt must not end there
    return ids


def encode_pair(
    tokenizer: Any, prompt: str, completion: str, chat_template: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of a causal prompt and of its completion (ending with EOS), tokenized separately.

    Tokenizing the two parts separately makes the label mask exact: the completion's tokens are exactly the
    labelled ones, whatever the tokenizer would merge across the boundary.
    """
    prompt_text = format_prompt(tokenizer, prompt, chat_template)
    if chat_template:
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.rstrip("\n")}, {"role": "assistant", "content": completion}],
            tokenize=False,
        )
        if not full.startswith(prompt_text):
            raise DataError("the chat template renders the user turn differently with and without an answer")
        completion_text = full[len(prompt_text) :].rstrip("\n")
    else:
        completion_text = completion
    prompt_ids = encode_prompt(tokenizer, prompt_text, chat=chat_template)
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    if not completion_ids or completion_ids[-1] != tokenizer.eos_token_id:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    return prompt_ids, completion_ids


def _encode_seq2seq(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    eos = tokenizer.eos_token_id
    src = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    tgt = tokenizer(completion, add_special_tokens=True)["input_ids"]
    if not src or src[-1] != eos:
        src = [*src, eos]
    if not tgt or tgt[-1] != eos:
        tgt = [*tgt, eos]
    return src, tgt


def resolve_mode(tokenizer: Any, mode: str | None, model: Any = None) -> Literal["causal", "seq2seq"]:
    """Pick causal or seq2seq tokenization, refusing a mode that contradicts the tokenizer or model."""
    from nbft.models import model_kind

    known = model_kind(model) if model is not None else tokenizer_kind(tokenizer)
    if mode is None:
        return known or "causal"
    if mode not in ("causal", "seq2seq"):
        raise DataError(f"mode must be 'causal', 'seq2seq' or None (auto), not {mode!r}")
    if known is not None and known != mode:
        why = (
            "A seq2seq model reads the prompt in its encoder and writes the completion as labels"
            if known == "seq2seq"
            else "A causal model reads prompt and completion as one sequence"
        )
        raise DataError(
            f"mode={mode!r} but the tokenizer ({type(tokenizer).__name__}) belongs to a {known} model. "
            f"{why}; use mode={known!r} (or leave mode=None)"
        )
    return mode  # type: ignore[return-value]


def _truncate_pair(p: list[int], c: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Fit prompt + completion in ``max_length``: cut the prompt's start (the cue right before the answer matters
    most); when the completion alone is too long, keep the prompt's last tokens (its cue, up to a quarter of the
    room) and the completion's start, and end it with its EOS."""
    if len(c) < max_length and len(p) + len(c) > max_length:
        keep = max_length - len(c)
        if keep >= min(len(p), max(1, max_length // 4)):
            return p[len(p) - keep :], c
    cue = min(len(p), max(1, max_length // 4), max_length - 1)
    room = max_length - cue
    return p[len(p) - cue :] if cue else [], [*c[: room - 1], c[-1]]
