"""One dataset, one set of settings (issue 17): the builder's label mask is training's own cut; the builder's
tokenization settings travel with its dataset (through save and load) to finetune, TrainPanel, run.json, compare and
the ForgettingMonitor, which warn when a model is evaluated in another prompt format; no builder view is stale or
shows the previous task's example; truncation is reported per task."""

from __future__ import annotations

import json
import logging

import datasets
import pytest

from nbft.config import TrainConfig
from nbft.data import build_instruction_dataset, save_dataset, tokenize_for_training
from nbft.dataset_settings import (
    TokenizationSettings,
    read_saved_settings,
    settings_of,
    trained_settings,
    training_cut,
    with_settings,
)
from nbft.models import tiny_random
from nbft.train import finetune
from nbft.widgets import DatasetBuilder, TrainPanel

FP32 = {"precision": "fp32"}
LONG = " ".join(f"word{i}" for i in range(120))  # far longer than max_length=68 in tokens


def _qa(n: int = 30, long: bool = False) -> list[dict[str, str]]:
    """Question/answer rows; ``long``: answers of ~120 words, each its own (shared text would make them near
    duplicates, which the split keeps together)."""
    return [
        {
            "question": f"what is {i} plus {i}?",
            "answer": " ".join(f"w{i}x{j}" for j in range(120)) if long else str(2 * i),
        }
        for i in range(n)
    ]


