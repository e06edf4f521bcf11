"""No path nbft offers trains on an example that compare() scores: notebooks, DatasetBuilder, Task.train, from_data.

The notebooks' data cells (tagged ``data``) run here with tiny parameters, as the notebook tests run them, and every
dataset they make is checked, by content hash and 13-gram, against the test split of every offline task.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import pytest

import nbft
from nbft import sources
from nbft.data import build_instruction_dataset, split_examples
from nbft.evaluate import Task, find_overlap, get_task
from nbft.hashes import training_hashes

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture
def wheels(nbft_cache, monkeypatch):
    monkeypatch.setenv("NBFT_CACHE", str(nbft_cache))
    return nbft_cache


def _leaks(data) -> dict[str, int]:
    """Overlapping examples per offline task between ``data`` (any training set) and that task's test split."""
    hashes = training_hashes(data)
    assert hashes is not None
    out = {}
    for name in nbft.list_tasks(offline_only=True):
        task = get_task(name)
        flags = find_overlap(task, list(task.load()["test"]), hashes)
        out[name] = sum(bool(f) for f in flags)
    return out


def _training_sets(namespace: dict) -> dict[str, object]:
    found = {}
    for key, value in namespace.items():
        if isinstance(value, datasets.DatasetDict):
            for split, ds in value.items():
                found[f"{key}[{split!r}]"] = ds
        elif isinstance(value, datasets.Dataset) and {"prompt", "completion"} <= set(value.column_names):
            found[key] = value
    return found


@pytest.mark.parametrize("task", ["sentiment", "qa"])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_data_cells_never_train_on_a_scored_example(path, task, wheels, monkeypatch):
    from nbft.models import tiny_random

    monkeypatch.setenv("NBFT_NOTEBOOK_TASK", task)
    monkeypatch.setenv("NBFT_NOTEBOOK_N", "120")
    monkeypatch.setenv("NBFT_NOTEBOOK_MODEL", "tiny")
    monkeypatch.chdir(os.environ.get("TMPDIR", "/tmp"))
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    cells = [*params, *[c for c in code if "data" in c.metadata.get("tags", [])]]
    assert len(params) == 1, f"{path.name} needs one cell tagged 'parameters'"
    assert len(cells) > 1, f"{path.name} has no cell tagged 'data'"
    _, tokenizer = tiny_random("llama")
    namespace: dict = {"tokenizer": tokenizer, "display": lambda *a, **k: None}
    for cell in cells:
        exec(compile(cell.source, f"{path.name}", "exec"), namespace)
    built = _training_sets(namespace)
    assert built, f"the data cells of {path.name} built no dataset"
    for name, data in built.items():
        assert not any(_leaks(data).values()), f"{path.name}: {name} holds test examples: {_leaks(data)}"


def test_dataset_builder_default_path_never_holds_a_test_example(wheels):
    from nbft.widgets import DatasetBuilder

    for task in ("sentiment", "qa", "reply"):
        data = DatasetBuilder(task=task, n=150).build()
        assert set(data) == {"train", "validation"}  # the test split stays with the task
        for split, ds in data.items():
            assert not any(_leaks(ds).values()), (task, split)


def test_task_train_uses_only_the_train_split(wheels):
    task = get_task("sentiment")
    data = task.train(n=300)
    assert len(data) == 300 and set(data["task"]) == {"sentiment"}
    assert len(set(data["template_id"])) > 1  # every phrasing of the task, as in FLAN
    train_texts = set(task.load()["train"]["text"])
    assert all(any(t in p for t in train_texts) for p in data["prompt"][:20])
    assert not any(_leaks(data).values())
    assert build_instruction_dataset(task="sentiment", n=300)["train"]["prompt"] == data["prompt"]


def test_the_old_notebook_path_is_caught(wheels):
    """The check itself can fail: re-splitting a task's raw data (what notebooks 02/03 did) leaks test examples."""
    raw = sources.load_builtin("sentiment", n=800)
    old = build_instruction_dataset(raw, "sentiment", seed=0)  # its own split, not the task's
    assert _leaks(old["train"])["sentiment"] > 0


def test_from_data_and_build_instruction_dataset_split_your_data_the_same_way():
    rows = [{"text": f"review {i} {'good' if i % 2 else 'bad'}", "label": ["negative", "positive"][i % 2]}
            for i in range(60)]  # fmt: skip
    built = build_instruction_dataset(rows, "sentiment", seed=3)
    task = Task.from_data(list(reversed(rows)), template="sentiment/1", seed=3)  # order does not matter
    test_texts = set(task.load()["test"]["text"])
    assert len(test_texts) == 6
    assert not any(any(t in p for t in test_texts) for p in built["train"]["prompt"])
    assert not any(find_overlap(task, task.sample(), training_hashes(built["train"])))
    # and the split is the one function's
    again = split_examples(datasets.Dataset.from_list(rows), seed=3, key_fields=["label", "text"], stratify="label")
    assert set(again["test"]["text"]) == test_texts
