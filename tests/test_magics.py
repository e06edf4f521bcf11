"""%load_ext nbft: the magics wrap the public API, and every error is one line that names the fix."""

from __future__ import annotations

import re
import threading

import pytest

pytest.importorskip("IPython")

from IPython.core.interactiveshell import InteractiveShell

import nbft.magics
from nbft.models import tiny_random
from nbft.train import TrainConfig, finetune


@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nbft")
    return ip


def _pairs(n: int = 12) -> list[dict[str, str]]:
    return [{"prompt": f"Repeat {i}.\n", "completion": str(i)} for i in range(n)]


def _one_line_error(shell, capsys, source: str) -> str:
    capsys.readouterr()
    result = shell.run_cell(source)
    assert not result.success
    err = capsys.readouterr().err + capsys.readouterr().out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("UsageError: "), err
    assert "Traceback" not in err and "usage: usage" not in err
    return lines[0]


def test_register_a_template_from_a_cell_and_list_things(shell):
    from nbft.templates import get_template

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


def test_the_docstring_example_runs_cell_by_cell(shell):
    example = nbft.magics.__doc__.split("::", 1)[1]
    cells = [textwrap_dedent(c) for c in re.split(r"\n\s*\n", example.strip("\n")) if c.strip()]
    assert len(cells) == 3 and cells[1].startswith("%%nbft_template")
    for cell in cells:
        assert shell.run_cell(cell).success, cell
    assert list(shell.run_line_magic("nbft_templates", "tweet")["id"]) == ["tweet/1"]


def textwrap_dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text).strip("\n")


@pytest.mark.parametrize(
    ("source", "fix"),
    [
        ("%%nbft_template bad/1\n{{ a }}", "--target"),
        ("%%nbft_template bad/2 --target a\n   ", "write the instruction"),
        ("%nbft_templates nosuchtask", "Known:"),
        ("%nbft_templates a b", "at most one task"),
        ("%nbft_tasks --online", "--offline"),
        ("%nbft_models extra", "takes no arguments"),
        ("%nbft runss", "Did you mean 'runs'"),
        ("%nbft runs /no/such/folder", "pass the folder"),
        ("%nbft stop", "no run is training"),
        ("%nbft gpu now", "takes no arguments"),
    ],
)
def test_every_magic_error_is_one_line_that_names_the_fix(shell, capsys, source, fix):
    line = _one_line_error(shell, capsys, source)
    assert fix in line, line


def test_nbft_help_lists_the_subcommands(shell):
    text = shell.run_line_magic("nbft", "")
    assert "%nbft runs" in text and "%nbft stop" in text and "%nbft gpu" in text


def test_nbft_runs_and_stop_a_live_run(shell, tmp_path):
    model, tok = tiny_random("llama")
    at_step, release = threading.Event(), threading.Event()

    class Hold:
        def on_step(self, state):
            if state.step == 2:
                at_step.set()
                release.wait(30)

    run = finetune(model, tok, _pairs(), config=TrainConfig(max_steps=40, batch_size=4), observers=[Hold()],
                   run_dir=tmp_path / "live", background=True)  # fmt: skip
    try:
        assert at_step.wait(60)
        table = shell.run_line_magic("nbft", f"runs {tmp_path}")
        assert table.status.tolist() == ["running"]
        message = shell.run_line_magic("nbft", "stop live")
        assert "stopping" in message and str(tmp_path / "live") in message
    finally:
        release.set()
        run.wait(60)
    assert run.status == "stopped"
    assert shell.run_line_magic("nbft", f"runs {tmp_path}").status.tolist() == ["stopped"]


def test_nbft_gpu_names_what_holds_memory(shell):
    model, _ = tiny_random("llama")
    shell.user_ns["held_base"] = model
    try:
        report = shell.run_line_magic("nbft", "gpu")
        text = repr(report)
        assert "held_base" in text and "Memory" in text
        assert "<table" in report._repr_html_()
    finally:
        del shell.user_ns["held_base"]
