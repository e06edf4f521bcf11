"""The demo end to end: with a tiny random model (fast, every CI run) and with the real default model (slow)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nbft.demo import TINY_DEFAULTS, DemoSettings, run_demo
from nbft.run_dirs import load_history, main_run_dir
from nbft.sweeps import load_sweep


def test_demo_runs_end_to_end_with_a_tiny_model(nbft_cache, tmp_path):
    lines: list[str] = []
    result = run_demo(model="tiny", out_dir=tmp_path / "demo", progress=False, echo=lines.append)
    out = tmp_path / "demo"
    main = out / "target-only" / "seed-0"  # the demo's folder is a sweep's; its main run is the first seed's tuned run
    assert result["run_dir"] == main and main_run_dir(out) == main
    for name in ("report.html", "metrics.json", "loss.png", "tables", "sweep.json"):
        assert (out / name).exists(), name
    assert not (out / "sweep.png").exists(), "one variant: no gain-against-forgetting figure"
    for name in ("model/config.json", "model/README.md"):
        assert (main / name).exists(), name
    assert any(p.suffix == ".safetensors" for p in (main / "model").iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run_dir"] == "target-only/seed-0" and metrics["train"]["final_loss"] is not None
    assert metrics["target"] == "sentiment"
    assert set(metrics["tasks"]) == {"sentiment", "sentiment · movie reviews", "qa", "reply", "ner", "summarize-paper"}
    # the target's out-of-domain probe sits right below it, outside forgetting
    assert list(metrics["tasks"])[:2] == ["sentiment", "sentiment · movie reviews"]
    assert metrics["tasks"]["sentiment · movie reviews"]["role"] == "probe"
    assert metrics["forgetting"][0]["n_other_tasks"] == 4
    assert metrics["forgetting"][0]["probes"][0]["task"] == "sentiment · movie reviews"
    assert "base 2-shot" in metrics["columns"] and "tuned" in metrics["columns"]
    assert metrics["timings"]["total_s"] > 0
    assert "## Evaluation" in (main / "model" / "README.md").read_text()
    # the main run scored its validation loss (target validation examples) and ran the forgetting monitor
    history = load_history(main)
    assert [h["step"] for h in history if h["kind"] == "eval"][-1] == 6 and all(
        h["val_loss"] > 0 for h in history if h["kind"] == "eval"
    )
    monitor = [h for h in history if h["kind"] == "monitor"]
    assert monitor and {"sentiment", "qa"} <= set(monitor[-1]["scores"])
    steps = [line[:5] for line in lines if line.startswith("[")]
    assert steps == [f"[{i}/6]" for i in range(1, 7)]
    table = result["table"]
    assert set(table.forgetting.columns) >= {"G", "BWT", "AF", "worst_drop", "significant_regressions"}
    # the demo trains on the target's train split only: the run's hashes match no test example of any task it scores
    from nbft.evaluate import find_overlap, get_task
    from nbft.evaluate.tasks import expand_probes
    from nbft.hashes import read_training_hashes

    hashes = read_training_hashes(main)
    assert hashes.n_examples == 6 * 4 == metrics["runs"]["target-only/seed-0"]["examples"]["sentiment"]
    scored = expand_probes([get_task(n) for n, info in metrics["tasks"].items() if info["role"] != "probe"])
    assert [t.name for t in scored] == list(metrics["tasks"])
    for task in scored:
        assert not any(find_overlap(task, list(task.load()["test"]), hashes)), task.name
    assert metrics["models"]["tuned"]["training"]["checked"]
    assert all(info["overlap"]["n_overlap"] == 0 for info in metrics["tasks"].values())
    assert "sentiment" in result["text"]
    # the terminal view fits 120 columns (issue 17); report.html keeps every column: k-shot W/T/L, flags, CIs in tenths
    printed = [line for chunk in lines for line in chunk.splitlines()]
    assert max(len(line) for line in printed) <= 120, max(printed, key=len)
    assert "W/T/L tuned" in result["text"] and "W/T/L base 2-shot" not in result["text"]
    page = (out / "report.html").read_text()
    assert "W/T/L base 2-shot" in page and "flag base 2-shot" in page and "Δ CI tuned" in page
    # the sweep's record of the same folder: the same table
    assert load_sweep(out).table.columns == result["table"].columns
    old = tmp_path / "old"  # a folder nbft's sweep did not write (e.g. a demo run of an older nbft) is refused
    (old / "model").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already holds a demo run"):
        run_demo(model="tiny", out_dir=old, progress=False)


@pytest.mark.slow
def test_real_demo_few_steps_improves_sentiment(default_model, tmp_path):
    """The real default model, a short run: the target task gains, and the run writes every file."""
    # the default 40 training steps (fewer can leave the model predicting one label); fewer test examples
    settings = DemoSettings(steps=40, n=40, n_other=8, n_per_task={}, icl_shots=(0, 3), icl_n=8, max_new_tokens_other=8)
    # model=None loads the default model from the session's cache, as `nbft demo` does; fine-tuning happens in
    # place, so passing the shared fixture object would leave a tuned model behind for other tests.
    result = run_demo(model=None, out_dir=tmp_path / "demo", settings=settings, progress=False)
    table = result["table"]
    g = table.forgetting.iloc[0]
    assert g["G"] > 0, table.to_text()
    assert (tmp_path / "demo" / "report.html").exists()


def test_an_interrupted_demo_with_seeds_and_replay_resumes_through_the_sweep(nbft_cache, tmp_path, monkeypatch):
    """`nbft demo --seeds 2 --replay 0.5`: its runs are the sweep's (sweep.json, load_sweep, the gain-against-
    forgetting figure); stopped during its third run, the same call trains only what is left and writes the report."""
    import nbft
    import nbft.train as train
    from nbft.sweeps import SweepInterrupted

    real, calls = train.finetune, []

    class StopAtFirstStep:
        def on_step(self, state):
            raise nbft.StopTraining

    def interrupted(model, tok, data, *args, observers=(), **kwargs):
        calls.append(kwargs["run_dir"])
        if len(calls) == 3:  # the first replay run: Stop pressed after its first step
            observers = [*observers, StopAtFirstStep()]
        return real(model, tok, data, *args, observers=observers, **kwargs)

    monkeypatch.setattr(train, "finetune", interrupted)
    out = tmp_path / "demo"
    args = dict(model="tiny", out_dir=out, tasks=["qa", "ner"], seeds=2, replay=[0.5], replay_from=["qa"],
                progress=False)  # fmt: skip
    with pytest.raises(SweepInterrupted, match="same --out"):
        run_demo(**args)
    assert not (out / "report.html").exists() and (out / "target-only" / "seed-1" / "model").is_dir()
    calls.clear()
    lines: list[str] = []
    result = run_demo(**args, echo=lines.append)
    assert [c.relative_to(out).as_posix() for c in calls] == ["replay-0.5/seed-0", "replay-0.5/seed-1"]
    assert any("resuming" in line for line in lines) and any("trained earlier" in line for line in lines)
    assert any(line.startswith("[2/6] base model: the evaluation of the earlier call") for line in lines)
    columns = ["base", "base 2-shot", "tuned", "replay 0.5"]  # the demo's columns, as before the sweep engine
    assert result["table"].columns == columns
    again = load_sweep(out)  # the demo's folder is a sweep folder: the same table after a restart, no model
    assert again.table.columns == columns and again.table.results["models"]["tuned"]["runs"] == ["seed 0", "seed 1"]
    assert list(again.points["variant"]) == ["tuned", "replay 0.5"]
    assert (out / "sweep.png").stat().st_size > 0 and (out / "report.html").is_file()
    assert len(nbft.runs(tmp_path)) == 4, "nbft.runs lists a demo's runs, three levels down"
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["main_run"] == "target-only/seed-0" and saved["plan"]["monitor"] == 2
    assert saved["plan"]["validation"] == {"n": TINY_DEFAULTS.n_validation, "every": None}
    assert saved["plan"]["replay_max_length"] == 96
    assert saved["runs"]["replay-0.5/seed-1"]["examples"] == {"sentiment": 24, "qa": 24}
    # validation loss and the monitor in every run, the replay runs too
    for run_dir in ("target-only/seed-1", "replay-0.5/seed-0"):
        history = load_history(out / run_dir)
        assert any(h["kind"] == "eval" for h in history) and any(h["kind"] == "monitor" for h in history)
    # a resumed demo with another fixed setting is refused, naming it
    with pytest.raises(ValueError, match="other fixed settings.*batch_size"):
        run_demo(**args, settings=DemoSettings(**{**dataclasses.asdict(TINY_DEFAULTS), "batch_size": 2}))
    try_it = pytest.importorskip("nbft.widgets.try_it")
    panel = try_it.TryPanel.from_run_dir(out, base="tiny")  # the demo's folder opens its main run
    assert str(panel.models["tuned"]).endswith("target-only/seed-0/model")


def test_the_default_balances_a_labelled_target_only(nbft_cache, tmp_path):
    """balance is the demo's default for a labelled target (chosen by the part-7 sweep); a target without labels
    (qa) is trained as its train split holds it, not refused, unless --balance is asked for explicitly."""
    assert DemoSettings().balance is True
    run_demo(model="tiny", target="qa", tasks=["sentiment"], out_dir=tmp_path / "qa", progress=False)
    record = json.loads((tmp_path / "qa" / "sweep.json").read_text())
    assert [r["settings"]["balance"] for r in record["runs"].values()] == [False]
    with pytest.raises(ValueError, match="has no labels"):
        run_demo(model="tiny", target="qa", tasks=["sentiment"], out_dir=tmp_path / "x", balance=True, progress=False)
