"""Content hashes of instruction examples: what a run trained on, kept so that evaluation can prove it never scores
an example the model has seen.

A run directory keeps ``data/train_hashes.safetensors`` (written by :func:`nbft.finetune` through
:func:`write_training_hashes`): the hash of every training example's normalised prompt + completion, and the hashes
of every 13-word window of that text (the n-gram contamination signal of the GPT-3 paper). :func:`nbft.compare` reads
it and leaves out test examples that match.

Normalisation: Unicode NFKC, lower case, runs of whitespace collapsed to one space, ends stripped. So two examples
that differ only in case, spacing or a trailing newline hash the same; a changed word does not (the 13-gram
check is what catches such near duplicates in longer texts).

This module needs neither ``datasets`` nor ``torch``: the training engine calls it wherever it runs.

Example:
    >>> content_hash("Text: Great!\\nSentiment:", "positive") == content_hash("text:  great! sentiment:", "Positive")
    True
    >>> len(ngram_hashes("one two three", n=2))
    2
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "HASHES_FILE",
    "NGRAM_N",
    "TrainingHashes",
    "content_hash",
    "near_duplicate_groups",
    "ngram_hashes",
    "normalize_text",
    "read_training_hashes",
    "training_hashes",
    "write_training_hashes",
]

logger = logging.getLogger(__name__)

HASHES_FILE = "train_hashes.safetensors"
"""File name inside a run's ``data/`` folder."""
NGRAM_N = 13
"""Window length of the n-gram contamination check (words), as in the GPT-3 paper's test-set analysis."""
_FORMAT = "nbft-train-hashes/1"
_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalize_text(text: Any) -> str:
    """NFKC, lower case, whitespace collapsed: the form every content hash is taken of.

    Example:
        >>> normalize_text("  Hello\\n\\nWORLD ")
        'hello world'
    """
    return _WS.sub(" ", unicodedata.normalize("NFKC", str(text)).lower()).strip()


def _h64(text: str) -> int:
    # 64-bit hashes: collisions are negligible at millions of items, and they store as int64
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def content_hash(prompt: Any, completion: Any) -> int:
    """The 64-bit hash of one example's normalised prompt and completion (an int, as stored).

    Example:
        >>> content_hash("Q: 2+2?", "4") != content_hash("Q: 2+2?", "5")
        True
    """
    return _h64(normalize_text(prompt) + "\x1f" + normalize_text(completion))


def ngram_hashes(text: Any, n: int = NGRAM_N) -> set[int]:
    """Hashes of every ``n``-word window of the normalised text (words: runs of letters/digits; punctuation dropped).

    A text shorter than ``n`` words has no window, so short texts are only ever checked for exact matches.
    """
    words = _WORD.findall(normalize_text(text))
    return {_h64(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)}


def near_duplicate_groups(texts: Sequence[Sequence[Any]], n: int = NGRAM_N) -> list[int]:
    """Group rows whose texts share an ``n``-word window (near duplicates: retweets, re-posted news with another
    link...): a split keeps each group on one side, so the 13-gram check never finds a test example in training.

    ``texts[i]`` holds row i's text fields. Returns a group id per row (the smallest row index in its group).

    Example:
        >>> a = "one two three four five six seven eight nine ten eleven twelve thirteen"
        >>> near_duplicate_groups([[a + " x"], ["unrelated"], ["RT " + a]])
        [0, 1, 0]
    """
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for i, fields in enumerate(texts):
        for text in fields:
            for h in ngram_hashes(text, n):
                j = owner.setdefault(h, i)
                if j != i:
                    a, b = find(i), find(j)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(len(texts))]


@dataclasses.dataclass
class TrainingHashes:
    """What is known about a training set: example hashes and 13-gram hashes (sorted int64 arrays).

    ``ngrams`` is empty when the training text was not available (already tokenized data with only a
    ``content_hash`` column): then only exact matches can be found, and ``has_text`` is False.
    """

    examples: np.ndarray
    ngrams: np.ndarray
    n_examples: int
    has_text: bool = True
    ngram_n: int = NGRAM_N
    source: str = ""

    def __post_init__(self) -> None:
        self._example_set = set(self.examples.tolist())
        self._ngram_set = set(self.ngrams.tolist())

    def contains_example(self, h: int) -> bool:
        return h in self._example_set

    def shares_ngram(self, hashes: Iterable[int]) -> bool:
        return any(h in self._ngram_set for h in hashes)

    def merged(self, other: TrainingHashes) -> TrainingHashes:
        """Hashes of both training sets (a model trained on two datasets, or a resumed run with more data)."""
        return TrainingHashes(
            np.union1d(self.examples, other.examples),
            np.union1d(self.ngrams, other.ngrams),
            self.n_examples + other.n_examples,
            self.has_text and other.has_text,
            self.ngram_n,
            " + ".join(s for s in (self.source, other.source) if s),
        )


