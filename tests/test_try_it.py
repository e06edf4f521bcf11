"""Try it side by side: the core ``answer()`` (greedy = ``generate()``, streamed, sampled with a seed) and the
``TryPanel`` without a browser (base and tuned answers, a task's test example, a run directory after a restart)."""

from __future__ import annotations

import html
import threading

import datasets
import pytest

from nbft.evaluate import Task
from nbft.evaluate.answer import answer, make_prompt, stream_answer
from nbft.evaluate.generation import generate
from nbft.models import load_model, tiny_random
from nbft.train import TrainConfig, finetune

PAIRS = [{"prompt": f"what is {i}?\n", "completion": f"{i}{i}"} for i in range(40)]


def _qa_task() -> Task:
    rows = [{"question": f"what is {i}?", "answer": f"{i}{i}"} for i in range(40)]
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:30]), "test": datasets.Dataset.from_list(rows[30:])}
    )
    return Task("toy-qa", splits, "qa/1", max_new_tokens=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A base model saved to a folder (so run.json names it) and a run tuned from it, with two checkpoints."""
    root = tmp_path_factory.mktemp("try")
    model, tok = tiny_random("llama", seed=0)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    base, tok = load_model(root / "base")
    task = _qa_task()
    data = [{"prompt": task.prompt(r), "completion": task.reference(r)} for r in task.load()["train"]]
    config = TrainConfig(max_steps=12, batch_size=8, learning_rate=5e-3, save_every=6, keep_last=2, warmup_steps=0)
    finetune(base, tok, data, config=config, run_dir=root / "run")
    return root, task


def test_greedy_answers_equal_generate_and_stream_as_they_grow(trained):
    root, task = trained
    base, tok = load_model(root / "base")
    tuned, _ = load_model(root / "run" / "model")
    example = task.sample(1)[0]
    prompt = make_prompt(example, tok, task=task)
    assert prompt.text == task.prompt(example) and prompt.reference == task.reference(example)
    seen: list[tuple[str, str, str]] = []
    outs = answer({"base": (base, tok), "tuned": (tuned, tok)}, example, task=task,
                  on_text=lambda n, t: seen.append((n, t, threading.current_thread().name)))  # fmt: skip
    for name, model in (("base", base), ("tuned", tuned)):
        expected = generate(model, tok, [prompt.text], max_new_tokens=task.max_new_tokens, stop=task.stop,
                            halt=task.halt, progress=False)[0]  # fmt: skip
        assert outs[name] == expected
    assert outs["tuned"] != outs["base"], "training changed the answer (the premise of side by side)"
    assert outs["tuned"], "the tuned model answers something"
    grown = [t for n, t, _ in seen if n == "tuned"]
    assert len(grown) >= 2 and grown[-1] == outs["tuned"], "the answer arrives in pieces, the last is the answer"
    # typed text in the training template is the same prompt as the example's
    typed = answer({"tuned": (tuned, tok)}, example["question"], task=task)
    assert typed["tuned"] == outs["tuned"]


def test_chat_format_and_sampling(trained):
    root, _ = trained
    tuned, tok = load_model(root / "run" / "model")
    chat = make_prompt("what is 3?", tok, chat=True)
    assert chat.text.startswith(tok.apply_chat_template([{"role": "user", "content": "what is 3?"}], tokenize=False,
                                                        add_generation_prompt=True)[:10])  # fmt: skip
    assert chat.text != "what is 3?"
    greedy = list(stream_answer(tuned, tok, chat, max_new_tokens=6))[-1]
    assert greedy == generate(tuned, tok, [chat.text], chat=True, max_new_tokens=6, progress=False)[0]
    one = answer({"m": (tuned, tok)}, "what is 3?", sample=True, temperature=5.0, seed=1, max_new_tokens=12)
    again = answer({"m": (tuned, tok)}, "what is 3?", sample=True, temperature=5.0, seed=1, max_new_tokens=12)
    other = answer({"m": (tuned, tok)}, "what is 3?", sample=True, temperature=5.0, seed=2, max_new_tokens=12)
    assert one == again, "the same seed gives the same sampled answer"
    assert one != other, "another seed draws another answer (at temperature 5, 12 tokens)"
    with pytest.raises(ValueError, match="temperature"):
        answer({"m": (tuned, tok)}, "x", sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="empty"):
        answer({"m": (tuned, tok)}, "  ")


def test_typed_text_cannot_fill_a_template_with_several_fields():
    _, tok = tiny_random("llama")
    rows = [{"text": f"Ann met Bob {i}", "entity_type": "person", "names": "Ann, Bob"} for i in range(10)]
    task = Task.from_data(rows, "ner/1", name="two-fields")
    with pytest.raises(ValueError, match="pick a test example"):
        make_prompt("some text", tok, task=task)
    assert make_prompt("some text", tok, task=task, template=False).text == "some text"


pytest.importorskip("ipywidgets")


def test_panel_answers_for_base_and_tuned_from_a_run_dir(trained):
    from nbft.widgets import TryPanel

    root, task = trained
    panel = TryPanel.from_run_dir(root / "run", tasks=[task])
    assert [label for label, _ in panel.checkpoint.options] == ["(none)", "step 6", "step 12"]
    panel.task.value = "toy-qa"
    example = panel.pick_example(2)
    assert panel.prompt.value == task.template.render(example)
    assert task.reference(example) in panel.reference.value
    main = threading.get_ident()
    worker = panel.ask()
    assert worker.ident != main and panel.ask_button.disabled
    outs = panel.wait(120)
    assert list(outs) == ["base", "tuned"]
    base, tok = load_model(root / "base")
    tuned, _ = load_model(root / "run" / "model")
    expected = answer({"base": (base, tok), "tuned": (tuned, tok)}, example, task=task)
    assert outs == expected, "the panel shows what the core function answers"
    assert 'data-status="done"' in panel.status_label.value and not panel.ask_button.disabled
    cells = [c.children[1].value for c in panel.outputs.children]
    assert all((html.escape(outs[n]) or "(empty answer)") in cell for n, cell in zip(outs, cells))
    assert html.escape(task.template.render(example).strip()) in panel.seen.value
    assert html.escape(outs["tuned"]) in panel.static_html() and "what the model sees" in panel.static_html()

    # a checkpoint as a third column; typed text through the training template
    panel.checkpoint.value = "step 6"
    panel.ask(example["question"])
    outs2 = panel.wait(120)
    assert list(outs2) == ["base", "tuned", "step 6"] and outs2["tuned"] == outs["tuned"]
    ckpt, _ = load_model(panel.checkpoints["step 6"])
    assert outs2["step 6"] == answer({"c": (ckpt, tok)}, example, task=task)["c"]
    panel.close()


def test_panel_errors_are_shown_not_raised(trained, tmp_path):
    from nbft.widgets import TryPanel

    root, _ = trained
    base, tok = load_model(root / "base")
    panel = TryPanel({"base": (base, tok)})
    panel.ask_button.click()  # nothing typed
    assert 'data-status="error"' in panel.status_label.value and "empty" in panel.status_label.value
    with pytest.raises(FileNotFoundError, match="run.json"):
        TryPanel.from_run_dir(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text('{"base_model": null}')
    with pytest.raises(FileNotFoundError, match="neither a final model"):
        TryPanel.from_run_dir(tmp_path / "r")
