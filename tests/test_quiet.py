"""nbft._quiet: library progress bars off during nbft's calls, each distinct warning once, routed by thread."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import datasets
import pytest

from nbft._quiet import LIBRARY_LOGGERS, quiet
from nbft.data import tokenize_for_training
from nbft.models import load_model, tiny_random

ds_tqdm = importlib.import_module("datasets.utils.tqdm")
ROOT = Path(__file__).resolve().parent.parent


def _bars_enabled() -> tuple[bool, bool]:
    from transformers.utils import logging as hf_logging

    return hf_logging.is_progress_bar_enabled(), not ds_tqdm.are_progress_bars_disabled()


def test_each_distinct_warning_reaches_the_sink_once():
    seen: list[tuple[str, str]] = []
    with quiet(sink=lambda level, text: seen.append((level, text))) as scope:
        for _ in range(3):
            warnings.warn("model 'base' produced empty output", UserWarning, stacklevel=1)
        # the same text as a log line (compare() both warns and logs): still one message
        logging.getLogger("nbft.evaluate.compare").warning("model 'base' produced empty output")
        logging.getLogger("transformers.generation").warning("a different one")
        logging.getLogger("transformers.generation").warning("a different one")
        logging.getLogger("nbft.train").error("training failed: boom")
    assert seen == [
        ("warning", "model 'base' produced empty output"),
        ("warning", "a different one"),
        ("error", "training failed: boom"),
    ]
    assert scope.messages == seen


def test_without_a_sink_warnings_pass_on_once(caplog):
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with quiet():
            for _ in range(4):
                warnings.warn("repeated", UserWarning, stacklevel=1)
            for _ in range(3):
                logging.getLogger("datasets.builder").warning("log repeated")
    assert [str(w.message) for w in recorded] == ["repeated"]
    assert [r.getMessage() for r in caplog.records if r.name == "datasets.builder"] == ["log repeated"]


def test_loggers_and_showwarning_are_restored():
    before = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate) for name in LIBRARY_LOGGERS
    }
    show = warnings.showwarning
    with quiet():
        assert warnings.showwarning is not show
    assert warnings.showwarning is show
    after = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate) for name in LIBRARY_LOGGERS
    }
    assert after == before


def test_a_handler_added_during_the_scope_stays_and_the_logger_is_restored(caplog):
    """A panel (or the user) adds a handler to "nbft" while a scope is on: after the scope the capture is gone,
    propagation is back and each record reaches the root's handlers (pytest's caplog) once, not twice."""
    logger = logging.getLogger("nbft")
    before, propagate = list(logger.handlers), logger.propagate
    added = logging.NullHandler()
    with quiet():
        logger.addHandler(added)
    try:
        assert logger.handlers == [*before, added]
        assert logger.propagate == propagate
        caplog.set_level(logging.INFO, logger="nbft")
        logging.getLogger("nbft.data").info("once")
        assert [r.getMessage() for r in caplog.records if r.name == "nbft.data"] == ["once"]
    finally:
        logger.removeHandler(added)


def test_progress_bars_are_off_until_the_last_scope_ends_even_across_threads():
    assert _bars_enabled() == (True, True)
    outer = quiet().start()
    assert _bars_enabled() == (False, False)
    inner = quiet().start()
    stopper = threading.Thread(target=outer.stop)  # a panel's scope ends in its worker thread
    stopper.start()
    stopper.join()
    assert _bars_enabled() == (False, False), "another scope is still active"
    inner.stop()
    assert _bars_enabled() == (True, True)


def test_a_tokenize_map_prints_no_progress_bar(capfd):
    _, tok = tiny_random("llama")
    rows = datasets.Dataset.from_list([{"prompt": f"q{i}\n", "completion": "a"} for i in range(20)])
    tokenize_for_training(rows, tok)
    assert "tokenize" in capfd.readouterr().err, "without quiet, datasets shows its bar (the test's premise)"
    with quiet():
        tokenize_for_training(rows, tok)
    assert capfd.readouterr().err == ""


def test_load_model_shows_no_library_progress_bars(tmp_path, capfd):
    model, tok = tiny_random("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    capfd.readouterr()
    load_model(tmp_path / "m")
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err, err


def test_warnings_of_a_claimed_worker_thread_go_to_its_scope():
    panel_a: list[str] = []
    panel_b: list[str] = []
    a = quiet(sink=lambda level, text: panel_a.append(text)).start()
    ready, go = threading.Event(), threading.Event()

    def worker() -> None:
        a.claim_thread()
        ready.set()
        go.wait(5)
        warnings.warn("from A's worker", UserWarning, stacklevel=1)

    thread = threading.Thread(target=worker)
    thread.start()
    ready.wait(5)
    b = quiet(sink=lambda level, text: panel_b.append(text)).start()  # started later, in the main thread
    go.set()
    thread.join()
    warnings.warn("from the main thread", UserWarning, stacklevel=1)
    b.stop()
    a.stop()
    assert panel_a == ["from A's worker"]
    assert panel_b == ["from the main thread"]


def test_a_failing_sink_falls_back_to_the_original_destination():
    def broken(level: str, text: str) -> None:
        raise RuntimeError("widget gone")

    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with quiet(sink=broken):
            warnings.warn("still shown", UserWarning, stacklevel=1)
    assert [str(w.message) for w in recorded] == ["still shown"]


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_records_below_warning_pass_unchanged(caplog, level):
    caplog.set_level(level, logger="nbft")
    seen: list[str] = []
    with quiet(sink=lambda lv, text: seen.append(text)):
        logging.getLogger("nbft.data").log(level, "detail")
        logging.getLogger("nbft.data").log(level, "detail")
    assert seen == []
    assert [r.getMessage() for r in caplog.records if r.name == "nbft.data"] == ["detail", "detail"]


def test_the_main_thread_keeps_its_warnings_unless_claimed():
    seen: list[str] = []
    scope = quiet(sink=lambda level, text: seen.append(text))
    started = threading.Thread(target=scope.start)  # a panel's scope whose work runs in another thread
    started.start()
    started.join()
    try:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            warnings.warn("from a notebook cell", UserWarning, stacklevel=1)
        assert [str(w.message) for w in recorded] == ["from a notebook cell"] and seen == []
        helper = threading.Thread(target=lambda: warnings.warn("from a library thread", UserWarning, stacklevel=1))
        helper.start()
        helper.join()
        assert seen == ["from a library thread"], "unclaimed helper threads belong to the newest work"
    finally:
        scope.stop()


def _run_python(code: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.parametrize("call", ["load_model", "tiny_random"])
def test_a_model_load_in_a_fresh_process_prints_no_library_text(tmp_path, call):
    """torchao's "Failed to load ….so" and "Detected no triton", torch's register_constant deprecation and the
    weight-loading bars appeared on the first model load of every fresh kernel."""
    model, tok = tiny_random("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    args = repr(str(tmp_path / "m")) if call == "load_model" else "'llama'"
    proc = _run_python(f"from nbft.models import {call}\n{call}({args})\nprint('loaded')", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "loaded\n"
    assert proc.stderr == "", proc.stderr[-2000:]


def test_plain_tqdm_bars_of_the_gguf_conversion_are_off_in_a_scope(capfd):
    gguf = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    original = gguf.tqdm
    capfd.readouterr()
    with quiet():
        assert list(gguf.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")) == [0, 1, 2]
    assert capfd.readouterr().err == ""
    assert gguf.tqdm is original, "the library gets its tqdm back"


def test_save_dataset_prints_no_progress_bars(tmp_path, capfd):
    from nbft.data import save_dataset

    data = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}] * 5),
            "test": datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}]),
        }
    )
    capfd.readouterr()
    save_dataset(data, tmp_path / "out", "jsonl")
    err = capfd.readouterr().err
    assert "Creating json" not in err and "%|" not in err, err
    assert (tmp_path / "out" / "train.jsonl").read_text().count("\n") == 5


def test_the_cli_shows_nbft_info_but_not_the_libraries(tmp_path):
    code = (
        "import logging\nfrom nbft.cli import main\nmain([])\n"
        "logging.getLogger('matplotlib.font_manager').info('generated new fontManager')\n"
        "logging.getLogger('nbft.demo').info('nbft says hello')\n"
    )
    proc = _run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "fontManager" not in proc.stderr and "INFO nbft.demo: nbft says hello" in proc.stderr, proc.stderr