def _columns(data: Any) -> dict[str, list[Any]] | None:
    """The prompt/completion (or content_hash) columns of a Dataset, DatasetDict train split, list or dict."""
    if isinstance(getattr(data, "column_names", None), dict):
        if "train" not in data:
            return None
        data = data["train"]  # a DatasetDict: its train split is what training uses
    if hasattr(data, "column_names"):
        cols = set(data.column_names)
        get = lambda c: list(data[c])  # noqa: E731
    elif isinstance(data, Mapping):
        cols = set(data)
        get = lambda c: list(data[c])  # noqa: E731
    elif isinstance(data, (list, tuple)) and data and isinstance(data[0], Mapping):
        cols = set(data[0])
        get = lambda c: [row[c] for row in data]  # noqa: E731
    else:
        return None
    wanted = [c for c in ("prompt", "completion", "content_hash") if c in cols]
    return {c: get(c) for c in wanted}


def training_hashes(data: Any, *, n: int = NGRAM_N, source: str = "") -> TrainingHashes | None:
    """Hashes of a training set: a ``Dataset``/``DatasetDict`` (its train split), a list of dicts or a dict of lists
    with ``prompt`` + ``completion`` text (or, after tokenization, the ``content_hash`` column).

    Returns ``None`` when the data carries neither, e.g. hand-tokenized ``input_ids``/``labels`` only.

    Example:
        >>> h = training_hashes([{"prompt": "Q: hi\\n", "completion": "hello"}])
        >>> h.contains_example(content_hash("q: hi", "hello"))
        True
    """
    cols = _columns(data)
    if not cols:
        return None
    if "prompt" in cols and "completion" in cols:
        examples = [content_hash(p, c) for p, c in zip(cols["prompt"], cols["completion"], strict=True)]
        grams: set[int] = set()
        for p, c in zip(cols["prompt"], cols["completion"], strict=True):
            grams |= ngram_hashes(f"{p} {c}", n)
        has_text = True
    elif "content_hash" in cols:
        examples = [int(h) for h in cols["content_hash"]]
        grams, has_text = set(), False
    else:
        return None
    return TrainingHashes(
        np.unique(np.asarray(examples, dtype=np.int64)),
        np.unique(np.asarray(sorted(grams), dtype=np.int64)),
        len(examples),
        has_text,
        n,
        source,
    )


def write_training_hashes(folder: str | Path, data: Any) -> Path | None:
    """Write :func:`training_hashes` of ``data`` (or ready :class:`TrainingHashes`) to
    ``folder/train_hashes.safetensors`` atomically.

    Returns the path, or ``None`` (with a warning) when the data carries no text to hash; :func:`nbft.compare` then
    says "overlap not checked" for the model.

    Example:
        >>> write_training_hashes("/tmp/nbft-doc-run/data", [{"prompt": "a", "completion": "b"}]).name
        'train_hashes.safetensors'
    """
    from safetensors.numpy import save_file

    from nbft._utils import atomic_path

    hashes = data if data is None or isinstance(data, TrainingHashes) else training_hashes(data)
    if hashes is None:
        logger.warning(
            "the training data has no prompt/completion text (or content_hash column) to hash; compare() will say "
            "'overlap not checked' for this run. Tokenize with nbft.data.tokenize_for_training to keep it"
        )
        return None
    path = Path(folder) / HASHES_FILE
    meta = {
        "format": _FORMAT,
        "normalisation": "NFKC, lower case, whitespace collapsed; 64-bit blake2b of prompt + U+001F + completion",
        "ngram_n": str(hashes.ngram_n),
        "n_examples": str(hashes.n_examples),
        "has_text": json.dumps(hashes.has_text),
    }
    with atomic_path(path) as tmp:
        save_file({"examples": hashes.examples, "ngrams": hashes.ngrams}, str(tmp), metadata=meta)
    return path


def read_training_hashes(path: str | Path) -> TrainingHashes:
    """Read a ``train_hashes.safetensors`` file (or the run directory / its ``data`` folder that holds one).

    Example:
        >>> _ = write_training_hashes("/tmp/nbft-doc-read/data", [{"prompt": "a", "completion": "b"}])
        >>> read_training_hashes("/tmp/nbft-doc-read").n_examples
        1
    """
    from safetensors import safe_open

    path = Path(path)
    for candidate in (path, path / HASHES_FILE, path / "data" / HASHES_FILE):
        if candidate.is_file():
            path = candidate
            break
    else:
        raise FileNotFoundError(f"no {HASHES_FILE} at {path} (nor in its data/ folder)")
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an nbft training-hashes file (format {meta.get('format')!r})")
        examples, ngrams = f.get_tensor("examples"), f.get_tensor("ngrams")
    return TrainingHashes(
        examples,
        ngrams,
        int(meta.get("n_examples", len(examples))),
        json.loads(meta.get("has_text", "true")),
        int(meta.get("ngram_n", NGRAM_N)),
        str(path.parent.parent if path.parent.name == "data" else path.parent),
    )
