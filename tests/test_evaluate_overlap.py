"""Train/test overlap: training hashes written by a run, exact and 13-gram matches, left out of the table by default."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

import nbft
from nbft.data import build_instruction_dataset, tokenize_for_training
from nbft.evaluate import Task, TaskError, compare_models, find_overlap
from nbft.hashes import HASHES_FILE, content_hash, read_training_hashes, training_hashes
from nbft.models import tiny_random
from nbft.train import TrainConfig, finetune

LABELS = ["negative", "neutral", "positive"]


def _sentiment_task(name="toy-sentiment", n_train=30, n_test=12):
    rows = [{"text": f"tweet number {i} says {'!' * (i % 4)}", "label": LABELS[i % 3]} for i in range(n_train + n_test)]
    return Task(
        name,
        datasets.DatasetDict(
            {"train": datasets.Dataset.from_list(rows[:n_train]), "test": datasets.Dataset.from_list(rows[n_train:])}
        ),
        "sentiment/1",
        max_new_tokens=3,
    )


LONG = (
    "the committee met on tuesday morning to discuss the new budget for the city library and agreed to open "
    "a second reading room next spring after a long debate about costs number {i}"
)


def _summary_task(n=10):
    rows = [
        {"dialogue": f"A: {LONG.format(i=i)}\nB: ok, noted {i}.", "summary": f"They agree on library plan {i}."}
        for i in range(2 * n)
    ]
    return Task(
        "toy-summaries",
        datasets.DatasetDict(
            {"train": datasets.Dataset.from_list(rows[:n]), "test": datasets.Dataset.from_list(rows[n:])}
        ),
        "summarize/1",
        metrics=("rouge",),
        max_new_tokens=4,
    )


@pytest.fixture(scope="module")
def tiny():
    return tiny_random("llama", seed=0)


# --------------------------------------------------------------------------------------------------- hashes
def test_content_hash_ignores_case_and_spacing_not_words():
    assert content_hash("Text: Hi!\nSentiment:", "positive") == content_hash("text:   hi! sentiment:\n", "Positive")
    assert content_hash("Text: Hi!\nSentiment:", "positive") != content_hash("Text: Ho!\nSentiment:", "positive")
    assert content_hash("a", "bc") != content_hash("ab", "c")  # the boundary between prompt and completion counts


def test_hashes_survive_tokenization(tiny):
    _, tok = tiny
    data = build_instruction_dataset(task=_sentiment_task(), n=10)["train"]
    tokenized = tokenize_for_training(data, tok, max_length=64)
    only_tokens = tokenized.select_columns(["input_ids", "labels", "content_hash"])
    from_text, from_tokens = training_hashes(data), training_hashes(only_tokens)
    assert np.array_equal(from_text.examples, from_tokens.examples)
    assert from_text.has_text and not from_tokens.has_text  # exact matches only once the text is gone
    assert training_hashes(tokenized.select_columns(["input_ids", "labels"])) is None


def test_finetune_writes_training_hashes(tiny, tmp_path):
    model, tok = tiny_random("llama", seed=0)
    data = build_instruction_dataset(task=_sentiment_task(), n=12)
    run = finetune(model, tok, data["train"], config=TrainConfig(max_steps=1, batch_size=4), run_dir=tmp_path / "r")
    run.wait()
    path = tmp_path / "r" / "data" / HASHES_FILE
    assert path.exists()
    hashes = read_training_hashes(tmp_path / "r")
    assert hashes.n_examples == 12 and hashes.has_text
    assert all(hashes.contains_example(content_hash(p, c)) for p, c in zip(data["train"]["prompt"],
                                                                            data["train"]["completion"]))  # fmt: skip


# --------------------------------------------------------------------------------------------------- matching
def test_planted_exact_duplicates_under_any_phrasing_are_found():
    task = _sentiment_task()
    test = task.sample()
    clean = build_instruction_dataset(task=task, n=30)["train"]
    # three test examples planted in the training data, each under a different phrasing than the task's template
    planted = [
        {"prompt": nbft.get_template(t).render(test[i]), "completion": test[i]["label"]}
        for i, t in ((1, "sentiment/2"), (4, "sentiment/3"), (7, "sentiment/1"))
    ]
    leaked = datasets.concatenate_datasets(
        [clean.select_columns(["prompt", "completion"]), datasets.Dataset.from_list(planted)]
    )
    flags = find_overlap(task, test, training_hashes(leaked))
    assert [i for i, f in enumerate(flags) if f] == [1, 4, 7]
    assert {flags[i] for i in (1, 4, 7)} == {"exact"}
    assert not any(find_overlap(task, test, training_hashes(clean)))


def test_planted_near_duplicates_are_found_by_13_grams():
    task = _summary_task()
    test = task.sample()
    near = dict(test[2])
    near["dialogue"] = near["dialogue"].replace("tuesday", "wednesday")  # one word changed: no exact match
    unrelated = {"dialogue": "A: short chat about the weather\nB: fine", "summary": "Weather."}
    # 12 consecutive words of a test dialogue ("A" and 11 more) are not enough: below the 13-gram threshold
    eleven = " ".join(LONG.split()[:11])
    below = {"dialogue": f"A: {eleven} zzz\nB: ok", "summary": "Something else."}
    train = build_instruction_dataset([near, unrelated, below], "summarize/1", split=(1.0, 0.0, 0.0))["train"]
    flags = find_overlap(task, test, training_hashes(train))
    assert flags[2] == "13-gram"
    exact = build_instruction_dataset([test[5]], "summarize/2", split=(1.0, 0.0, 0.0))["train"]
    assert find_overlap(task, test, training_hashes(exact))[5] == "exact"
    below_only = build_instruction_dataset([unrelated, below], "summarize/1", split=(1.0, 0.0, 0.0))["train"]
    assert not any(find_overlap(task, test, training_hashes(below_only)))


# --------------------------------------------------------------------------------------------------- compare
def _leaky_training_set(task, test_idx):
    test = task.sample()
    clean = build_instruction_dataset(task=task, n=20)["train"]
    planted = build_instruction_dataset([test[i] for i in test_idx], "sentiment/2", split=(1.0, 0.0, 0.0))["train"]
    return datasets.concatenate_datasets([clean, planted])


def test_compare_leaves_overlapping_examples_out_and_says_so(tiny):
    model, tok = tiny
    task = _sentiment_task()
    leaked = _leaky_training_set(task, [0, 3, 8])
    results = compare_models({"base": model, "tuned": model}, [task], n=None, tokenizer=tok, progress=False,
                             training_data={"tuned": leaked}, n_boot=100)  # fmt: skip
    info = results["tasks"]["toy-sentiment"]["overlap"]
    assert info == {"n_sampled": 12, "n_overlap": 3, "by_model": {"tuned": {"exact": 3}}, "left_out": 3}
    scored = results["scores"]["toy-sentiment"]
    assert scored["base"]["n"] == scored["tuned"]["n"] == 9
    assert sorted(scored["base"]["positions"]) == sorted(set(range(12)) - {0, 3, 8})
    assert any("3 of 12 sampled test examples are in the training data" in n and "left out" in n
               for n in results["notes"])  # fmt: skip
    kept = compare_models({"base": model, "tuned": model}, [task], n=None, tokenizer=tok, progress=False,
                          training_data={"tuned": leaked}, keep_overlap=True, n_boot=100)  # fmt: skip
    assert kept["scores"]["toy-sentiment"]["tuned"]["n"] == 12
    flags = kept["examples"]["toy-sentiment"]["overlap"]
    assert [i for i, f in enumerate(flags) if f] == [0, 3, 8] and flags[0] == "tuned: exact"
    assert any("keep_overlap=True" in n for n in kept["notes"])


def test_overlap_is_read_from_a_run_its_directory_and_its_saved_model(tmp_path):
    model, tok = tiny_random("llama", seed=0)
    task = _sentiment_task()
    leaked = _leaky_training_set(task, [2, 5])
    run = finetune(model, tok, leaked, config=TrainConfig(max_steps=1, batch_size=4), run_dir=tmp_path / "run")
    run.wait()
    loaded, _ = nbft.load_model(str(tmp_path / "run" / "model"))
    base, _ = tiny_random("llama", seed=0)
    for spec in (run, str(tmp_path / "run"), str(tmp_path / "run" / "model"), (loaded, tok)):
        results = compare_models({"base": (base, tok), "tuned": spec}, [task], n=None, tokenizer=tok,
                                 progress=False, n_boot=100)  # fmt: skip
        assert results["tasks"]["toy-sentiment"]["overlap"]["left_out"] == 2, spec
        assert results["models"]["tuned"]["training"]["checked"]
    clean = build_instruction_dataset(task=task, n=20)["train"]
    results = compare_models({"base": (base, tok), "tuned": (base, tok)}, [task], n=None, progress=False, n_boot=100,
                             training_data={"tuned": clean})  # fmt: skip
    assert any("'tuned': every test example was checked" in n and "no overlap" in n for n in results["notes"])


def test_bare_model_says_overlap_not_checked(tiny):
    model, tok = tiny
    table = nbft.compare({"base": model, "tuned": model}, [_sentiment_task()], n=4, tokenizer=tok, progress=False,
                         n_boot=100)  # fmt: skip
    assert any(n.startswith("'tuned': overlap not checked") for n in table.notes)
    assert "overlap not checked" in table.to_text() and "overlap not checked" in table._repr_html_()
    assert table.results["models"]["tuned"]["training"]["checked"] is False


def test_user_data_overlapping_a_builtin_test_split_is_caught(tiny, nbft_cache, monkeypatch):
    monkeypatch.setenv("NBFT_CACHE", str(nbft_cache))
    model, tok = tiny
    test = nbft.get_task("sentiment").sample(40)  # compare(n=40) draws the same examples
    # your own tweets, with 5 that happen to be in the built-in test split
    mine = [{"text": f"my own tweet {i} about trains", "label": LABELS[i % 3]} for i in range(40)]
    mine += [{"text": test[i]["text"], "label": test[i]["label"]} for i in (3, 9, 17, 21, 33)]
    data = build_instruction_dataset(mine, "sentiment", split=(1.0, 0.0, 0.0))
    results = compare_models({"base": model, "tuned": model}, ["sentiment"], n=40, tokenizer=tok, progress=False,
                             training_data={"tuned": data}, scoring="loglik", n_boot=100)  # fmt: skip
    assert results["tasks"]["sentiment"]["overlap"]["n_overlap"] == 5
    assert results["scores"]["sentiment"]["tuned"]["n"] == 35


# --------------------------------------------------------------------------------------------------- bad input
def test_bad_training_data_inputs(tiny):
    model, tok = tiny
    task = _sentiment_task()
    with pytest.raises(ValueError, match="training_data names \\['tunde'\\].*Did you mean 'tuned'"):
        compare_models({"base": model, "tuned": model}, [task], tokenizer=tok, training_data={"tunde": []})
    tokens_only = datasets.Dataset.from_list([{"input_ids": [1, 2], "labels": [1, 2]}])
    with pytest.raises(ValueError, match="no prompt/completion text"):
        compare_models({"base": model, "tuned": model}, [task], tokenizer=tok, training_data={"tuned": tokens_only})
    with pytest.raises(FileNotFoundError, match="holds no train_hashes.safetensors"):
        compare_models({"base": model, "tuned": model}, [task], tokenizer=tok, training_data={"tuned": "/nonexistent"})
    everything = build_instruction_dataset(task.sample(), "sentiment/1", split=(1.0, 0.0, 0.0))
    with pytest.raises(TaskError, match="nothing is left to score.*keep_overlap=True"):
        compare_models({"base": model, "tuned": model}, [task], tokenizer=tok, n=None, progress=False,
                       training_data={"tuned": everything})  # fmt: skip
