"""Widgets without a browser: panels built on tiny models, clicks simulated with ``Button.click()``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import datasets
import pytest

pytest.importorskip("ipywidgets")

from nbft.models import tiny_random
from nbft.train import StepState, TrainConfig
from nbft.widgets import ComparePanel, DatasetBuilder, LivePlot, Throttle, TrainPanel

PNG = b"\x89PNG"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _is_png(value) -> bool:
    # ipywidgets 8 hands Image.value back as a memoryview, 7 as bytes
    return bytes(value).startswith(PNG)


def _state(step: int, loss: float, total: int = 10) -> StepState:
    return StepState(
        step=step,
        total_steps=total,
        epoch=step / total,
        loss=loss,
        learning_rate=1e-3,
        grad_norm=1.0,
        tokens=100,
        label_tokens=10,
        tokens_per_second=1000.0,
        elapsed_s=float(step),
        eta_s=float(total - step),
        peak_memory_mb=1.0,
    )


def _pairs(n: int = 24) -> list[dict[str, str]]:
    return [{"prompt": f"Repeat the number {i}.\n", "completion": str(i)} for i in range(n)]


def _wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


# --------------------------------------------------------------------------------------------------- LivePlot
def test_throttle_with_fake_clock():
    clock = FakeClock()
    throttle = Throttle(1.0, clock=clock)
    assert throttle.ready()
    clock.now = 0.5
    assert not throttle.ready()
    clock.now = 1.0
    assert throttle.ready()
    assert not throttle.ready()
    throttle.reset()
    assert throttle.ready()


def test_liveplot_redraws_at_most_once_per_interval_and_always_at_the_end():
    clock = FakeClock()
    plot = LivePlot(min_interval=1.0, clock=clock)
    plot.on_train_begin({"total_steps": 10, "start_step": 0})
    plot.on_step(_state(1, 3.0))
    first = plot.image.value
    assert plot.redraws == 1 and _is_png(first)
    for step, t in [(2, 0.2), (3, 0.5), (4, 0.99)]:
        clock.now = t
        plot.on_step(_state(step, 3.0 - step * 0.1))
    assert plot.redraws == 1, "events inside the interval must not redraw"
    assert plot.image.value == first
    clock.now = 1.0
    plot.on_step(_state(5, 2.0))
    assert plot.redraws == 2 and plot.image.value != first
    second = plot.image.value
    clock.now = 1.1
    plot.on_eval(_state(5, 2.0), {"val_loss": 2.5})
    assert plot.redraws == 2
    plot.on_train_end({"status": "completed"})
    assert plot.redraws == 3 and plot.image.value != second
    assert [h["kind"] for h in plot.history].count("eval") == 1
    assert "completed" in plot.title()


def test_liveplot_keeps_history_up_to_the_checkpoint_on_resume():
    plot = LivePlot(min_interval=0.0)
    plot.on_train_begin({"total_steps": 6})
    for step in range(1, 5):
        plot.on_step(_state(step, 1.0, total=6))
    plot.on_train_end({"status": "stopped"})
    plot.on_train_begin({"total_steps": 6, "start_step": 3})
    assert [h["step"] for h in plot.history] == [1, 2, 3]
    plot.on_train_begin({"total_steps": 6, "start_step": 0})  # a new run starts a new curve
    assert plot.history == []


def test_liveplot_snapshot_is_a_static_png_output():
    plot = LivePlot()
    plot.extend([{"kind": "train", "step": 1, "loss": 2.0}, {"kind": "eval", "step": 1, "val_loss": 2.2}])
    image = plot.snapshot()
    assert image.data.startswith(PNG)
    assert _is_png(plot.image.value)


# --------------------------------------------------------------------------------------------------- TrainPanel
def test_train_panel_click_train_runs_to_completion(tmp_path, capsys):
    model, tok = tiny_random("llama")
    panel = TrainPanel(
        model, tok, _pairs(), val=_pairs(6), config=TrainConfig(max_steps=4, batch_size=4, eval_every=2),
        run_dir=tmp_path / "run",
    )  # fmt: skip
    assert panel.status == "ready" and panel.stop_button.disabled and panel.resume_button.disabled
    panel.train_button.click()
    assert panel.run is not None
    run = panel.wait(120)
    assert run.status == panel.status == "completed"
    assert panel.progress.value == panel.progress.max == 4
    assert _is_png(panel.plot.image.value)
    assert [h["step"] for h in panel.plot.history if h["kind"] == "train"] == [1, 2, 3, 4]
    assert 'data-status="completed"' in panel.status_label.value
    assert not panel.train_button.disabled and panel.stop_button.disabled and panel.resume_button.disabled
    assert (tmp_path / "run" / "model").is_dir()
    assert capsys.readouterr().out == "", "the panel and its observers never print"


def test_train_panel_stop_then_resume_continues_the_curve(tmp_path):
    model, tok = tiny_random("llama")
    stop_at = 2
    panel: TrainPanel

    class ClickStop:
        """Clicks Stop from the training thread at a fixed step, so the test does not depend on timing."""

        def on_step(self, state):
            if state.step == stop_at and not panel.stop_button.disabled:
                panel.stop_button.click()

    config = TrainConfig(max_steps=5, batch_size=4)
    panel = TrainPanel(model, tok, _pairs(), config=config, run_dir=tmp_path / "run", observers=[ClickStop()])
    panel.train_button.click()
    run = panel.wait(120)
    assert run.status == panel.status == "stopped"
    assert 'data-status="stopped"' in panel.status_label.value
    assert run.checkpoints, "a stop keeps a checkpoint"
    assert not panel.resume_button.disabled and not panel.train_button.disabled and panel.stop_button.disabled
    images_before = panel.plot.redraws

    stop_at = -1
    panel.resume_button.click()
    assert panel.run is not run
    resumed = panel.wait(120)
    assert resumed.status == "completed"
    assert [h["step"] for h in panel.plot.history if h["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert panel.plot.redraws > images_before
    assert panel.model is resumed.model


def test_train_panel_shows_errors_in_the_panel(tmp_path):
    model, tok = tiny_random("llama")
    config = TrainConfig(max_steps=1, batch_size=4)
    first = TrainPanel(model, tok, _pairs(8), config=config, run_dir=tmp_path / "run")
    first.train()
    first.wait(120)
    again = TrainPanel(model, tok, _pairs(8), config=config, run_dir=tmp_path / "run")
    again.train_button.click()  # the folder already holds a finished run: the engine refuses, the panel says why
    assert 'data-status="error"' in again.status_label.value
    assert "resume" in again.status_label.value
    assert not again.train_button.disabled and again.stop_button.disabled


def test_train_panel_default_run_dirs_are_fresh_per_click(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, tok = tiny_random("llama")
    panel = TrainPanel(model, tok, _pairs(8), config=TrainConfig(max_steps=1, batch_size=4))
    panel.train()
    first_dir = panel.wait(120).run_dir
    panel.train()
    second_dir = panel.wait(120).run_dir
    assert first_dir != second_dir and first_dir.parent == second_dir.parent == Path("runs")


# --------------------------------------------------------------------------------------------------- DatasetBuilder
def test_dataset_builder_builds_previews_and_counts_tokens():
    _, tok = tiny_random("llama")
    rows = [{"text": f"review number {i}", "label": ["negative", "positive"][i % 2]} for i in range(40)]
    builder = DatasetBuilder(rows, task="sentiment", tokenizer=tok, n=0, split=(0.7, 0.15, 0.15), seed=3)
    assert set(builder.templates.value) == {t for _, t in builder.templates.options}
    builder.templates.value = builder.templates.value[:1]
    builder.build_button.click()
    data = builder.dataset
    assert data is not None, builder.status_label.value
    assert sorted(data) == ["test", "train", "validation"] and len(data["train"]) == 28
    assert set(data["train"]["template_id"]) == {builder.templates.value[0]}
    assert "template_id" in builder.preview.value and "built" in builder.status_label.value
    assert _is_png(builder.histogram.value)
    assert "total_max" in builder.stats_html.value
    builder.task.value = "qa"
    assert all(v.startswith("qa/") for _, v in builder.templates.options)
    builder.build_button.click()  # sentiment rows have no question/answer: a clear error in the panel, no crash
    assert "question" in builder.status_label.value


def test_dataset_builder_split_sliders():
    builder = DatasetBuilder([{"question": "q", "answer": "a"}], task="qa")
    builder.train_frac.value, builder.val_frac.value = 0.6, 0.2
    assert builder.split == (0.6, 0.2, 0.2)
    assert "0.200" in builder.test_label.value


# --------------------------------------------------------------------------------------------------- ComparePanel
def _toy_tasks():
    from nbft.evaluate import Task

    sent = [{"text": f"review {i}", "label": ["negative", "positive"][i % 2]} for i in range(30)]
    qa = [{"question": f"what is {i}?", "answer": str(i)} for i in range(30)]

    def splits(rows):
        return datasets.DatasetDict(
            {"train": datasets.Dataset.from_list(rows[:20]), "test": datasets.Dataset.from_list(rows[20:])}
        )

    return [
        Task("toy-sentiment", splits(sent), "sentiment/1", max_new_tokens=2),
        Task("toy-qa", splits(qa), "qa/1", max_new_tokens=3),
    ]


@pytest.mark.filterwarnings("ignore:model .* produced empty output")
def test_compare_panel_runs_in_a_worker_and_renders_the_table():
    base, tok = tiny_random("llama", seed=0)
    tuned, _ = tiny_random("llama", seed=1)
    tasks = _toy_tasks()
    panel = ComparePanel(
        lambda: {"base": base, "tuned": tuned}, tasks, target="toy-sentiment", tokenizer=tok, n=4, icl_shots=(0, 1)
    )
    assert panel.task_select.value == ("toy-sentiment", "toy-qa")
    main = threading.get_ident()
    seen = []
    panel.result.observe(lambda change: seen.append(threading.get_ident()), names="value")
    panel.compare_button.click()
    assert panel.compare_button.disabled
    table = panel.wait(120)
    assert seen and seen[0] != main, "compare() must run in a worker thread"
    assert table is panel.table and table.target == "toy-sentiment"
    assert "<table" in panel.result.value and "toy-qa" in panel.result.value
    assert _is_png(panel.heatmap.value)
    assert 'data-status="done"' in panel.status_label.value
    assert not panel.compare_button.disabled


def test_compare_panel_reports_failures_in_the_panel():
    _, tok = tiny_random("llama")
    panel = ComparePanel({}, _toy_tasks(), tokenizer=tok)
    panel.compare_button.click()
    with pytest.raises(ValueError, match="at least one model"):
        panel.wait(60)
    assert 'data-status="failed"' in panel.status_label.value
    panel.shots.value = "0, x"
    panel.compare_button.click()
    assert 'data-status="error"' in panel.status_label.value and "whole numbers" in panel.status_label.value


# --------------------------------------------------------------------------------------------------- magics
def test_magics_register_a_template_from_a_cell():
    from IPython.core.interactiveshell import InteractiveShell

    from nbft.magics import load_ipython_extension
    from nbft.templates import get_template

    shell = InteractiveShell.instance()
    load_ipython_extension(shell)
    body = "Is this tweet negative or positive?\nTweet: {{ text }}\nAnswer:"
    shell.run_cell_magic("nbft_template", "tweet-test/1 --target label --choices negative,positive", body)
    template = get_template("tweet-test/1")
    assert template.task == "tweet-test" and template.choices == ("negative", "positive")
    assert template.render({"text": "great"}).endswith("Answer:\n")
    frame = shell.run_line_magic("nbft_templates", "tweet-test")
    assert list(frame["id"]) == ["tweet-test/1"]
    assert "sentiment" in set(shell.run_line_magic("nbft_tasks", "--offline")["task"])
    models = shell.run_line_magic("nbft_models", "")
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in set(models["name"])
    with pytest.raises(ValueError, match="--target"):
        shell.run_cell_magic("nbft_template", "x/1", "{{ a }}")
