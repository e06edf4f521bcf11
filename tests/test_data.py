import json
from collections import Counter

import datasets
import pandas as pd
import pytest

from nbft.data import (
    DataError,
    OfflineError,
    build_instruction_dataset,
    length_stats,
    load_source,
    mix,
    mix_report,
    save_dataset,
    split_examples,
    tokenize_for_training,
)
from nbft.templates import TemplateError

LABELS = ["negative", "neutral", "positive"]


def sentiment_rows(n=90):
    return [{"text": f"tweet number {i} about things", "label": LABELS[i % 3]} for i in range(n)]


def qa_rows(n=30):
    return [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(n)]


# ---- loading ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
def test_load_local_files(tmp_path, fmt):
    frame = pd.DataFrame(qa_rows(5))
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=fmt == "jsonl")
    ds = load_source(str(path))
    assert ds.num_rows == 5 and ds[2]["answer"] == "It is 4."


def test_load_dataframe_list_dataset_and_dict():
    frame = pd.DataFrame(qa_rows(4))
    assert load_source(frame).column_names == ["question", "answer"]
    assert load_source(qa_rows(4)).num_rows == 4
    ds = datasets.Dataset.from_list(qa_rows(4))
    assert load_source(ds) is ds
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    assert load_source(dd).num_rows == 5


def test_saved_folder_round_trip(tmp_path):
    data = build_instruction_dataset(qa_rows(), "qa")
    folder = save_dataset(data, tmp_path / "saved")
    again = datasets.load_from_disk(str(folder))
    assert again["test"]["example_id"] == data["test"]["example_id"]
    assert load_source(str(folder)).num_rows == sum(d.num_rows for d in data.values())


def test_export_jsonl_and_parquet(tmp_path):
    data = build_instruction_dataset(qa_rows(), "qa")
    out = save_dataset(data, tmp_path / "jsonl", "jsonl")
    lines = (out / "train.jsonl").read_text().splitlines()
    assert len(lines) == data["train"].num_rows and json.loads(lines[0])["prompt"] == data["train"][0]["prompt"]
    out = save_dataset(data["test"], tmp_path / "test.parquet", "parquet")
    assert pd.read_parquet(out)["completion"].tolist() == data["test"]["completion"]


def test_empty_source_is_refused(tmp_path):
    with pytest.raises(DataError, match="no examples"):
        load_source([])
    path = tmp_path / "empty.csv"
    path.write_text("question,answer\n")
    with pytest.raises(DataError, match="no examples|could not read"):
        build_instruction_dataset(str(path), "qa")


def test_unsupported_extension_and_unreadable_file(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type '.xlsx'.*\.csv"):
        load_source(str(path))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match=r"could not read .*bad.parquet as parquet"):
        load_source(str(bad))
    with pytest.raises(DataError, match="file not found"):
        load_source(str(tmp_path / "missing.csv"))


def test_hub_name_offline_gives_clear_error():
    with pytest.raises(OfflineError, match=r"cannot reach it.*local data"):
        load_source("knkarthick/dialogsum")


# ---- building --------------------------------------------------------------------------------------------


