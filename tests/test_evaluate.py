"""compare(), generation and scoring on tiny random models: fairness, paired CIs, k-shot hygiene, bad input."""

from __future__ import annotations

import warnings

import datasets
import numpy as np
import pytest
import torch
from _train_data import spread

from nbft import compare
from nbft._utils import UnknownNameError
from nbft.evaluate import Task, TaskError, generate, get_task, score_choices
from nbft.evaluate.metrics import MetricError
from nbft.models import tiny_random


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_random("llama", seed=0)
    return spread(model), tok


def _splits(n_train=20, n_test=12):
    labels = ["negative", "neutral", "positive"]
    rows = [{"text": f"tweet number {i} {'!' * (i % 5)}", "label": labels[i % 3]} for i in range(n_train + n_test)]
    return datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:n_train]), "test": datasets.Dataset.from_list(rows[n_train:])}
    )


def _qa_splits(n=10):
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(2 * n)]
    return datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:n]), "test": datasets.Dataset.from_list(rows[n:])}
    )


SENT = Task("toy-sentiment", _splits(), "sentiment/1", max_new_tokens=3)
QA = Task("toy-qa", _qa_splits(), "qa/1", max_new_tokens=6)


def test_batched_generation_equals_one_at_a_time(tiny):
    model, tok = tiny
    prompts = [f"Question {i}: what is {'xy' * i}?\n" for i in range(11)]
    batched = generate(model, tok, prompts, max_new_tokens=10, batch_size=4, progress=False)
    single = [generate(model, tok, [p], max_new_tokens=10, batch_size=1, progress=False)[0] for p in prompts]
    assert batched == single
    assert len(set(batched)) > 3  # outputs are varied, not all empty


def test_batched_generation_seq2seq_equals_one_at_a_time():
    model, tok = tiny_random("t5", seed=0)
    spread(model)
    prompts = [f"translate {'ab' * i}\n" for i in range(7)]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=3, progress=False)
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1, progress=False)[0] for p in prompts]
    assert batched == single


def test_stop_strings_cut_output(tiny):
    model, tok = tiny
    prompts = [f"Prompt {i}\n" for i in range(5)]
    full = generate(model, tok, prompts, max_new_tokens=12, progress=False)
    stop = full[0][3]  # a character that occurs in the first output
    cut = generate(model, tok, prompts, max_new_tokens=12, stop=(stop,), progress=False)
    assert cut[0] == full[0][:3].strip()
    assert all(stop not in c for c in cut)


