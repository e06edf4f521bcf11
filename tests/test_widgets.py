"""Widgets without a browser: panels built on tiny models, clicks simulated with ``Button.click()``.

The same file runs under ipywidgets 8 (the venv) and 7.7 (Colab's version; see ``test_widgets_ipywidgets7.py``).
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
import threading
import time
import warnings
from pathlib import Path

import datasets
import pytest

pytest.importorskip("ipywidgets")

import ipywidgets

from nbft.models import tiny_random
from nbft.train import StepState, TrainConfig
from nbft.widgets import ComparePanel, DatasetBuilder, LivePlot, Throttle, TrainPanel, TryPanel, compare_runs
from nbft.widgets._figures import debiased_ema, loss_limits, monitor_figure, png_size, training_figure
from nbft.widgets.train_panel import _ProgressView

PNG = b"\x89PNG"
IPYWIDGETS = ipywidgets.__version__


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _is_png(value) -> bool:
    # ipywidgets 8 hands Image.value back as a memoryview, 7 as bytes
    return bytes(value).startswith(PNG)


def _shown_at_natural_size(image) -> bool:
    """The <img width> is half the PNG's pixel width (HiDPI), and the image is not hidden."""
    width, _ = png_size(bytes(image.value))
    return image.layout.display != "none" and image.width == str(round(width / 2))


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


def test_ipywidgets_version_is_the_one_asked_for():
    import os

    assert IPYWIDGETS.split(".")[0] in {"7", "8"}
    expected = os.environ.get("NBFT_EXPECT_IPYWIDGETS")  # set by test_widgets_ipywidgets7.py
    if expected:
        assert IPYWIDGETS.startswith(expected + "."), f"expected ipywidgets {expected}, imported {IPYWIDGETS}"


# --------------------------------------------------------------------------------------------------- figures
def test_debiased_ema_has_no_start_up_lag():
    assert debiased_ema([2.0] * 5, 0.9) == pytest.approx([2.0] * 5)
    raw = [6.5, 3.0, 2.2, 1.8, 1.5]
    smooth = debiased_ema(raw, 0.6)
    plain = [raw[0]]
    for v in raw[1:]:
        plain.append(0.6 * plain[-1] + 0.4 * v)
    assert abs(smooth[-1] - raw[-1]) < abs(plain[-1] - raw[-1]), "debiasing must lag less than a plain EMA"
    with pytest.raises(ValueError, match="smoothing"):
        debiased_ema(raw, 1.0)


def test_loss_axis_ignores_the_warm_up_spike_but_keeps_validation():
    losses = [6.5] + [1.0 - 0.02 * i for i in range(29)]
    low, high = loss_limits(losses)
    assert high < 1.2 and low < min(losses), "the 6.5 of step 1 must not squash the range that matters"
    assert loss_limits(losses, [1.6])[1] > 1.6, "validation points always fit"
    assert loss_limits([6.5, 5.0, 4.0])[1] > 6.5, "short runs show everything"


def test_training_figure_is_small_multiples_with_markers_and_monitor():
    history = [{"kind": "train", "step": s, "loss": 3.0 / s, "learning_rate": 1e-4, "tokens_per_second": 500.0,
                "peak_memory_mb": 900.0} for s in range(1, 11)]  # fmt: skip
    history += [{"kind": "eval", "step": 5, "val_loss": 0.9}]
    fig = training_figure(history, markers=[(5, "stopped · resumed")])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss per completion token", "learning rate (×1e-4)", "tokens / s", "peak memory (GiB)"]
    assert any("resumed" in t.get_text() for t in fig.axes[0].texts)
    monitor = [{"kind": "monitor", "step": s, "task": "qa", "value": 40.0 + s, "base": 40.0} for s in (0, 5, 10)]
    fig = training_figure(history + monitor, yscale="log")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 4, "monitor scores have their own figure"
    assert fig.axes[0].get_yscale() == "log"
    scores = monitor_figure(monitor)
    (ax,) = scores.axes
    assert "Task scores" in ax.get_title()
    assert [list(line.get_ydata()) for line in ax.lines] == [[40.0, 45.0, 50.0], [40.0, 40.0]]  # scores, base dashed
    assert ax.lines[1].get_linestyle() == "--"


def test_training_figure_draws_one_loss_line_per_task_in_a_mixture():
    history = [{"kind": "train", "step": s, "loss": 2.0, "task_losses": {"sentiment": 1.5, "qa": 3.0} if s % 2
                else {"sentiment": 1.4}} for s in range(1, 9)]  # fmt: skip
    ax = training_figure(history, smoothing=0.0).axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.lines}
    assert lines["sentiment"] == [1.5, 1.4] * 4 and lines["qa"] == [3.0] * 4  # qa is absent from even steps
    single = training_figure([{"kind": "train", "step": 1, "loss": 2.0}]).axes[0]
    assert {line.get_label() for line in single.lines} == {"train (raw)", "train (EMA 0.6)"}