def test_build_columns_splits_and_phrasings():
    data = build_instruction_dataset(sentiment_rows(), "sentiment", seed=3)
    assert set(data) == {"train", "validation", "test"}
    assert [data[s].num_rows for s in ("train", "validation", "test")] == [72, 9, 9]
    for split in data.values():
        assert split.column_names == ["prompt", "completion", "task", "template_id", "example_id"]
    ids = [set(d["example_id"]) for d in data.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    # several phrasings are used, and each prompt was rendered by the template it names
    used = Counter(data["train"]["template_id"])
    assert len(used) >= 3
    row = data["train"][0]
    assert row["prompt"].endswith("\n") and row["completion"] in LABELS


def test_split_is_stratified_for_classification():
    rows = [{"text": f"t{i}", "label": "positive" if i % 5 else "negative"} for i in range(100)]
    data = build_instruction_dataset(rows, "sentiment", split=(0.6, 0.2, 0.2))
    for split in data.values():
        share = Counter(split["completion"])["negative"] / split.num_rows
        assert share == pytest.approx(0.2, abs=0.01)


def test_same_seed_same_dataset_other_seed_differs():
    a = build_instruction_dataset(sentiment_rows(), "sentiment", seed=1)
    b = build_instruction_dataset(sentiment_rows(), "sentiment", seed=1)
    c = build_instruction_dataset(sentiment_rows(), "sentiment", seed=2)
    assert a["train"].to_list() == b["train"].to_list()
    assert a["train"]["template_id"] != c["train"]["template_id"]


def test_split_keeps_near_duplicates_together_and_ignores_row_order():
    news = "the city council voted on tuesday to open a second public library in the old train station"
    rows = [{"text": f"plain review number {i}", "label": LABELS[i % 3]} for i in range(60)]
    rows += [{"text": f"{news} {i} http://t.co/a{i}", "label": "neutral"} for i in range(4)]  # one story, 4 links
    rows += [{"text": "PLAIN   review number 7", "label": LABELS[7 % 3]}]  # a duplicate but for case and spacing
    ds = datasets.Dataset.from_list(rows)
    splits = split_examples(ds, (0.8, 0.1, 0.1), seed=0, stratify="label")
    assert sum(s.num_rows for s in splits.values()) == 64  # the case/spacing duplicate is dropped
    sides = {name for name, s in splits.items() for t in s["text"] if t.startswith(news)}
    assert len(sides) == 1  # the four near duplicates are on one side
    shuffled = split_examples(ds.shuffle(seed=5), (0.8, 0.1, 0.1), seed=0, stratify="label")
    assert {k: sorted(v["text"]) for k, v in shuffled.items()} == {k: sorted(v["text"]) for k, v in splits.items()}


def test_example_id_is_stable_and_duplicates_are_dropped():
    rows = qa_rows(20)
    data = build_instruction_dataset(rows + rows[:5], "qa", seed=0)
    assert sum(d.num_rows for d in data.values()) == 20
    other = build_instruction_dataset(list(reversed(rows)), "qa", seed=9)
    all_ids = lambda d: sorted(i for s in d.values() for i in s["example_id"])  # noqa: E731
    assert all_ids(data) == all_ids(other)


def test_empty_completions_are_refused_with_count_and_examples():
    rows = qa_rows(10)
    rows[3]["answer"] = "  "
    rows[7]["answer"] = ""
    with pytest.raises(DataError, match=r"2 of 10 examples have an empty completion.*'question': 'What is 3"):
        build_instruction_dataset(rows, "qa")


def test_columns_mapping_and_missing_field_message():
    rows = [{"q": f"q{i}", "a": f"a{i}"} for i in range(10)]
    with pytest.raises(TemplateError, match=r"needs the field 'question'.*\['q', 'a'\]"):
        build_instruction_dataset(rows, "qa")
    data = build_instruction_dataset(rows, "qa", columns={"question": "q", "answer": "a"})
    assert "q0" in "".join(p for d in data.values() for p in d["prompt"])


def test_label_outside_choices_and_non_string_target():
    rows = sentiment_rows(9)
    rows[4]["label"] = "angry"
    with pytest.raises(TemplateError, match="'angry'.*not one of"):
        build_instruction_dataset(rows, "sentiment")
    with pytest.raises(TemplateError, match="holds int values"):
        build_instruction_dataset([{"question": "q", "answer": 1}] * 3, "qa")


# ---- mixing ----------------------------------------------------------------------------------------------


def _task_ds(name, n):
    return datasets.Dataset.from_dict({"prompt": [f"{name}{i}" for i in range(n)], "task": [name] * n})


@pytest.mark.parametrize("total", [10, 37, 101, 250])
def test_mix_ratios_are_exact_within_one(total):
    parts = {"a": _task_ds("a", 300), "b": _task_ds("b", 300), "c": _task_ds("c", 300)}
    ratios = {"a": 0.5, "b": 0.3, "c": 0.2}
    mixed = mix(parts, ratios, total=total, seed=0)
    assert mixed.num_rows == total
    counts = Counter(mixed["task"])
    for k, r in ratios.items():
        assert abs(counts[k] - r * total) <= 1
    assert len(set(mixed["prompt"])) == total  # no example repeated
    report = mix_report(mixed)
    assert report.set_index("task")["n"].to_dict() == dict(counts)


def test_mix_replay_and_default_total():
    parts = {k: _task_ds(k, n) for k, n in [("target", 90), ("old1", 40), ("old2", 40)]}
    mixed = mix(parts, replay=0.1, seed=1)
    counts = Counter(mixed["task"])
    assert counts["target"] == 90 and counts["old1"] == 5 and counts["old2"] == 5
    assert mixed["task"][:20] != sorted(mixed["task"][:20])  # shuffled


def test_mix_bad_input():
    parts = {"a": _task_ds("a", 10), "b": _task_ds("b", 10)}
    with pytest.raises(DataError, match="needs more examples.*at most 20 keeps"):
        mix(parts, {"a": 0.5, "b": 0.5}, total=50)
    with pytest.raises(DataError, match=r"not among the datasets"):
        mix(parts, {"a": 1, "z": 1})
    with pytest.raises(DataError, match="either ratios= or replay="):
        mix(parts, {"a": 1}, replay=0.1)


# ---- tokenization ----------------------------------------------------------------------------------------


def _labelled_text(tok, row):
    return tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])