def test_loglik_batched_equals_single(tiny):
    model, tok = tiny
    prompts = ["short\n", "a much longer prompt here\n", "mid length\n"]
    choices = ["no", "yes", "maybe not"]
    batched = score_choices(model, tok, prompts, choices, batch_size=4, progress=False)
    single = np.array([[score_choices(model, tok, [p], [c], progress=False)[0, 0] for c in choices] for p in prompts])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-4)
    # a direct computation: sum of log p(choice tokens | prompt)
    ids = tok("short\n")["input_ids"] + tok("yes", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    n_c = len(tok("yes", add_special_tokens=False)["input_ids"])
    direct = sum(float(logp[len(ids) - n_c - 1 + i, ids[len(ids) - n_c + i]]) for i in range(n_c))
    assert batched[0, 1] == pytest.approx(direct, abs=1e-4)


def test_identical_models_give_zero_delta_with_ci_containing_zero(tiny):
    model, tok = tiny
    table = compare(
        {"base": model, "same": model}, [SENT, QA], target="toy-sentiment", n=10, tokenizer=tok, progress=False
    )
    d = table.delta
    assert (d["delta"] == 0).all()
    assert ((d["ci_low"] <= 0) & (d["ci_high"] >= 0)).all()
    assert (d["wins"] == 0).all() and (d["losses"] == 0).all()
    assert table.forgetting["significant_regressions"].iloc[0] == 0
    assert table.examples["same_prompt"].all()
    assert set(table.summary["role"]) == {"target", "other"}
    # the summary has the documented tidy columns
    for col in ("task", "role", "model", "metric", "value", "ci_low", "ci_high", "n"):
        assert col in table.summary.columns


def test_different_models_give_paired_delta_and_forgetting(tiny):
    model, tok = tiny
    other = spread(tiny_random("llama", seed=1)[0], seed=1)
    table = compare({"base": model, "tuned": other}, [SENT, QA], target="toy-sentiment", n=10, tokenizer=tok,
                    progress=False)  # fmt: skip
    head = table.delta[table.delta["is_headline"]].set_index("task")
    s = table.summary.set_index(["task", "model", "metric"])["value"]
    expected = s[("toy-sentiment", "tuned", "accuracy")] - s[("toy-sentiment", "base", "accuracy")]
    assert head.loc["toy-sentiment", "delta"] == pytest.approx(expected)
    f = table.forgetting.iloc[0]
    assert f["G"] == pytest.approx(expected)
    assert f["BWT"] == pytest.approx(head.loc["toy-qa", "delta"])
    assert f["AF"] == pytest.approx(max(0.0, -head.loc["toy-qa", "delta"]))
    assert "toy-sentiment" in table.to_text()


def test_few_shot_prompts_never_include_test_examples(tiny):
    model, tok = tiny
    splits = _splits(n_train=30, n_test=10)
    # plant three test examples inside the train split too: they must never be used as shots
    leaked = datasets.concatenate_datasets([splits["train"], splits["test"].select(range(3))])
    task = Task(
        "leaky", datasets.DatasetDict({"train": leaked, "test": splits["test"]}), "sentiment/1", max_new_tokens=2
    )
    table = compare({"base": model}, [task], target="leaky", n=10, icl_shots=(0, 4), tokenizer=tok, progress=False)
    test_texts = set(splits["test"]["text"])
    train_texts = set(splits["train"]["text"])
    shot_prompts = table.examples["prompt"]  # zero-shot prompts
    assert len(shot_prompts) == 10
    from nbft.evaluate.runner import _prepare

    td = _prepare(task, 10, (4,), seed=0)
    for example, shots in zip(td.examples, td.shots[4], strict=True):
        texts = {s["text"] for s in shots}
        assert not texts & test_texts
        assert texts <= train_texts
        prompt = task.prompt(example, tok, shots=shots)
        assert prompt.count("Text: ") == 5 and prompt.endswith(task.template.render(example))
    k = table.summary.set_index(["model", "metric"])
    assert k.loc[("base 4-shot", "accuracy"), "prompt_tokens"] > 3 * k.loc[("base", "accuracy"), "prompt_tokens"]


def test_chat_prompt_matches_training_format(tiny):
    from nbft.data import format_prompt

    _, tok = tiny
    ex = {"text": "great day", "label": "positive"}
    assert SENT.prompt(ex, tok, chat=True) == format_prompt(tok, SENT.template.render(ex), True)
    shot = SENT.prompt(ex, tok, chat=True, shots=[{"text": "bad", "label": "negative"}])
    assert "negative" in shot and shot.endswith(format_prompt(tok, SENT.template.render(ex), True).split("</s>\n")[-1])


def test_model_given_as_path_is_loaded_and_compared(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    table = compare({"base": (model, tok), "saved": str(tmp_path / "m")}, [QA], n=5, progress=False)
    assert (table.delta["delta"] == 0).all()


# --------------------------------------------------------------------------------------------------- bad input
def test_unknown_task_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'sentiment'"):
        get_task("sentimnt")


def test_unknown_metric_in_task_suggests(tiny):
    model, tok = tiny
    task = Task("bad-metric", _qa_splits(), "qa/1", metrics=("short_anser",))
    with pytest.raises(UnknownNameError, match="short_answer"):
        compare({"base": model}, [task], n=3, tokenizer=tok, progress=False)


def test_task_without_target_field(tiny):
    model, tok = tiny
    data = datasets.DatasetDict({"test": datasets.Dataset.from_list([{"text": "x", "sentiment": "positive"}])})
    with pytest.raises(TaskError, match="no target field .label. \\(columns: \\[.text., .sentiment.\\]\\)"):
        compare({"base": model}, [Task("t", data, "sentiment/1")], tokenizer=tok, progress=False)


def test_target_not_among_tasks(tiny):
    model, tok = tiny
    with pytest.raises(TaskError, match="target 'toy-sentimnt' is not among.*Did you mean 'toy-sentiment'"):
        compare({"base": model}, [SENT, QA], target="toy-sentimnt", tokenizer=tok, progress=False)


def test_n_larger_than_split_uses_all_and_warns(tiny):
    model, tok = tiny
    with pytest.warns(UserWarning, match="n=500 is larger than its test split \\(10 examples\\); using all 10"):
        table = compare({"base": model}, [QA], n=500, tokenizer=tok, progress=False)
    assert table.summary["n"].iloc[0] == 10


def test_different_tokenizers_on_loglik_task_warn(tiny):
    model, tok = tiny
    from nbft.models import byte_tokenizer

    other_tok = byte_tokenizer()
    other_tok.add_tokens(["<extra>"])
    with pytest.warns(UserWarning, match="different tokenizers.*log-likelihood"):
        compare({"a": (model, tok), "b": (model, other_tok)}, [SENT], n=4, progress=False)


def test_empty_outputs_everywhere_are_reported_once_not_a_crash(caplog):
    model, tok = tiny_random("llama", seed=0)  # default init: emits only a newline, i.e. empty output
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = compare({"base": model, "b": model}, [SENT, QA], target="toy-sentiment", n=5, tokenizer=tok,
                        progress=False)  # fmt: skip
    # said once, in the log and the table's notes: not also as a warning printed into the cell
    assert not any("empty output" in str(w.message) for w in caught)
    assert any("empty output for every example" in r.getMessage() for r in caplog.records)
    assert any("empty output" in n for n in table.notes)
    row = table.summary.set_index(["task", "model", "metric"]).loc[("toy-sentiment", "base", "unparseable_rate")]
    assert row["value"] == 100.0 and row["empty_rate"] == 100.0
    assert "Notes" in table.to_text()


def test_user_metric_that_raises_is_named(tiny):
    model, tok = tiny

    def flaky_metric(predictions, references):
        raise ValueError("cannot score")

    task = Task("toy-qa-user", _qa_splits(), "qa/1", metrics=("short_answer", flaky_metric), max_new_tokens=2)
    with pytest.raises(MetricError, match="toy-qa-user.*flaky_metric.*cannot score"):
        compare({"base": model}, [task], n=3, tokenizer=tok, progress=False)


def test_k_shot_without_train_split_is_a_clear_error(tiny):
    model, tok = tiny
    task = Task("only-test", _qa_splits()["test"], "qa/1")
    with pytest.raises(TaskError, match="no train split"):
        compare({"base": model}, [task], target="only-test", icl_shots=(0, 2), tokenizer=tok, progress=False)


def test_saved_base_evaluation_is_reused_and_checked(tiny):
    from nbft.evaluate import evaluate_model

    model, tok = tiny
    base_eval = evaluate_model(model, [SENT, QA], tokenizer=tok, target="toy-sentiment", n=6, icl_shots=(0, 2),
                               n_per_task={"toy-qa": 4}, progress=False)  # fmt: skip
    table = compare({"base": base_eval, "tuned": model}, [SENT, QA], target="toy-sentiment", n=6, icl_shots=(0, 2),
                    n_per_task={"toy-qa": 4}, tokenizer=tok, progress=False)  # fmt: skip
    assert table.columns == ["base", "base 2-shot", "tuned"]
    assert (table.delta.query("model == 'tuned'")["delta"] == 0).all()  # same weights: stored == fresh
    assert table.summary.set_index(["task", "model", "metric"]).loc[("toy-qa", "tuned", "token_f1"), "n"] == 4
    with pytest.raises(ValueError, match="different settings.*'n': \\(6, 5\\)"):
        compare({"base": base_eval, "tuned": model}, [SENT, QA], n=5, n_per_task={"toy-qa": 4}, tokenizer=tok,
                progress=False)  # fmt: skip


def test_icl_n_pairs_k_shot_with_base_on_the_same_examples(tiny):
    model, tok = tiny
    table = compare({"base": model}, [SENT], target="toy-sentiment", n=12, icl_shots=(0, 2), icl_n=5,
                    tokenizer=tok, progress=False)  # fmt: skip
    s = table.summary.set_index(["model", "metric"])
    assert s.loc[("base 2-shot", "accuracy"), "n"] == 5 and s.loc[("base", "accuracy"), "n"] == 12
    d = table.delta.set_index("metric").loc["ll_accuracy"]
    ex = table.examples
    assert d["base"] == pytest.approx(100 * (ex["ll_choice:base"][:5] == ex["reference"][:5]).mean())
    assert ex["output:base 2-shot"][5:].isna().all()


def test_evaluate_never_imports_report():
    """Layering: evaluate returns a plain results dict; report renders it and sits above evaluate."""
    import subprocess
    import sys

    code = """
import importlib.abc, sys, pkgutil, importlib
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'nbft.report' or name == 'nbft.demo':
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import nbft.evaluate
for m in pkgutil.walk_packages(nbft.evaluate.__path__, 'nbft.evaluate.'):
    importlib.import_module(m.name)
import datasets, json
from nbft.evaluate import Task, compare_models
from nbft.models import tiny_random
model, tok = tiny_random('llama', seed=0)
rows = [{'question': f'q{i}?', 'answer': f'a{i}'} for i in range(8)]
task = Task('t', datasets.Dataset.from_list(rows), 'qa/1', max_new_tokens=2)
results = compare_models({'base': (model, tok)}, [task], n=4, progress=False, n_boot=100)
json.dumps(results)
print('ok', 'nbft.report' in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "ok False"


# --------------------------------------------------------------------------------------------------- quiet, progress
def test_compare_runs_quiet_each_warning_once_pointing_at_the_callers_line(tiny, caplog):
    model, tok = tiny
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compare({"base": model}, [QA], n=500, tokenizer=tok, progress=False)
    said = [w for w in caught if "n=500 is larger" in str(w.message)]
    logged = [r for r in caplog.records if "n=500 is larger" in r.getMessage()]
    # before: a UserWarning and the same text as a log line; now once, at the caller's line (not inside nbft)
    assert len(said) + len(logged) == 1, (said, logged)
    assert said and said[0].filename == __file__


def test_compare_inside_a_panels_scope_delivers_warnings_to_it(tiny, capfd):
    from nbft._quiet import quiet

    model, tok = tiny
    seen: list[str] = []
    with quiet(sink=lambda level, text: seen.append(text)):
        compare({"base": model}, [QA], n=500, tokenizer=tok, progress=False)
    assert [t for t in seen if "n=500" in t] and "n=500" not in capfd.readouterr().err


def test_compare_reports_progress_per_model_task_and_batch(tiny):
    model, tok = tiny
    events: list[dict] = []
    compare({"base": model, "tuned": model}, [SENT, QA], target="toy-sentiment", n=6, tokenizer=tok, batch_size=4,
            icl_shots=(0, 1), progress=False, on_progress=events.append)  # fmt: skip
    seen = {(e["model"], e["task"], e["task_index"], e["n_tasks"]) for e in events}
    assert seen == {("base", "toy-sentiment", 1, 2), ("base 1-shot", "toy-sentiment", 1, 2), ("base", "toy-qa", 2, 2),
                    ("tuned", "toy-sentiment", 1, 2), ("tuned", "toy-qa", 2, 2)}  # fmt: skip
    for key in seen:
        done = [e["done"] for e in events if (e["model"], e["task"], e["task_index"], e["n_tasks"]) == key]
        assert done[0] == 0 and done[-1] == 6 and done == sorted(done), (key, done)
        assert {4, 6} <= set(done), "one report per batch of 4"


def test_only_models_the_runner_loaded_are_released_after_its_last_reference(tiny, tmp_path, monkeypatch):
    import gc
    import weakref

    import nbft.evaluate.runner as runner

    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded: list[weakref.ref] = []
    alive_at_release: list[bool] = []
    import nbft.models as models

    real_load = models.load_model

    def tracking_load(*args, **kwargs):
        m, t = real_load(*args, **kwargs)
        loaded.append(weakref.ref(m))
        return m, t

    def spy_release():
        gc.collect()
        alive_at_release.append(any(ref() is not None for ref in loaded))

    monkeypatch.setattr(models, "load_model", tracking_load)
    monkeypatch.setattr(runner, "_release", spy_release)
    compare({"base": (model, tok)}, [QA], n=3, progress=False)
    assert alive_at_release == [], "a caller's model is never released by the runner"
    compare({"base": (model, tok), "saved": str(tmp_path / "m")}, [QA], n=3, progress=False)
    assert alive_at_release == [False], "the loaded model is gone when the device memory is returned"
