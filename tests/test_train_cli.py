"""`nbft train CONFIG`: the README's example config end to end (one process, and two under accelerate launch), and
bad configs answered with one line, exit code 2 and nothing written."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nbft.cli import main
from nbft.job import EXAMPLE, job_from_dict

README = Path(__file__).resolve().parents[1] / "README.md"
# The README's config, made small: a tiny random model, 3 steps, a short comparison.
SMALL = ["model=tiny", "train.max_steps=3", "train.eval_every=2", "train.save_every=2", "max_examples=32",
         "validation_examples=8", "eval.n=6"]  # fmt: skip


def readme_config() -> str:
    text = README.read_text()
    section = text[text.index("## Scale out") :]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def overrides(out: Path) -> list[str]:
    return [arg for item in [*SMALL, f"output_dir={out}"] for arg in ("--set", item)]


def test_print_config_is_the_readme_example_and_valid(capsys):
    assert main(["train", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert printed == EXAMPLE == readme_config()
    job = job_from_dict(yaml.safe_load(printed))
    assert job.data_kind == "task" and job.train.max_steps == 40 and job.eval["tasks"] == ["sentiment", "qa"]


def test_readme_config_runs_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(readme_config())
    out = tmp_path / "run"
    assert main(["train", str(cfg), *overrides(out)]) == 0
    printed = capsys.readouterr().out
    assert "completed after 3 steps" in printed and "1 process(es)" in printed and "sentiment" in printed
    rows = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 3]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000003"]  # + final
    assert json.loads((out / "comparison.json").read_text())
    card = (out / "model" / "README.md").read_text()
    assert "## Evaluation" in card and "sentiment" in card
    # The run holds its config: a second start refuses to overwrite it, with the fix.
    assert main(["train", str(cfg), *overrides(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_config_under_accelerate_launch_with_two_processes(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(readme_config())
    out = tmp_path / "run"
    # On CPU, accelerate starts several processes through torchrun with --multi_gpu (its --cpu flag would start one).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launch, "-m", "nbft", "train", str(cfg), *overrides(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and proc.stdout.count("completed after 3 steps") == 1  # rank 0 speaks
    rows = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]  # one line per step
    assert (out / "comparison.txt").exists() and (out / "model" / "model.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000003"]  # + final


BAD = [
    ({"modle": "tiny"}, "unknown field 'modle'. Did you mean 'model'?"),
    ({"train": {"learning_rat": 1e-4}}, "train.learning_rat: unknown TrainConfig field. Did you mean 'learning_rate'"),
    ({"train": {"max_steps": "ten"}}, "train.max_steps: expected an integer or null, got 'ten'"),
    ({"train": {"learning_rate": -1}}, "TrainConfig.learning_rate must be > 0"),
    ({"train": {"schedule": "exp"}}, "train.schedule: must be one of 'linear', 'cosine', 'constant'"),
    ({"data": "missing.jsonl"}, "data: file not found: missing.jsonl"),
    ({"data": "sentimnt"}, "data: unknown task 'sentimnt'. Did you mean 'sentiment'"),
    ({"eval": {"tasks": ["qaa"]}}, "eval.tasks: unknown task 'qaa'. Did you mean 'qa'?"),
    ({"eval": {"tasks": ["qa"], "nn": 5}}, "eval.nn: unknown EvalConfig field. Did you mean 'n'?"),
    ({"template": "sentiment/99"}, "template: unknown template 'sentiment/99'"),
    ({"chat_template": "yes"}, "chat_template: expected true or false, got 'yes'"),
    ({"model": "./no/such/model"}, "model: folder not found: ./no/such/model"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_config_is_one_line_exit_2_and_nothing_written(change, message, tmp_path, capsys, monkeypatch):
    raw = yaml.safe_load(EXAMPLE)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict) and key != "eval":
            raw[key].update(value)
        else:
            raw[key] = value
    raw["output_dir"] = str(tmp_path / "run")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"nbft train: error: {cfg}:"), err
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.yaml"]  # nothing written


def test_unreadable_configs(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\n  data: [unclosed\n")
    assert main(["train", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "--print-config" in capsys.readouterr().err
    missing = tmp_path / "m.json"
    missing.write_text(json.dumps({"data": "sentiment"}))
    assert main(["train", str(missing)]) == 2
    assert "missing field 'model'" in capsys.readouterr().err


def test_warns_when_accelerate_cpu_flag_started_one_process(monkeypatch, caplog):
    from nbft.train.api import _warn_single_cpu_launch

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _warn_single_cpu_launch()
    assert "--multi_gpu --num_processes" in caplog.text