def _drawn(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_marker_labels_stay_inside_the_loss_panel_apart_from_each_other_and_the_legend():
    history = [{"kind": "train", "step": s, "loss": 3.0 / s, "learning_rate": 1e-4} for s in range(1, 101)]
    history += [{"kind": "eval", "step": s, "val_loss": 0.9} for s in (20, 40, 60, 80, 100)]
    markers = [(40, "last checkpoint"), (41, "stopped"), (96, "stopped · resumed"), (97, "resumed"), (2, "resumed")]
    fig = training_figure(history, markers=markers)
    renderer = _drawn(fig)
    loss_ax = fig.axes[0]
    box = loss_ax.get_window_extent(renderer)
    labels = [t for t in loss_ax.texts if t.get_gid() == "nbft-marker-label"]
    assert sorted(t.get_text() for t in labels) == ["last checkpoint · stopped", "resumed", "stopped · resumed"]
    extents = [t.get_window_extent(renderer) for t in labels]
    legend = loss_ax.get_legend().get_window_extent(renderer)
    for text, ext in zip(labels, extents):
        assert box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 and ext.y1 <= box.y1, text.get_text()
        assert not ext.overlaps(legend), f"{text.get_text()!r} covers the legend"
    for i, a in enumerate(extents):
        for b in extents[i + 1 :]:
            assert not a.overlaps(b), "two marker labels on top of each other"


def _tick_texts(axis, renderer) -> list[str]:
    low, high = sorted(axis.get_view_interval())
    return [t.get_text() for t in axis.get_ticklabels() if low <= t.get_position()[axis.axis_name == "y"] <= high]


def test_step_axes_show_whole_steps_only():
    history = [{"kind": "train", "step": s, "loss": 1.0, "learning_rate": 1e-4} for s in (1, 2, 3)]
    monitor = [{"kind": "monitor", "step": s, "task": "qa", "value": 10.0, "base": 10.0} for s in (0, 3)]
    for fig in (training_figure(history), monitor_figure(monitor)):
        renderer = _drawn(fig)
        for ax in fig.axes:
            texts = [t for t in _tick_texts(ax.xaxis, renderer) if t]
            assert texts, "the x axis has tick labels"
            assert all(float(t.replace("−", "-")).is_integer() for t in texts), texts


def test_monitor_axis_is_readable_when_every_score_is_zero():
    rows = [{"kind": "monitor", "step": s, "scores": {"qa": 0.0, "sentiment": 0.0},
             "base": {"qa": 0.0, "sentiment": 0.0}} for s in (0, 5, 10)]  # fmt: skip
    fig = monitor_figure(rows)
    renderer = _drawn(fig)
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    assert -1.0 < low <= 0.0 and high >= 5.0, (low, high)
    texts = _tick_texts(ax.yaxis, renderer)
    assert texts and all("e" not in t and not t.startswith(("−", "-")) for t in texts), texts
    assert ax.yaxis.get_offset_text().get_text() == ""


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
    clock.now = 2.5
    assert not throttle.ready(min_interval=3.0), "a longer interval asked for wins over min_interval"


def test_liveplot_redraws_at_most_once_per_interval_and_always_at_the_end():
    clock = FakeClock()
    plot = LivePlot(min_interval=1.0, clock=clock, threaded=False)
    plot.on_train_begin({"total_steps": 10, "start_step": 0})
    plot.on_step(_state(1, 3.0))
    first = bytes(plot.image.value)
    assert plot.redraws == 1 and _is_png(first)
    for step, t in [(2, 0.2), (3, 0.5), (4, 0.99)]:
        clock.now = t
        plot.on_step(_state(step, 3.0 - step * 0.1))
    assert plot.redraws == 1, "events inside the interval must not redraw"
    clock.now = 1.0
    plot.on_step(_state(5, 2.0))
    assert plot.redraws == 2 and bytes(plot.image.value) != first
    second = bytes(plot.image.value)
    clock.now = 1.1
    plot.on_eval(_state(5, 2.0), {"val_loss": 2.5})
    assert plot.redraws == 2
    plot.on_train_end({"status": "completed"})
    assert plot.redraws == 3 and bytes(plot.image.value) != second
    assert [h["kind"] for h in plot.history].count("eval") == 1
    assert "completed" in plot.title()


def test_liveplot_spends_at_most_its_budget_drawing():
    clock = FakeClock()

    def slow_draw(history, title):
        clock.now += 0.5  # a redraw that costs 0.5 s of the (fake) wall clock
        return training_figure(history, title=title)

    plot = LivePlot(min_interval=1.0, budget=0.1, max_interval=10.0, clock=clock, draw=slow_draw, threaded=False)
    plot.on_train_begin({"total_steps": 100})
    for step in range(1, 61):
        clock.now += 0.1  # a step takes 0.1 s
        plot.on_step(_state(step, 1.0, total=100))
    drawn_time = plot.redraws * 0.5
    assert drawn_time / clock.now <= 0.1 + 0.5 / clock.now, "drawing stays within 10% of the wall time"
    assert plot.redraws >= 2


def _small_figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    return fig


def test_liveplot_backs_off_for_slow_renders_only_up_to_max_interval():
    clock = FakeClock()

    def slow_draw(history, title):
        clock.now += 0.4  # a busy CPU: a render costs 0.4 s, so a 2% budget alone would wait 20 s
        return _small_figure()

    plot = LivePlot(min_interval=1.0, budget=0.02, max_interval=3.0, clock=clock, draw=slow_draw, threaded=False)
    plot.on_train_begin({"total_steps": 200})
    lags = []
    for step in range(1, 201):
        clock.now += 0.1
        plot.on_step(_state(step, 1.0, total=200))
        lags.append(step - plot.drawn_step)
    assert max(lags) <= 3.4 / 0.1 + 1, "the picture is never more than max_interval (+ one render) behind"
    assert plot.redraws < 200 / 10, "still rationed: far fewer renders than steps"


def test_liveplot_draws_in_its_own_thread_and_always_the_latest_step():
    """A slow render never holds up training; points that arrive meanwhile are drawn by the next render, which
    shows the newest step (intermediate frames are dropped)."""
    clock = FakeClock()
    rendering, release = threading.Event(), threading.Event()
    drawn: list[tuple[int, int]] = []  # (step drawn, newest step when the render started)

    def slow_draw(history, title):
        newest = plot.history[-1]["step"]
        rendering.set()
        release.wait(30)  # a render that takes as long as the test wants
        drawn.append((history[-1]["step"], newest))
        clock.now += 0.5
        return _small_figure()

    plot = LivePlot(min_interval=1.0, budget=0.5, max_interval=2.0, clock=clock, draw=slow_draw)
    plot.on_train_begin({"total_steps": 40})
    worker = threading.Thread(target=lambda: [plot.on_step(_state(s, 1.0, total=40)) for s in range(1, 21)])
    worker.start()
    assert rendering.wait(30), "the first point is drawn"
    worker.join(30)
    assert not worker.is_alive(), "the training thread waited for a render"
    rendering.clear()
    release.set()
    clock.now += 2.0
    plot.on_step(_state(21, 1.0, total=40))
    _wait_for(lambda: plot.redraws >= 2)
    assert drawn[0][0] <= drawn[0][1] and drawn[1][0] == drawn[1][1] == 21, drawn
    assert plot.drawn_step == 21
    plot.on_train_end({"status": "completed", "steps": 21})
    assert drawn[-1][0] == 21 and plot.redraws == len(drawn)


def test_liveplot_shows_a_placeholder_then_the_image_at_natural_size():
    plot = LivePlot(min_interval=0.0, threaded=False)
    assert plot.image.layout.display == "none", "no empty <img> (a broken-image icon) before the first step"
    assert "appears here" in plot.placeholder.value and plot.placeholder.layout.display != "none"
    plot.on_train_begin({"total_steps": 3})
    plot.on_step(_state(1, 2.0, total=3))
    assert _shown_at_natural_size(plot.image)
    assert plot.placeholder.layout.display == "none"
    width, _ = png_size(bytes(plot.image.value))
    assert width >= 1200, "rendered at 2x for HiDPI screens"


def test_liveplot_keeps_history_up_to_the_checkpoint_on_resume_and_marks_it():
    plot = LivePlot(min_interval=0.0, threaded=False)
    plot.on_train_begin({"total_steps": 6, "run_dir": "runs/first"})
    for step in range(1, 5):
        plot.on_step(_state(step, 1.0, total=6))
    plot.on_train_end({"status": "stopped", "steps": 4})
    assert plot.markers == [(4.0, "stopped")]
    plot.on_train_begin({"total_steps": 6, "start_step": 3})  # the checkpoint was at 3: step 4 is redone
    assert [h["step"] for h in plot.history] == [1, 2, 3]
    assert plot.markers == [(3, "resumed")]
    plot.on_train_begin({"total_steps": 6, "start_step": 0})  # a new run starts a new curve
    assert plot.history == [] and plot.markers == []
    assert [label for label, _ in plot.previous] == ["first"], "the earlier run stays, faintly, for comparison"


def test_liveplot_monitor_events_and_controls_redraw():
    plot = LivePlot(min_interval=0.0, threaded=False)
    plot.on_train_begin({"total_steps": 4})
    plot.on_step(_state(1, 2.0, total=4))
    plot.on_monitor(_state(1, 2.0, total=4), {"kind": "monitor", "task": "qa", "value": 12.0, "base": 15.0})
    assert plot.history[-1]["step"] == 1 and plot.history[-1]["kind"] == "monitor"
    before = plot.redraws
    plot.smoothing_slider.value = 0.9
    plot.yscale_toggle.value = "log"
    assert plot.redraws == before + 2
    assert plot.smoothing == 0.9 and plot.yscale == "log"
    plot.on_phase({"phase": "final_eval", "step": 4})
    assert plot.phase == "final_eval"


def test_liveplot_snapshot_is_a_static_png_output_at_natural_width():
    plot = LivePlot()
    plot.extend([{"kind": "train", "step": 1, "loss": 2.0}, {"kind": "eval", "step": 1, "val_loss": 2.2}])
    image = plot.snapshot()
    assert image.data.startswith(PNG)
    assert image.width == png_size(image.data)[0] // 2
    assert _is_png(plot.image.value)


def _monitor_row(step, sentiment, qa, output, **extra):
    return {"kind": "monitor", "step": step, "monitor": "forgetting", "target": "sentiment",
            "scores": {"sentiment": sentiment, "qa": qa}, "base": {"sentiment": 40.0, "qa": 20.0},
            "metric": {"sentiment": "accuracy", "qa": "token_f1"},
            "samples": {"qa": [{"input": "Who wrote Hamlet?", "output": output, "reference": "Shakespeare"}]},
            **extra}  # fmt: skip


def test_liveplot_shows_task_scores_and_live_samples_of_a_forgetting_monitor():
    plot = LivePlot(min_interval=0.0, threaded=False)
    plot.on_train_begin({"total_steps": 4})
    assert plot.monitor_image.layout.display == "none" and plot.samples.layout.display == "none"
    plot.on_monitor(None, _monitor_row(0, 40.0, 20.0, "Shakespeare wrote it", best_step=None))
    plot.on_step(_state(1, 2.0, total=4))
    plot.on_step(_state(2, 1.5, total=4))
    plot.on_monitor(_state(2, 1.5, total=4), _monitor_row(2, 60.0, 10.0, "neutral", best_step=2, max_drop=0.6,
                                                          share=0.25, floors={"qa": 0.4}))  # fmt: skip
    assert _shown_at_natural_size(plot.monitor_image) and plot.monitor_image.value == plot.last_monitor_png
    samples = plot.samples.value
    assert plot.samples.layout.display is None
    assert "Who wrote Hamlet?" in samples and "Shakespeare wrote it" in samples and "step 2" in samples
    assert "<del" in samples and "<ins" in samples and "neutral" in samples, "a word diff against the base answer"
    ax = plot.monitor_figure().axes[0]
    assert "monitor 25% of wall time" in ax.get_title() and "dotted: floor" in ax.get_title()
    labels = [line.get_label() for line in ax.lines]
    assert (
        labels[0].startswith("sentiment (accuracy) · target") and "best checkpoint (within 60% drop): step 2" in labels
    )
    floor = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert [list(line.get_ydata()) for line in floor] == [[8.0, 8.0]], "qa's floor: 40% of its base 20"
    plot.on_train_end({"status": "completed", "steps": 4, "monitor_s": 3.0, "wall_s": 30.0})
    assert "monitor 10% of wall time" in plot.monitor_figure().axes[0].get_title(), "the whole run's share at the end"


def test_train_panel_keeps_the_monitor_figure_and_samples_in_its_static_result(tmp_path):
    from nbft.evaluate import ForgettingMonitor

    model, tok = tiny_random("llama")
    monitor = ForgettingMonitor(["qa"], every=2, n=1, samples=1)
    panel = TrainPanel(model, tok, _pairs(), config=TrainConfig(max_steps=4, batch_size=4), run_dir=tmp_path / "r",
                       observers=[monitor])  # fmt: skip
    panel.train()
    panel.wait(120)
    assert [h["step"] for h in panel.plot.history if h["kind"] == "monitor"] == [0, 2, 4]
    static = panel.static_html()
    assert 'alt="task scores during training"' in static and "Live samples" in static
    assert "monitor" in panel.status_label.value and "% of the time" in panel.status_label.value


# --------------------------------------------------------------------------------------------------- TrainPanel
def test_train_panel_click_train_runs_to_completion(tmp_path, capfd):
    model, tok = tiny_random("llama")
    panel = TrainPanel(
        model, tok, _pairs(), val=_pairs(6), config=TrainConfig(max_steps=4, batch_size=4, eval_every=2),
        run_dir=tmp_path / "run",
    )  # fmt: skip
    statuses: list[str] = []
    panel.status_label.observe(lambda change: statuses.append(change["new"]), names="value")
    assert panel.status == "ready" and panel.stop_button.disabled and panel.resume_button.disabled
    assert panel.plot.image.layout.display == "none", "a placeholder, not a broken image, before the first run"
    panel.train_button.click()
    assert panel.run is not None
    run = panel.wait(120)
    assert run.status == panel.status == "completed"
    assert panel.progress.value == panel.progress.max == 4
    assert _shown_at_natural_size(panel.plot.image)
    assert [h["step"] for h in panel.plot.history if h["kind"] == "train"] == [1, 2, 3, 4]
    assert 'data-status="completed"' in panel.status_label.value
    assert not panel.train_button.disabled and panel.stop_button.disabled and panel.resume_button.disabled
    assert (tmp_path / "run" / "model").is_dir()
    assert not any("step 4/4" in s and "ETA" in s for s in statuses), "the last step is followed by eval and save"
    assert any("step 4/4" in s and "finishing: final evaluation and saving" in s for s in statuses)
    static = panel.static_html()
    assert 'src="data:image/png;base64,' in static and "completed" in static and str(tmp_path / "run") in static
    out = capfd.readouterr()
    assert out.out == "", "the panel and its observers never print"
    assert "%|" not in out.err and "Writing model shards" not in out.err, "library progress bars are silenced"


def test_progress_view_names_the_phase_instead_of_eta():
    panel = TrainPanel()
    view = _ProgressView(panel)
    view.on_train_begin({"total_steps": 60, "start_step": 0})
    for phase, words in [("final_eval", "final evaluation"), ("saving", "saving the model"),
                         ("checkpoint", "writing a checkpoint"), ("monitor", "scoring the tasks")]:  # fmt: skip
        view.on_phase({"phase": phase, "step": 60})
        assert words in panel.status_label.value and "step 60/60" in panel.status_label.value
    before = panel.status_label.value
    view.on_phase({"phase": "done", "step": 60})
    assert panel.status_label.value == before, "done is followed by on_train_end, which says more"


def test_train_panel_elapsed_time_is_the_runs_own_clock():
    """One source of truth: the panel's time is the run's training clock, the one nbft.runs() shows."""
    from nbft.run_dirs import _clock

    panel = TrainPanel()
    view = _ProgressView(panel)
    view.on_train_begin({"total_steps": 150, "start_step": 90})  # a resumed run: 2:00 were trained before
    view.on_step(dataclasses.replace(_state(96, 1.0, total=150), elapsed_s=220.0))
    view.on_train_end({"status": "completed", "steps": 150, "total_steps": 150})
    assert f"{_clock(220.0)} training" in panel.status_label.value, panel.status_label.value


def test_train_panel_warnings_go_once_to_its_log_area(tmp_path, capfd):
    model, tok = tiny_random("llama")

    class Noisy:
        def on_step(self, state) -> None:
            warnings.warn("a library complains at every step", UserWarning, stacklevel=1)

    panel = TrainPanel(
        model, tok, _pairs(8), config=TrainConfig(max_steps=3, batch_size=4), run_dir=tmp_path / "r",
        observers=[Noisy()],
    )  # fmt: skip
    hold, go = threading.Event(), threading.Event()

    class Hold:
        def on_step(self, state) -> None:
            if state.step == 1:
                hold.set()
                go.wait(30)

    panel.observers.append(Hold())
    panel.train()
    assert hold.wait(60)
    with warnings.catch_warnings(record=True) as recorded:  # another cell, while the panel trains
        warnings.simplefilter("always")
        warnings.warn("the user's own warning", UserWarning, stacklevel=1)
    go.set()
    panel.wait(120)
    assert [str(w.message) for w in recorded] == ["the user's own warning"], "not swallowed by the panel"
    assert panel.log_area.lines == [("warning", "a library complains at every step")]
    assert "a library complains" in panel.log_area.widget.value and panel.log_area.widget.layout.display != "none"
    assert "a library complains" not in capfd.readouterr().err, "never in a random cell"
    assert "a library complains" in panel.static_html()


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
    assert panel.plot.markers == [(2, "stopped · resumed")]
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
    assert [label for label, _ in panel.plot.previous] == [first_dir.name], "the first run's curve stays, faintly"


def _stopped_run(run_dir: Path, stop_at: int = 2, total: int = 5) -> None:
    from nbft.train import StopTraining, finetune

    class StopAt:
        def on_step(self, state):
            if state.step == stop_at:
                raise StopTraining

    model, tok = tiny_random("llama")
    config = TrainConfig(max_steps=total, batch_size=4, eval_every=2)
    finetune(model, tok, _pairs(), val=_pairs(4), config=config, observers=[StopAt()], run_dir=run_dir)


def test_from_run_dir_restores_the_curve_and_resumes(tmp_path):
    _stopped_run(tmp_path / "runs" / "a")
    panel = TrainPanel.from_run_dir(tmp_path / "runs" / "a")
    assert panel.train_button.disabled, "no model or data: this panel resumes only"
    assert [h["step"] for h in panel.plot.history if h["kind"] == "train"] == [1, 2]
    assert _shown_at_natural_size(panel.plot.image)
    assert 'data-status="stopped"' in panel.status_label.value and not panel.resume_button.disabled
    panel.resume_button.click()
    run = panel.wait(120)
    assert run.status == "completed"
    assert [h["step"] for h in panel.plot.history if h["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert panel.plot.markers == [(2, "stopped · resumed")]
    with pytest.raises(FileNotFoundError, match="not an nbft run directory"):
        TrainPanel.from_run_dir(tmp_path)


def test_resume_from_disk_control_lists_and_resumes_runs(tmp_path):
    runs = tmp_path / "runs"
    _stopped_run(runs / "b", stop_at=3)
    model, tok = tiny_random("llama")
    panel = TrainPanel(model, tok, _pairs(), config=TrainConfig(max_steps=2, batch_size=4), runs_folder=runs)
    assert [value for _, value in panel.disk_runs.options] == [str(runs / "b")]
    assert "stopped at step 3" in panel.disk_runs.options[0][0] and not panel.disk_button.disabled
    assert "resumes from step 3" in panel.disk_runs.options[0][0], "the list says which checkpoint"
    import nbft.run_dirs

    real_read_run, at_read = nbft.run_dirs.read_run, []

    def read_run(path, *args, **kwargs):  # reading a run takes seconds on a big folder: what does the panel show?
        buttons = (panel.train_button, panel.disk_button, panel.resume_button)
        at_read.append(([b.disabled for b in buttons], panel.status_label.value))
        return real_read_run(path, *args, **kwargs)

    statuses: list[str] = []
    panel.status_label.observe(lambda change: statuses.append(change["new"]), names="value")
    nbft.run_dirs.read_run = read_run
    try:
        panel.disk_button.click()
    finally:
        nbft.run_dirs.read_run = real_read_run
    assert at_read and at_read[0][0] == [True, True, True], "Train and Resume are disabled at the click"
    assert 'data-status="starting"' in at_read[0][1], "the status changes at the click"
    run = panel.wait(120)
    assert any("from the checkpoint at step 3" in v for v in statuses), [re.sub("<[^>]+>", "", v) for v in statuses]
    assert run.status == "completed" and Path(run.run_dir) == runs / "b"
    assert [h["step"] for h in panel.plot.history if h["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert list(panel.disk_runs.options) == [], "a completed run is not resumable"
    assert "1 completed (train further with nbft.resume(path, more_steps=N))" in panel.disk_note.value
    empty = TrainPanel(runs_folder=tmp_path / "none")
    assert empty.disk_button.disabled
    assert "does not exist yet" in empty.disk_note.value, "an empty list says why"
    empty.disk_button.click()  # disabled in a browser; from code it explains
    assert "no resumable run" in empty.status_label.value


def test_train_panel_drives_an_hf_trainer_with_stop_and_resume(tmp_path):
    from transformers import Trainer, TrainingArguments

    model, _ = tiny_random("llama")
    rows = [{"input_ids": [1 + (i + k) % 50 for k in range(8)]} for i in range(32)]
    data = datasets.Dataset.from_list([{**r, "labels": r["input_ids"]} for r in rows])
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=6, per_device_train_batch_size=4, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=False,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data)
    panel: TrainPanel

    class ClickStop:
        def __init__(self) -> None:
            self.armed = True

        def on_step(self, state):
            if self.armed and state.step == 2:
                self.armed = False
                panel.stop_button.click()

    panel = TrainPanel.for_trainer(trainer, observers=[ClickStop()])
    panel.train_button.click()
    run = panel.wait(180)
    assert run.status == "stopped"
    assert [p.name for p in run.checkpoints] == ["checkpoint-2"], "Stop saves a checkpoint"
    assert not panel.resume_button.disabled
    panel.resume_button.click()
    resumed = panel.wait(180)
    assert resumed.status == "completed"
    assert [h["step"] for h in panel.plot.history if h["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(h["loss"]) for h in panel.plot.history if h["kind"] == "train")


def test_closing_a_panel_releases_the_model(tmp_path):
    import gc
    import weakref

    model, tok = tiny_random("llama")
    panel = TrainPanel(model, tok, _pairs(8), config=TrainConfig(max_steps=2, batch_size=4), run_dir=tmp_path / "r")
    panel.train()
    panel.wait(120)
    compare = ComparePanel({"base": (model, tok)}, _toy_tasks(), tokenizer=tok)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is not None, "the panels still hold it (the premise)"
    panel.close()
    compare.close()
    gc.collect()
    assert alive() is None, "closed panels must not keep the model in memory"


def test_compare_runs_overlays_curves_and_diffs_configs(tmp_path):
    from nbft.train import finetune

    for name, lr in (("lr-a", 1e-3), ("lr-b", 3e-3)):
        model, tok = tiny_random("llama")
        finetune(model, tok, _pairs(8), config=TrainConfig(max_steps=2, batch_size=4, learning_rate=lr),
                 run_dir=tmp_path / name)  # fmt: skip
    comparison = compare_runs([tmp_path / "lr-a", tmp_path / "lr-b"])
    assert list(comparison.config_diff.index) == ["learning_rate"]
    assert comparison.summary.run.tolist() == ["lr-a", "lr-b"]
    html = comparison._repr_html_()
    assert 'src="data:image/png;base64,' in html and "learning_rate" in html
    with pytest.raises(ValueError, match="list of runs"):
        compare_runs(str(tmp_path / "lr-a"))


def test_panels_display_a_static_companion_that_the_end_of_the_work_fills(tmp_path, monkeypatch):
    import IPython.display as ipd

    published: list[tuple[str, dict, str | None]] = []
    monkeypatch.setattr(ipd, "display", lambda obj, raw=False, display_id=None, **kw: published.append(
        ("display", obj, display_id)))  # fmt: skip
    monkeypatch.setattr(ipd, "update_display", lambda obj, raw=False, display_id=None, **kw: published.append(
        ("update", obj, display_id)))  # fmt: skip
    model, tok = tiny_random("llama")
    panel = TrainPanel(model, tok, _pairs(8), config=TrainConfig(max_steps=2, batch_size=4), run_dir=tmp_path / "r")
    panel._ipython_display_()
    (kind, view, view_id), (kind2, empty, static_id) = published[-2:]
    assert (kind, view_id) == ("display", panel.static.view_id)
    assert view["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.model_id
    assert (kind2, static_id) == ("display", panel.static.display_id)
    assert empty["text/html"] == "", "nothing to show before the run"
    panel.train()
    panel.wait(120)
    during = [b for k, b, i in published if k == "update" and i == static_id and "nbft-in-progress" in b["text/html"]]
    assert during and "from_run_dir(" in during[0]["text/html"], "while it runs the saved copy says what to do"
    assert f'class="nbft-static {panel.static.css_class}"' in during[0]["text/html"], "hidden while the panel lives"
    # the work is over: the live view's output becomes the static result (a reopened notebook shows no widget
    # error), with the curve as an image/png too (headless converters), and the companion empties
    (kind, final, where), (kind2, emptied, where2) = published[-2:]
    assert (kind, where, kind2, where2) == ("update", view_id, "update", static_id)
    assert "application/vnd.jupyter.widget-view+json" not in final
    assert "nbft-static-final" in final["text/html"] and "data:image/png;base64," in final["text/html"]
    assert final["image/png"] and final["text/plain"].startswith("completed")
    assert emptied["text/html"] == ""
    assert f".{panel.static.css_class} {{ display: none; }}" in panel.static.style_widget.value, (
        "the live view hides its static copy"
    )


def test_a_liveplot_displayed_alone_becomes_its_final_figure_when_the_run_ends(monkeypatch):
    import IPython.display as ipd

    published: list[tuple[str, dict, dict, str | None]] = []
    monkeypatch.setattr(ipd, "display", lambda obj, raw=False, display_id=None, metadata=None, **kw: published.append(
        ("display", obj, metadata or {}, display_id)))  # fmt: skip
    monkeypatch.setattr(ipd, "update_display", lambda obj, raw=False, display_id=None, metadata=None, **kw:
                        published.append(("update", obj, metadata or {}, display_id)))  # fmt: skip
    plot = LivePlot(threaded=False)
    plot._ipython_display_()
    assert published[-1][0] == "display" and "application/vnd.jupyter.widget-view+json" in published[-1][1]
    plot.on_train_begin({"total_steps": 2})
    plot.on_step(_state(1, 2.0, total=2))
    plot.on_train_end({"status": "completed", "steps": 1})
    kind, bundle, metadata, where = published[-1]
    assert (kind, where) == ("update", plot.static.view_id)
    assert "application/vnd.jupyter.widget-view+json" not in bundle, "a reopened notebook shows the figure"
    width, _ = png_size(base64.b64decode(bundle["image/png"]))
    assert metadata["image/png"]["width"] == round(width / 2), "HiDPI, shown at its natural width"


def test_a_stopped_run_keeps_its_live_panel_for_resume(tmp_path, monkeypatch):
    import IPython.display as ipd

    published: list[tuple[str, str | None]] = []
    monkeypatch.setattr(ipd, "display", lambda obj, raw=False, display_id=None, **kw: published.append(
        ("display", display_id)))  # fmt: skip
    monkeypatch.setattr(ipd, "update_display", lambda obj, raw=False, display_id=None, **kw: published.append(
        ("update", display_id)))  # fmt: skip
    panel = TrainPanel(run_dir=tmp_path / "r")
    panel._ipython_display_()
    panel._finish("stopped", "3/6 steps")
    assert ("update", panel.static.view_id) not in published, "Resume needs the controls"


# --------------------------------------------------------------------------------------------------- DatasetBuilder
def _reviews(n: int = 40) -> list[dict[str, str]]:
    return [{"text": f"review number {i}\nsecond line", "label": ["negative", "positive"][i % 2]} for i in range(n)]


def test_dataset_builder_previews_live_and_builds():
    _, tok = tiny_random("llama")
    builder = DatasetBuilder(_reviews(), task="sentiment", tokenizer=tok, n=0, split=(0.7, 0.15, 0.15), seed=3,
                             debounce=0)  # fmt: skip
    assert 'data-status="preview"' in builder.status_label.value, builder.status_label.value
    assert "review number" in builder.preview.value
    assert "\\n" not in builder.preview.value and "second line" in builder.preview.value, "real line breaks"
    assert builder.dataset is None, "a preview is not the dataset"
    builder.templates.value = builder.templates.value[:1]
    assert set(builder._preview_data["train"]["template_id"]) == {builder.templates.value[0]}, "live"
    builder.build_button.click()
    data = builder.dataset
    assert data is not None, builder.status_label.value
    assert sorted(data) == ["test", "train", "validation"] and len(data["train"]) == 28
    assert set(data["train"]["template_id"]) == {builder.templates.value[0]}
    assert 'data-status="built"' in builder.status_label.value
    assert _shown_at_natural_size(builder.histogram)
    stats = builder.stats_html.value
    assert "total max" in stats and "<th>train</th>" in stats, "transposed: one column per split"
    assert "all 28 examples fit" in builder.truncation_label.value
    assert "review number" in builder.static_html() and "nbft-tok-completion" in builder.static_html()


def test_dataset_builder_edits_print_no_tokenize_bar(capfd):
    _, tok = tiny_random("llama")
    builder = DatasetBuilder(_reviews(), task="sentiment", tokenizer=tok, n=0, debounce=0)
    capfd.readouterr()
    builder.max_length.value = 48  # the preview's truncation report tokenizes the sample again
    builder.example.value = 1
    captured = capfd.readouterr()
    assert "tokenize" not in captured.err and "%|" not in captured.err, captured.err
    assert captured.out == ""
    assert "max_length=48" in builder.truncation_label.value or "48" in builder.truncation_label.value


def test_dataset_builder_label_mask_shows_prompt_and_completion_tokens():
    from nbft.data import encode_pair

    _, tok = tiny_random("llama")
    builder = DatasetBuilder(_reviews(), task="sentiment", tokenizer=tok, n=0, debounce=0)
    ex = builder._preview_data["train"][0]
    prompt_ids, completion_ids = encode_pair(tok, ex["prompt"], ex["completion"])
    mask = builder.mask.value
    assert mask.count("nbft-tok-prompt") == len(prompt_ids)
    assert mask.count("nbft-tok-completion") == len(completion_ids)
    assert "nbft-tok-cut" not in mask
    builder.max_length.value = len(prompt_ids) - 5  # too short: the prompt's start is cut, as training would
    mask = builder.mask.value
    assert mask.count("nbft-tok-cut") == len(completion_ids) + 5
    assert "truncated" in builder.truncation_label.value and "max_length=" in builder.truncation_label.value
    builder.example.value = 1
    assert builder._preview_data["train"][1]["template_id"] in builder.mask.value


def test_dataset_builder_maps_columns_and_an_error_clears_the_preview():
    _, tok = tiny_random("llama")
    rows = [{"review": f"review {i}", "stars": ["negative", "positive"][i % 2]} for i in range(30)]
    builder = DatasetBuilder(rows, task="sentiment", tokenizer=tok, n=0, debounce=0)
    assert 'data-status="error"' in builder.status_label.value and builder.preview.value == ""
    assert set(builder.column_maps) == {"text", "label"}
    builder.column_maps["text"].value = "review"
    builder.column_maps["label"].value = "stars"
    assert builder.columns == {"text": "review", "label": "stars"}
    assert 'data-status="preview"' in builder.status_label.value and "review 1" in builder.preview.value
    builder.task.value = "qa"  # these rows have no question/answer: the old preview must not stay
    assert 'data-status="error"' in builder.status_label.value
    assert builder.preview.value == "" and builder.mask.value == "" and builder._preview_data is None


def test_dataset_builder_marks_hub_only_tasks_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    builder = DatasetBuilder(task="sentiment", debounce=None)
    labels = dict((value, label) for label, value in builder.task.options)
    assert "needs the Hugging Face Hub (offline now)" in labels["summarize"]
    assert labels["sentiment"] == "sentiment"
    builder.task.value = "summarize"
    builder._safely(builder.refresh)
    assert 'data-status="error"' in builder.status_label.value and "Hub" in builder.status_label.value
    assert builder.build_button.disabled


def test_dataset_builder_mixes_replay_and_exports(tmp_path, monkeypatch):
    from nbft.widgets import dataset_builder

    qa = [{"question": f"what is {i}?", "answer": str(i)} for i in range(60)]
    monkeypatch.setattr(dataset_builder, "_load_task_data", lambda task, n, seed: datasets.Dataset.from_list(qa))
    _, tok = tiny_random("llama")
    builder = DatasetBuilder(_reviews(60), task="sentiment", tokenizer=tok, n=0, debounce=0)
    builder.replay_tasks.value = ("qa",)
    builder.replay.value = 0.2
    data = builder.build()
    tasks = data["train"]["task"]
    assert tasks.count("qa") / len(tasks) == pytest.approx(0.2, abs=0.03)
    assert set(data["test"]["task"]) == {"sentiment"}, "evaluation splits stay on the target task"
    assert "Training mixture" in builder.mix_html.value
    path = builder.export(str(tmp_path / "out"), "jsonl")
    # (.nbft marks the folder as nbft's own: a second export may replace it; a user's folder is never replaced)
    # (nbft-settings.json: JSONL keeps no dataset info, so the builder's tokenization settings go beside the splits)
    assert sorted(p.name for p in Path(path).iterdir()) == [
        ".nbft", "nbft-settings.json", "test.jsonl", "train.jsonl", "validation.jsonl"
    ]  # fmt: skip
    from nbft.dataset_settings import read_saved_settings

    assert read_saved_settings(path) == builder.settings
    builder.export_path.value = str(tmp_path / "clicked")
    builder.export_format.value = "parquet"
    builder.export_button.click()
    assert "wrote" in builder.export_label.value and (tmp_path / "clicked" / "train.parquet").exists()


def test_dataset_builder_split_sliders():
    builder = DatasetBuilder([{"question": "q", "answer": "a"}], task="qa", debounce=None)
    builder.train_frac.value, builder.val_frac.value = 0.6, 0.2
    assert builder.split == (0.6, 0.2, 0.2)
    assert "0.200" in builder.test_label.value


def test_dataset_builder_debounces_edits_into_one_preview():
    _, tok = tiny_random("llama")
    builder = DatasetBuilder(_reviews(), task="sentiment", tokenizer=tok, n=0, debounce=0.3)
    _wait_for(lambda: builder._preview_data is not None, 30)
    calls = []
    original = builder.refresh
    builder.refresh = lambda: (calls.append(1), original())  # type: ignore[method-assign]
    for seed in range(1, 6):
        builder.seed.value = seed
    _wait_for(lambda: calls, 30)
    time.sleep(0.5)
    assert len(calls) == 1, "five quick edits, one preview"


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


def test_compare_panel_runs_in_a_worker_and_renders_the_table(capfd):
    base, tok = tiny_random("llama", seed=0)
    tuned, _ = tiny_random("llama", seed=1)
    tasks = _toy_tasks()
    panel = ComparePanel(
        lambda: {"base": base, "tuned": tuned}, tasks, target="toy-sentiment", tokenizer=tok, n=4, icl_shots=(0, 1)
    )
    assert panel.task_select.value == ("toy-sentiment", "toy-qa")
    assert panel.heatmap.layout.display == "none" and "appear here" in panel.result.value, "no broken image"
    main = threading.get_ident()
    seen = []
    panel.result.observe(lambda change: seen.append(threading.get_ident()), names="value")
    statuses: list[str] = []
    panel.status_label.observe(lambda change: statuses.append(change["new"]), names="value")
    panel.compare_button.click()
    assert panel.compare_button.disabled
    table = panel.wait(120)
    assert seen and seen[0] != main, "compare() must run in a worker thread"
    assert table is panel.table and table.target == "toy-sentiment"
    assert "<table" in panel.result.value and "toy-qa" in panel.result.value
    assert _shown_at_natural_size(panel.heatmap)
    assert 'data-status="done"' in panel.status_label.value
    assert not panel.compare_button.disabled
    # real progress, not only a clock: which task of how many, which model, examples done
    assert any(re.search(r"task [12]/2 · (base|base 1-shot|tuned) · \d/4", s) for s in statuses), statuses
    static = panel.static_html()
    assert "<table" in static and 'src="data:image/png;base64,' in static
    # random models answer nothing: compare() warns and logs the same text; the panel shows each once, no cell does
    texts = [text for _, text in panel.log_area.lines]
    assert texts and len(texts) == len(set(texts))
    assert any("produced empty output" in t for t in texts)
    assert "produced empty output" not in capfd.readouterr().err


def test_compare_panel_probes_checkbox_sets_the_comparisons_probes():
    from nbft.config import EvalConfig
    from nbft.evaluate import Task
    from nbft.widgets._common import tooltip_of

    base, tok = tiny_random("llama", seed=0)
    toy_sent, toy_qa = _toy_tasks()
    reviews = [{"text": f"film {i}", "label": ["negative", "positive"][i % 2]} for i in range(12)]
    probe = Task.from_data(reviews, template="sentiment/1", name="toy reviews", split=(0.5, 0.0, 0.5))
    tasks = [toy_sent.with_probes(probe), toy_qa]
    # on by default when the target has probes; off when it has none; a config's or an explicit value wins
    assert ComparePanel({"base": base}, ["sentiment", "qa"], target="sentiment").probes.value is True
    assert ComparePanel({"base": base}, ["sentiment", "qa"], target="qa").probes.value is False
    assert ComparePanel({"base": base}, ["sentiment", "qa"]).probes.value is True  # no target: a task has them
    off = ComparePanel({"base": base}, ["sentiment"], target="sentiment", config=EvalConfig(probes=False))
    assert off.probes.value is False
    none = ComparePanel({"base": base}, _toy_tasks(), target="toy-sentiment")
    assert none.probes.value is False and none.probes.disabled, "no task has probes: nothing to switch on"
    panel = ComparePanel({"base": base}, tasks, target="toy-sentiment", tokenizer=tok, n=4)
    assert panel.probes.value is True and not panel.probes.disabled
    assert "toy-sentiment" in tooltip_of(panel.probes)
    table = _compare_now(panel)
    assert table.tasks == ["toy-sentiment", "toy-sentiment · toy reviews", "toy-qa"]
    assert table.results["config"]["probes"] is True
    panel.probes.value = False
    table = _compare_now(panel)
    assert table.tasks == ["toy-sentiment", "toy-qa"] and table.results["config"]["probes"] is False


def _compare_now(panel):
    panel.compare_button.click()
    return panel.wait(120)


def test_compare_panel_reports_failures_in_the_panel():
    _, tok = tiny_random("llama")
    with pytest.raises(ValueError, match="give at least the base model"):  # a literal empty dict: at the door
        ComparePanel({}, _toy_tasks(), tokenizer=tok)
    panel = ComparePanel(lambda: {}, _toy_tasks(), tokenizer=tok)  # models made at the click: reported there
    panel.compare_button.click()
    with pytest.raises(ValueError, match="at least one model"):
        panel.wait(60)
    assert 'data-status="failed"' in panel.status_label.value
    assert panel.result.value == "" and panel.heatmap.layout.display == "none"
    panel.shots.value = "0, x"
    panel.compare_button.click()
    assert 'data-status="error"' in panel.status_label.value and "whole numbers" in panel.status_label.value


# --------------------------------------------------------------------------------------------------- every panel
def _every_panel(tmp_path):
    _, tok = tiny_random("llama")
    plot = LivePlot(threaded=False)
    return {
        "DatasetBuilder": DatasetBuilder(_reviews(), task="sentiment", tokenizer=tok, n=0, debounce=None),
        "TrainPanel": TrainPanel(runs_folder=tmp_path / "runs"),
        "ComparePanel": ComparePanel(lambda: {}, ["sentiment", "qa"], target="sentiment"),
        "LivePlot": plot.view,
        "TryPanel": TryPanel(lambda: {}, tasks=["sentiment"]),
    }


INTERACTIVE = (
    ipywidgets.Button,
    ipywidgets.ToggleButtons,
    ipywidgets.Dropdown,
    ipywidgets.SelectMultiple,
    ipywidgets.Text,
    ipywidgets.IntText,
    ipywidgets.Checkbox,
    ipywidgets.IntSlider,
    ipywidgets.FloatSlider,
)


def test_every_control_of_every_panel_has_a_description_and_a_real_tooltip(tmp_path):
    from nbft.widgets._common import tooltip_of, walk

    for name, panel in _every_panel(tmp_path).items():
        controls = [w for w in walk(panel) if isinstance(w, INTERACTIVE)]
        assert controls, name
        for w in controls:
            tip = tooltip_of(w)
            label = f"{name}: {type(w).__name__} {getattr(w, 'description', '')!r}"
            assert tip and tip.strip() and tip != "null", f"{label} has no tooltip (the browser shows 'null')"
            assert (getattr(w, "description", "") or "").strip() or tip.strip(), f"{label} has no accessible name"


def test_every_panel_makes_focus_visible_and_fits_a_narrow_window(tmp_path):
    from nbft.widgets._common import walk

    for name, panel in _every_panel(tmp_path).items():
        tree = walk(panel)
        css = "".join(w.value for w in tree if isinstance(w, ipywidgets.HTML) and "<style>" in w.value)
        assert ":focus-visible" in css and "outline: 3px solid" in css, f"{name}: no visible focus ring"
        assert "nbft-panel" in panel._dom_classes, f"{name}: the CSS is scoped to .nbft-panel"
        for w in tree:
            if isinstance(w, ipywidgets.HBox):
                assert "wrap" in (w.layout.flex_flow or ""), f"{name}: a row that does not wrap"
            if isinstance(w, ipywidgets.IntSlider | ipywidgets.FloatSlider):
                assert w.layout.min_width, f"{name}: slider {w.description!r} can collapse to a handle"
            if isinstance(w, ipywidgets.Image):
                assert int(w.layout.min_width.rstrip("px")) >= 480, f"{name}: a plot can shrink below readable"
            if isinstance(w, ipywidgets.Widget) and w.layout.width and w.layout.width.endswith("px"):
                assert int(w.layout.width[:-2]) <= 440, f"{name}: {type(w).__name__} is {w.layout.width} wide"
