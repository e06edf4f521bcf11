"""The demo end to end: with a tiny random model (fast, every CI run) and with the real default model (slow)."""

from __future__ import annotations

import json

import pytest

from nbft.demo import DemoSettings, run_demo
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
    # the main run scored its validation loss (64 target validation examples) and ran the forgetting monitor
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
