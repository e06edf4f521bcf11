"""Train/test overlap: which test examples a tuned model may have seen in training.

A run records the content hashes of its training examples (:mod:`nbft.hashes`, ``<run_dir>/data/train_hashes.
safetensors``). Before scoring, :func:`nbft.compare` finds, for every tuned model, the hashes of what it was trained
on, from the value given for it in ``models`` (a run directory, a ``Run`` handle, a model loaded from
``<run_dir>/model``) or from ``training_data={name: dataset}``, and checks every sampled test example two ways:

- **exact**: the example rendered with its task's template, or with any other phrasing of the same template family
  (training sets built with :func:`nbft.build_instruction_dataset` mix phrasings), hashes like a training example;
- **13-gram**: a 13-word window of the example's input fields or of its reference text also occurs in a training
  example (the GPT-3 contamination signal; it catches near duplicates of longer texts).

A model whose training data cannot be found (a bare model object) is reported as "overlap not checked".

Example::

    from nbft.evaluate.overlap import find_overlap, training_source
    source = training_source("runs/sentiment-1")             # reads runs/sentiment-1/data/train_hashes.safetensors
    flags = find_overlap(get_task("sentiment"), examples, source.hashes)   # ['', 'exact', '', '13-gram', ...]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nbft.hashes import HASHES_FILE, TrainingHashes, content_hash, ngram_hashes, read_training_hashes, training_hashes

__all__ = ["TrainingSource", "find_overlap", "training_source"]

EXACT, NGRAM = "exact", "13-gram"


@dataclasses.dataclass
class TrainingSource:
    """What a model was trained on, as far as nbft can tell: a label for people and the hashes (``None``: unknown)."""

    label: str
    hashes: TrainingHashes | None

    @property
    def known(self) -> bool:
        return self.hashes is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "checked": self.known,
            "n_examples": self.hashes.n_examples if self.hashes else None,
            "ngrams": bool(self.hashes and self.hashes.has_text),
        }


def _hashes_near(folder: Path) -> Path | None:
    """The training-hashes file of a run directory, or of the run a model folder sits in (``<run_dir>/model``)."""
    for base in (folder, folder.parent, folder.parent.parent):
        candidate = base / "data" / HASHES_FILE
        if candidate.is_file():
            return candidate
    return None


def _folder_of(spec: Any) -> Path | None:
    if isinstance(spec, (str, Path)) or hasattr(spec, "__fspath__"):
        path = Path(spec)
        return path if path.exists() else None
    run_dir = getattr(spec, "run_dir", None)  # a training Run handle
    if run_dir is not None:
        return Path(run_dir)
    loaded_from = getattr(spec, "name_or_path", None) or getattr(getattr(spec, "config", None), "_name_or_path", None)
    if loaded_from and Path(str(loaded_from)).is_dir():
        return Path(str(loaded_from))
    return None


def training_source(spec: Any, training_data: Any = None) -> TrainingSource:
    """Find what the model ``spec`` was trained on.

    ``training_data`` (given explicitly) wins: a ``Dataset``/``DatasetDict``/list of prompt-completion rows, a run
    directory, a hashes file, or :class:`~nbft.hashes.TrainingHashes`. Otherwise ``spec`` is looked at: a run
    directory or a ``Run`` handle, a model folder inside a run directory, or a model object loaded from one.

    Example::

        training_source(run).label           # 'run runs/sentiment-1, 320 examples'
        training_source(model).known         # False for a model object whose training data is unknown
    """
    if training_data is not None:
        return _explicit(training_data)
    if isinstance(spec, tuple) and len(spec) == 2:
        spec = spec[0]
    folder = _folder_of(spec)
    path = _hashes_near(folder) if folder is not None else None
    if path is None:
        return TrainingSource("unknown", None)
    hashes = read_training_hashes(path)
    return TrainingSource(f"run {hashes.source}, {hashes.n_examples} examples", hashes)


def _explicit(data: Any) -> TrainingSource:
    if isinstance(data, TrainingSource):
        return data
    if isinstance(data, TrainingHashes):
        return TrainingSource(data.source or f"{data.n_examples} examples", data)
    if isinstance(data, (str, Path)) or hasattr(data, "__fspath__"):
        path = Path(data)
        found = path if path.is_file() else _hashes_near(path)
        if found is None:
            raise FileNotFoundError(
                f"training_data={str(data)!r} holds no {HASHES_FILE} (a run directory written by nbft.finetune has "
                "one in data/); pass the training dataset itself instead"
            )
        hashes = read_training_hashes(found)
        return TrainingSource(f"run {hashes.source}, {hashes.n_examples} examples", hashes)
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, TrainingHashes) for d in data):
        merged = data[0]
        for other in data[1:]:
            merged = merged.merged(other)
        return TrainingSource(f"{merged.n_examples} examples", merged)
    hashes = training_hashes(data)
    if hashes is None:
        raise ValueError(
            "training_data has no prompt/completion text (nor a content_hash column) to check test examples "
            "against; pass the dataset you trained on, as built by nbft.build_instruction_dataset"
        )
    return TrainingSource(f"a dataset of {hashes.n_examples} examples", hashes)


def _phrasings(task: Any) -> list[Any]:
    from nbft.templates import phrasings

    return phrasings(task.template)


def find_overlap(task: Any, examples: Sequence[Mapping[str, Any]], hashes: TrainingHashes | None) -> list[str]:
    """Per test example: ``"exact"``, ``"13-gram"`` or ``""`` (no overlap found) against a training set's hashes.

    Example::

        find_overlap(task, task.sample(50), training_hashes(train_dataset))
    """
    if hashes is None:
        return [""] * len(examples)
    phrasings = _phrasings(task)
    out = []
    for ex in examples:
        flag = ""
        for t in phrasings:
            try:
                h = content_hash(t.render(ex), t.completion(ex))
            except Exception:
                continue
            if hashes.contains_example(h):
                flag = EXACT
                break
        if not flag and hashes.has_text:
            texts = [str(ex.get(f, "")) for f in task.template.fields] + [task.reference(ex)]
            if any(hashes.shares_ngram(ngram_hashes(text, hashes.ngram_n)) for text in texts):
                flag = NGRAM
        out.append(flag)
    return out