def _counts(row: dict) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of a tokenize_for_training row (labels -100 on the prompt)."""
    prompt = sum(1 for lab in row["labels"] if lab == -100)
    return prompt, len(row["labels"]) - prompt


def _mask_counts(mask_html: str) -> tuple[int, int, int]:
    return (
        mask_html.count("nbft-tok-prompt"),
        mask_html.count("nbft-tok-completion"),
        mask_html.count("nbft-tok-cut"),
    )


def _marked(data: datasets.Dataset, **kw) -> datasets.Dataset:
    return with_settings(data, TokenizationSettings(**kw))


# ------------------------------------------------------------------------------------------- mask view = training
@pytest.mark.parametrize("chat", [False, True])
def test_the_builders_mask_view_is_trainings_cut_for_a_long_completion(chat):
    _, tok = tiny_random("llama")
    builder = DatasetBuilder(_qa(long=True), task="qa", tokenizer=tok, n=0, max_length=68, debounce=0,
                             chat_template=chat)  # fmt: skip
    example = builder._preview_data["train"][0]
    row = tokenize_for_training(
        datasets.Dataset.from_list([example]), tok, max_length=68, chat_template=chat
    )[0]  # fmt: skip
    trained_prompt, trained_completion = _counts(row)
    assert trained_prompt + trained_completion == 68
    shown_prompt, shown_completion, shown_cut = _mask_counts(builder.mask.value)
    # the view is the training cut: same prompt and completion counts (the old view kept 0-4 prompt tokens)
    assert (shown_prompt, shown_completion) == (trained_prompt, trained_completion)
    assert shown_prompt > 4 and shown_cut > 0
    assert f'data-prompt-tokens="{trained_prompt}"' in builder.mask.value
    # and it follows max_length at once (the same function, the same settings)
    builder.max_length.value = 40
    row = tokenize_for_training(datasets.Dataset.from_list([example]), tok, max_length=40, chat_template=chat)[0]
    assert _mask_counts(builder.mask.value)[:2] == _counts(row)


def test_training_cut_matches_tokenize_for_training_for_long_prompts_completions_and_drop():
    _, tok = tiny_random("llama")
    rows = [
        {"prompt": "Short question?\n", "completion": LONG},
        {"prompt": LONG + "\nAnswer:", "completion": "yes"},
        {"prompt": LONG + "\nAnswer:", "completion": LONG},
        {"prompt": "Q\n", "completion": "A"},
    ]
    for max_length in (2, 3, 9, 33, 68, 500):
        tokenized = tokenize_for_training(datasets.Dataset.from_list(rows), tok, max_length=max_length)
        for row, ex in zip(tokenized, rows, strict=True):
            cut = training_cut(tok, ex["prompt"], ex["completion"], max_length=max_length)
            assert row["input_ids"] == cut.prompt + cut.completion, (max_length, ex["prompt"][:10])
    cut = training_cut(tok, "Q\n", LONG, max_length=20, overflow="drop")
    assert cut.dropped and not cut.prompt and not cut.completion


# ------------------------------------------------------------------------------------------- settings travel
def test_the_built_dataset_carries_the_builders_settings_through_save_and_load(tmp_path):
    _, tok = tiny_random("llama")
    builder = DatasetBuilder(_qa(), task="qa", tokenizer=tok, n=0, max_length=68, debounce=0, chat_template=True,
                             overflow="drop")  # fmt: skip
    builder.templates.value = builder.templates.value[:2]
    data = builder.build()
    expected = TokenizationSettings(task="qa", templates=builder.templates.value, chat_template=True, max_length=68,
                                    overflow="drop")  # fmt: skip
    assert builder.settings == expected
    assert all(settings_of(split) == expected for split in data.values())
    # the usual datasets operations keep them
    moved = data["train"].shuffle(seed=1).select(range(5)).map(lambda x: x).filter(lambda x: True)
    assert settings_of(moved) == expected
    # save_dataset and load back: disk keeps the info, JSONL/Parquet folders get nbft-settings.json beside the splits
    save_dataset(data, tmp_path / "disk", "disk")
    assert settings_of(datasets.load_from_disk(str(tmp_path / "disk"))["train"]) == expected
    assert read_saved_settings(tmp_path / "disk") == expected
    save_dataset(data, tmp_path / "jsonl", "jsonl")
    assert read_saved_settings(tmp_path / "jsonl") == expected
    # marking never changes the caller's dataset
    plain = build_instruction_dataset(_qa(), "qa")["train"]
    assert settings_of(_marked(plain, max_length=8)) is not None and settings_of(plain) is None


def test_finetune_tokenizes_with_the_datasets_settings_and_run_json_records_them(tmp_path, caplog):
    model, tok = tiny_random("llama")
    train = _marked(build_instruction_dataset(_qa(long=True), "qa/1")["train"], task="qa", templates=("qa/1",),
                    chat_template=True, max_length=40)  # fmt: skip
    run = finetune(model, tok, train, config=TrainConfig(max_steps=1, batch_size=4, **FP32), run_dir=tmp_path / "r")
    expected = tokenize_for_training(train, tok, max_length=40, chat_template=True)
    assert [x.tolist() for x in run.train.input_ids] == expected["input_ids"], "the chat form, cut at 40"
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["data"] == {"task": "qa", "templates": ["qa/1"], "chat_template": True, "max_length": 40,
                            "overflow": "truncate", "source": "dataset"}  # fmt: skip
    assert meta["config"]["max_length"] == 40, "the config says what was used"
    assert trained_settings(tmp_path / "r")["chat_template"] is True
    assert trained_settings(tmp_path / "r" / "model")["max_length"] == 40
    # an explicit argument wins, with one log line naming both values
    model, tok = tiny_random("llama")
    with caplog.at_level(logging.WARNING, logger="nbft.data"):
        run = finetune(model, tok, train, config=TrainConfig(max_steps=1, max_length=64, **FP32),
                       run_dir=tmp_path / "s", chat_template=False)  # fmt: skip
    said = [r.getMessage() for r in caplog.records if "as given" in r.getMessage()]
    assert len(said) == 2 and any("chat_template=False" in m and "chat_template=True" in m for m in said), said
    plain = tokenize_for_training(train, tok, max_length=64)
    assert [x.tolist() for x in run.train.input_ids] == plain["input_ids"]
    assert json.loads((tmp_path / "s" / "run.json").read_text())["data"]["chat_template"] is False
    # data tokenized before (as nbft demo and nbft train do): tokenize_for_training's output says how it was cut
    model, tok = tiny_random("llama")
    tokenized = tokenize_for_training(train, tok, max_length=32, chat_template=True)
    finetune(model, tok, tokenized, config=TrainConfig(max_steps=1, **FP32), run_dir=tmp_path / "t")
    data = json.loads((tmp_path / "t" / "run.json").read_text())["data"]
    assert (data["source"], data["chat_template"], data["max_length"], data["task"]) == ("tokenized", True, 32, "qa")


def test_train_panel_trains_a_builders_dataset_with_its_settings(tmp_path):
    model, tok = tiny_random("llama")
    builder = DatasetBuilder(_qa(40, long=True), task="qa", tokenizer=tok, n=0, max_length=48, debounce=None,
                             chat_template=True)  # fmt: skip
    data = builder.build()
    panel = TrainPanel(model, tok, data, config=TrainConfig(max_steps=1, batch_size=4, **FP32),
                       run_dir=tmp_path / "p")  # fmt: skip
    assert "data: chat template, max_length=48" in panel.status_label.value
    assert panel.val_data is not None and len(panel.val_data) == len(data["validation"])
    panel.train()
    run = panel.wait()
    assert run.status == "completed", run.error
    meta = json.loads((tmp_path / "p" / "run.json").read_text())
    assert (meta["data"]["chat_template"], meta["data"]["max_length"]) == (True, 48)
    assert max(run.train.lengths) == 48


# ------------------------------------------------------------------------------------------- evaluation
def _toy_task():
    from nbft.evaluate import Task

    rows = [{"question": f"what is {i}?", "answer": str(i)} for i in range(24)]
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows[:12]),
            "validation": datasets.Dataset.from_list(rows[12:18]),
            "test": datasets.Dataset.from_list(rows[18:]),
        }
    )
    return Task("toy-qa", splits, "qa/1", max_new_tokens=2)


def _chat_run(tmp_path):
    model, tok = tiny_random("llama")
    train = _marked(build_instruction_dataset(_qa(), "qa/1")["train"], chat_template=True, max_length=64)
    finetune(model, tok, train, config=TrainConfig(max_steps=1, batch_size=4, **FP32), run_dir=tmp_path / "chat")
    return tmp_path / "chat"


def test_compare_uses_the_runs_prompt_format_and_warns_when_told_another(tmp_path, caplog):
    import nbft

    run_dir = _chat_run(tmp_path)
    base = tiny_random("llama")
    kw = {"n": 3, "progress": False, "n_boot": 100}
    table = nbft.compare({"base": base, "tuned": run_dir}, [_toy_task()], **kw)
    assert table.results["config"]["chat_template"] is True, "left out: the format the run was trained with"
    assert not any("was trained on" in n for n in table.notes)
    with caplog.at_level(logging.WARNING, logger="nbft.data"):
        table = nbft.compare({"base": base, "tuned": run_dir}, [_toy_task()], chat_template=False, **kw)
    assert table.results["config"]["chat_template"] is False, "an explicit argument wins"
    lines = [r.getMessage() for r in caplog.records if "was trained on" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "'tuned' was trained on chat template prompts but is evaluated with plain text" in lines[0]
    assert "chat_template=True" in lines[0], "the line names the fix"
    assert lines[0] in table.notes, "and the table's notes keep it"


def test_the_monitor_follows_the_training_format_and_warns_when_told_another(tmp_path):
    from nbft.evaluate import ForgettingMonitor

    model, tok = tiny_random("llama")
    train = _marked(build_instruction_dataset(_qa(), "qa/1")["train"], chat_template=True, max_length=64)
    follows = ForgettingMonitor([_toy_task()], every=0, n=2, samples=0, budget=0.99)
    told = ForgettingMonitor([_toy_task()], every=0, n=2, samples=0, chat_template=False, budget=0.99)
    with pytest.warns(UserWarning, match="trained on chat template prompts but is evaluated with plain text"):
        finetune(model, tok, train, config=TrainConfig(max_steps=1, batch_size=4, **FP32), run_dir=tmp_path / "m",
                 observers=[follows, told])  # fmt: skip
    assert follows.config.chat_template is True and not follows.warnings
    assert told.config.chat_template is False
    assert len(told.warnings) == 1 and "chat_template=True" in told.warnings[0]


# ------------------------------------------------------------------------------------------- stale views
def test_an_edit_after_build_marks_the_built_views_out_of_date_until_build(tmp_path):
    _, tok = tiny_random("llama")
    builder = DatasetBuilder(_qa(40), task="qa", tokenizer=tok, n=0, max_length=64, debounce=0)
    builder.build()
    built = (builder.stats_html, builder.histogram, builder.mix_html)
    assert not builder.out_of_date and builder.stale_note.value == ""
    assert not any("nbft-stale" in w._dom_classes for w in built)
    builder.max_length.value = 12
    assert builder.out_of_date
    assert all("nbft-stale" in w._dom_classes for w in built), "dimmed"
    assert "settings changed since Build" in builder.stale_note.value and "press Build" in builder.stale_note.value
    # the mask and the truncation line already follow the new max_length (they are not the built ones)
    assert "max_length=12" in builder.truncation_label.value
    assert builder.mask.value.count("nbft-tok-prompt") + builder.mask.value.count("nbft-tok-completion") <= 12
    with pytest.raises(RuntimeError, match="settings changed since Build"):
        builder.export(str(tmp_path / "x"), "jsonl")
    builder.build()
    assert not builder.out_of_date and builder.stale_note.value == ""
    assert not any("nbft-stale" in w._dom_classes for w in built)
    assert settings_of(builder.dataset["train"]).max_length == 12


def test_a_task_switch_never_shows_the_previous_tasks_example(monkeypatch):
    from nbft.widgets import dataset_builder

    sentiment = [{"text": f"tweet number {i}", "label": ["negative", "positive"][i % 2]} for i in range(40)]
    qa = [{"question": f"what is {i}?", "answer": str(i)} for i in range(40)]
    data = {"sentiment": sentiment, "qa": qa}

    def task_data(task, templates, n, seed):
        return build_instruction_dataset(data[task], templates or task, task=task, seed=seed)

    monkeypatch.setattr(dataset_builder, "_build_task_data", task_data)
    monkeypatch.setattr(
        dataset_builder, "_load_task_data", lambda task, n, seed: datasets.Dataset.from_list(data[task])
    )
    _, tok = tiny_random("llama")
    for debounce in (None, 0):
        builder = DatasetBuilder(task="sentiment", tokenizer=tok, n=0, debounce=debounce)
        builder.build()
        assert "tweet number" in builder.preview.value and "template sentiment/" in builder.mask.value
        builder.task.value = "qa"
        views = builder.preview.value + builder.mask.value + builder.truncation_label.value
        assert "tweet number" not in views and "sentiment/" not in views, f"debounce={debounce}: gone at once"
        assert "settings changed since Build" in builder.stale_note.value
        if debounce == 0:
            assert "template qa/" in builder.mask.value and "what is" in builder.preview.value, "qa replaced it"
        builder.example.value = 1  # moving the example slider shows nothing of the old build either
        assert "sentiment/" not in builder.mask.value


# ------------------------------------------------------------------------------------------- per task
def test_truncation_is_reported_per_task_with_examples_left_without_an_answer_token():
    _, tok = tiny_random("llama")
    rows = [{"prompt": "Q?\n", "completion": "yes", "task": "short"} for _ in range(3)]
    rows += [{"prompt": "Q?\n", "completion": LONG, "task": "long"} for _ in range(2)]
    _, report = tokenize_for_training(datasets.Dataset.from_list(rows), tok, max_length=24, return_report=True)
    assert report.per_task == {
        "short": {"examples": 3, "over": 0, "no_answer": 0},
        "long": {"examples": 2, "over": 2, "no_answer": 0},
    }
    assert "per task: short 0/3 truncated" in str(report) and "long 2/2 truncated" in str(report)
    # max_length=2 leaves the long answers nothing but their EOS (the short ones too: every answer is cut)
    _, report = tokenize_for_training(datasets.Dataset.from_list(rows), tok, max_length=2, return_report=True)
    assert report.n_no_answer == 5 and report.per_task["long"]["no_answer"] == 2
    assert "left with no answer token" in str(report)


def test_the_builder_shows_truncation_per_task_of_a_replay_mixture(monkeypatch):
    from nbft.widgets import dataset_builder

    qa = [{"question": f"what is {i}?", "answer": LONG} for i in range(60)]
    monkeypatch.setattr(dataset_builder, "_load_task_data", lambda task, n, seed: datasets.Dataset.from_list(qa))
    monkeypatch.setattr(
        dataset_builder, "_build_task_data",
        lambda task, templates, n, seed: build_instruction_dataset(qa, "qa", task="qa", seed=seed),
    )  # fmt: skip
    _, tok = tiny_random("llama")
    reviews = [{"text": f"review {i}", "label": ["negative", "positive"][i % 2]} for i in range(60)]
    builder = DatasetBuilder(reviews, task="sentiment", tokenizer=tok, n=0, max_length=160, debounce=0)
    builder.replay_tasks.value = ("qa",)
    builder.replay.value = 0.2
    builder.build()
    per_task = builder.truncation.per_task
    assert set(per_task) == {"sentiment", "qa"}
    assert per_task["sentiment"]["over"] == 0 and per_task["qa"]["over"] == per_task["qa"]["examples"] > 0
    shown = builder.truncation_label.value
    assert "data-task='qa'" in shown and "data-task='sentiment'" in shown


# ------------------------------------------------------------------------------------------- bad input
def test_bad_settings_are_refused_with_the_fix_and_mixed_settings_are_not_guessed(caplog):
    model, tok = tiny_random("llama")
    rows = [{"prompt": "Q\n", "completion": "A"}] * 4
    with pytest.raises(TypeError, match="chat_template must be True, False or None"):
        finetune(model, tok, rows, chat_template="yes")
    with pytest.raises(ValueError, match="overflow must be 'truncate', 'drop' or None"):
        finetune(model, tok, rows, overflow="cut")
    with pytest.raises(ValueError, match="use 'truncate' or 'drop'"):
        DatasetBuilder(_qa(), task="qa", tokenizer=tok, overflow="cut", debounce=None)
    with pytest.raises(ValueError, match="max_length must be a whole number of tokens >= 2"):
        TokenizationSettings(max_length=1)
    # two parts built with different settings, joined: neither is used, and a warning says so
    a = _marked(datasets.Dataset.from_list(rows), max_length=64)
    b = _marked(datasets.Dataset.from_list(rows), max_length=32)
    with caplog.at_level(logging.WARNING, logger="nbft.data"):
        assert settings_of(datasets.concatenate_datasets([a, b])) is None
    assert any("different settings" in r.getMessage() for r in caplog.records)
    assert settings_of(datasets.concatenate_datasets([a, datasets.Dataset.from_list(rows)])).max_length == 64