@pytest.mark.parametrize("chat", [False, True])
def test_label_mask_covers_exactly_the_completion(tiny_llama, chat):
    _, tok = tiny_llama
    data = build_instruction_dataset(qa_rows(), "qa")
    tokenized = tokenize_for_training(data["train"], tok, max_length=512, chat_template=chat)
    for row in tokenized:
        assert len(row["input_ids"]) == len(row["labels"]) == row["length"]
        assert _labelled_text(tok, row) == row["completion"] + tok.eos_token
        masked = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab == -100]
        assert row["prompt"].rstrip("\n") in tok.decode(masked)
        # the mask is one block: prompt first, then only labelled tokens
        first = row["labels"].index(next(lab for lab in row["labels"] if lab != -100))
        assert all(lab == -100 for lab in row["labels"][:first])
        assert all(lab != -100 for lab in row["labels"][first:])


def test_label_mask_with_real_bpe_tokenizer(default_model):
    _, tok = default_model
    data = build_instruction_dataset(sentiment_rows(30), "sentiment")
    for chat in (False, True):
        for row in tokenize_for_training(data["train"], tok, max_length=256, chat_template=chat):
            labelled = _labelled_text(tok, row)
            assert labelled.startswith(row["completion"]) and labelled.endswith(tok.eos_token)


def test_seq2seq_tokenization(tiny_t5):
    _, tok = tiny_t5
    data = build_instruction_dataset(qa_rows(), "qa")
    row = tokenize_for_training(data["train"], tok)[0]
    assert tok.decode(row["input_ids"], skip_special_tokens=True) == row["prompt"]
    assert tok.decode(row["labels"], skip_special_tokens=True) == row["completion"]
    assert row["labels"][-1] == tok.eos_token_id and -100 not in row["labels"]


def test_seq2seq_tokenizer_in_causal_mode_is_refused(tiny_t5):
    _, tok = tiny_t5
    data = build_instruction_dataset(qa_rows(), "qa")
    with pytest.raises(DataError, match=r"mode='causal' but the tokenizer .* seq2seq model.*mode='seq2seq'"):
        tokenize_for_training(data["train"], tok, mode="causal")


def test_truncation_report_names_examples_and_needed_length(tiny_llama):
    _, tok = tiny_llama
    rows = [{"question": "short?", "answer": "ok"}] * 1 + [
        {"question": "a much longer question " * (i + 2), "answer": "fine"} for i in range(6)
    ]
    ds = build_instruction_dataset(rows, "qa/1", split=(1.0, 0.0, 0.0))["train"]
    full = [len(tok(p)["input_ids"]) + len(tok(c)["input_ids"]) + 1 for p, c in zip(ds["prompt"], ds["completion"])]
    limit = sorted(full)[3]
    tokenized, report = tokenize_for_training(ds, tok, max_length=limit, return_report=True)
    over = [eid for eid, n in zip(ds["example_id"], full) if n > limit]
    assert report.n_over == len(over) == 3 and sorted(report.over_ids) == sorted(over)
    assert report.kept_all_at == max(full)
    assert f"max_length={max(full)} would keep them all" in str(report)
    assert max(tokenized["length"]) == limit
    # truncation keeps the whole completion and the end of the prompt (the cue before the answer)
    for row in tokenized:
        assert _labelled_text(tok, row) == row["completion"] + tok.eos_token
        assert "Answer:\n" in tok.decode(row["input_ids"])
    dropped, report = tokenize_for_training(ds, tok, max_length=limit, overflow="drop", return_report=True)
    assert dropped.num_rows == 4 and sorted(set(ds["example_id"]) - set(dropped["example_id"])) == sorted(over)


def test_every_example_over_max_length_is_refused(tiny_llama):
    _, tok = tiny_llama
    ds = build_instruction_dataset(qa_rows(), "qa")["train"]
    with pytest.raises(DataError, match=r"every example \(\d+\) is longer than max_length=8.*at least \d+"):
        tokenize_for_training(ds, tok, max_length=8, overflow="drop")


def test_length_stats_per_split_and_task(tiny_llama):
    _, tok = tiny_llama
    data = build_instruction_dataset(qa_rows(), "qa")
    stats = length_stats(data, tok)
    assert list(stats["split"]) == ["train", "validation", "test"]
    train = data["train"]
    expect = max(
        len(tok(p)["input_ids"]) + len(tok(c)["input_ids"]) + 1 for p, c in zip(train["prompt"], train["completion"])
    )
    assert stats.loc[0, "total_max"] == expect and stats.loc[0, "n"] == train.num_rows
