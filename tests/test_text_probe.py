"""The label-free general-text probe on tiny models: its loss equals the model's own forward on the same chunks, the
chunks are fixed, the compare row has the right direction (lower is better), the monitor writes it, bad input."""

from __future__ import annotations

import copy
import json
import math

import datasets
import pytest
import torch
from _train_data import records, spread
from torch.nn import functional as F

import nbft.evaluate.monitor as monitor_module
from nbft import compare, report
from nbft.config import TrainConfig
from nbft.evaluate import ForgettingMonitor, Task, TextProbeError, general_text_loss
from nbft.evaluate.text_probe import text_chunks
from nbft.models import tiny_random
from nbft.sources import SourceUnavailableError, general_text
from nbft.train import finetune

ROW = ("general text", "loss per token")


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_random("llama", seed=0)
    return spread(model), tok


def _worse(model, std=0.3, seed=1):
    """A copy of ``model`` with noise on every weight: a model that is clearly worse at plain text."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return other


def _hand(model, chunks):
    """Each chunk's mean next-token cross-entropy from the model's own forward, one chunk at a time."""
    out = []
    with torch.no_grad():
        for c in chunks:
            ids = torch.tensor([c])
            logits = model(input_ids=ids).logits[0].float()
            out.append(F.cross_entropy(logits[:-1], ids[0, 1:]).item())
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # gemma2: soft-capped logits, the unfused loss path
def test_loss_equals_the_models_own_forward_on_the_same_chunks(arch):
    model, tok = tiny_random(arch, seed=0)
    spread(model)
    r = general_text_loss(model, tok, n_chunks=5, chunk_tokens=40, batch_size=2)  # the last batch holds one chunk
    chunks = text_chunks(tok, n_chunks=5, chunk_tokens=40)
    hand = _hand(model, chunks)
    assert r["per_chunk"] == pytest.approx(hand, abs=2e-5)
    assert r["loss"] == pytest.approx(sum(hand) / len(hand), abs=2e-5)
    assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    assert r["tokens"] == 5 * 39 and r["n_chunks"] == 5 and r["chunk_tokens"] == 40
    assert max(hand) - min(hand) > 1e-3, "the chunks differ, so a per-chunk mix-up would show"


def test_chunks_are_fixed_and_evenly_spread_over_the_text(tiny):
    _, tok = tiny
    text = "".join(chr(97 + i % 26) for i in range(1000))  # the tiny tokenizer is byte-level: 1 char, 1 token
    ids = tok(text, add_special_tokens=False)["input_ids"]
    chunks = text_chunks(tok, n_chunks=3, chunk_tokens=100, text=text)
    windows = len(ids) // 100
    assert chunks == [ids[(i * windows // 3) * 100 :][:100] for i in range(3)]
    book = text_chunks(tok, n_chunks=4, chunk_tokens=64)
    assert book == text_chunks(tok, n_chunks=4, chunk_tokens=64) and len({tuple(c) for c in book}) == 4
    assert tok.decode(book[0]).startswith("LADY SUSAN"), "the book's first chunk opens it; Gutenberg's header is gone"
    assert "Project Gutenberg" not in general_text()


def test_deterministic_and_leaves_the_models_mode_alone(tiny):
    model, tok = tiny
    model.train()
    a = general_text_loss(model, tok, n_chunks=3, chunk_tokens=32)
    b = general_text_loss(model, tok, n_chunks=3, chunk_tokens=32, batch_size=1)
    assert a["per_chunk"] == pytest.approx(b["per_chunk"], abs=1e-5) and a["chunks_sha"] == b["chunks_sha"]
    assert general_text_loss(model, tok, n_chunks=3, chunk_tokens=32)["per_chunk"] == a["per_chunk"]
    assert model.training, "the probe restores train mode"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n_chunks": 0}, "n_chunks must be a whole number >= 1"),
        ({"n_chunks": 2.5}, "n_chunks must be a whole number"),
        ({"n_chunks": True}, "n_chunks must be a whole number"),
        ({"chunk_tokens": 1}, "chunk_tokens must be a whole number >= 2"),
        ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
        ({"n_chunks": 100_000}, "Lower n_chunks (at most"),
        ({"text": "   "}, "text is empty"),
    ],
)
def test_bad_settings_are_clear_errors(tiny, kwargs, words):
    model, tok = tiny
    with pytest.raises(TextProbeError) as err:
        general_text_loss(model, tok, **{"n_chunks": 2, "chunk_tokens": 16, **kwargs})
    assert words in str(err.value)


def test_an_encoder_decoder_model_is_refused_with_the_reason():
    model, tok = tiny_random("t5", seed=0)
    with pytest.raises(TextProbeError, match="encoder-decoder"):
        general_text_loss(model, tok, n_chunks=2, chunk_tokens=16)


def test_the_text_missing_offline_is_the_usual_source_error(tiny, monkeypatch):
    import nbft._registry as registry

    real = registry.wheel_member

    def offline(package, version, member):  # the book's wheel cannot be fetched; the tasks' wheels are cached
        if package == "music21":
            raise registry.RegistryError("no network")
        return real(package, version, member)

    model, tok = tiny
    monkeypatch.setattr(registry, "wheel_member", offline)
    general_text.cache_clear()
    try:
        with pytest.raises(SourceUnavailableError, match=r"pip download --no-deps music21==9\.1\.0"):
            general_text_loss(model, tok, n_chunks=2, chunk_tokens=16)
        # the monitor: asked for explicitly, the run is refused when training starts; by default it warns and is off
        with pytest.raises(SourceUnavailableError):
            ForgettingMonitor(["sentiment"], n=1, text_probe=True).prepare()
        mon = ForgettingMonitor(["sentiment"], n=1)
        with pytest.warns(UserWarning, match="general-text probe is off"):
            mon.prepare()
        assert mon.text_probe is None
    finally:
        general_text.cache_clear()


def _qa():
    rows = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(8)]
    splits = {"train": datasets.Dataset.from_list(rows[:4]), "test": datasets.Dataset.from_list(rows[4:])}
    return Task("toy-qa", datasets.DatasetDict(splits), "qa/1", max_new_tokens=4)


PROBE = {"n_chunks": 8, "chunk_tokens": 48}


def test_compare_row_lower_is_better_both_ways(tiny):
    model, tok = tiny
    worse = _worse(model)
    table = compare({"base": model, "tuned": worse}, [_qa()], n=2, tokenizer=tok, progress=False, text_probe=PROBE)
    base, tuned = (general_text_loss(m, tok, **PROBE)["loss"] for m in (model, worse))
    d = table.results["text_probe"]["deltas"][0]
    assert d["delta"] == pytest.approx(tuned - base, abs=1e-9) and d["delta"] > 0
    assert d["rose"] and d["ci_low"] > 0 and d["regression"], "a loss that rose is the regression"
    df = report.table_frame(table)
    assert (
        df.index[-1] == ROW
        and df.loc[ROW, "base"] == pytest.approx(base)
        and df.loc[ROW, "tuned"] == pytest.approx(tuned)
    )
    assert df.loc[ROW, "flag tuned"] == "▼ loss rose"
    assert "loss per token" in report.forgetting_summary(table) and "rose (worse)" in report.forgetting_summary(table)
    assert f"{tuned:.3f}" in table.to_text(), "the row keeps 3 decimals"
    # the task rows' significance count is about tasks: the probe is not one of them
    assert table.results["forgetting"][0]["n_other_tasks"] == 1
    red = report.side_by_side(table).to_html()
    # the other way round: the better model's fall is green, and flagged as a gain
    flipped = compare({"base": worse, "tuned": model}, [_qa()], n=2, tokenizer=tok, progress=False, text_probe=PROBE)
    f = flipped.results["text_probe"]["deltas"][0]
    assert f["delta"] < 0 and f["fell"] and not f["rose"]
    assert report.table_frame(flipped).loc[ROW, "flag tuned"] == "▲ loss fell"
    green = report.side_by_side(flipped).to_html()
    cell = f"{f['delta']:+.3f}"
    assert cell in green and f"{d['delta']:+.3f}" in red
    for html_, value, colour in ((red, d["delta"], report.RED), (green, f["delta"], report.GREEN)):
        cls = _cell_class(html_, f"{value:+.3f}")
        assert f"color: {colour}" in _css_of(html_, cls)


def _cell_class(html_: str, text: str) -> str:
    """The id of the table cell that shows ``text`` (pandas Styler gives each cell an id and a CSS rule)."""
    end = html_.index(f">{text}<")
    start = html_.rindex("<td", 0, end)
    return html_[start:end].split('id="', 1)[1].split('"', 1)[0]


def _css_of(html_: str, cell_id: str) -> str:
    start = html_.index(f"#{cell_id}")
    return html_[start : html_.index("}", start)]


def test_compare_probe_is_off_by_default_and_skips_an_encoder_decoder_column(tiny):
    model, tok = tiny
    plain = compare({"base": model}, [_qa()], n=2, tokenizer=tok, progress=False)
    assert "text_probe" not in plain.results and ROW not in report.table_frame(plain).index
    t5, t5_tok = tiny_random("t5", seed=0)
    table = compare({"base": (t5, t5_tok)}, [_qa()], n=2, progress=False, text_probe=PROBE)
    assert table.results["text_probe"]["columns"] == {}
    assert any("general text: 'base' not measured (encoder-decoder" in n for n in table.notes)
    with pytest.raises(TextProbeError, match="unknown settings"):
        compare({"base": model}, [_qa()], n=2, tokenizer=tok, text_probe={"chunks": 3})


def test_the_monitor_writes_the_text_loss_at_each_point(tmp_path, monkeypatch):
    def fixed_score(model, tokenizer, task, examples, config=None, **kwargs):  # only the probe runs for real
        return {"value": 50.0, "headline": task.headline_key(), "outputs": [""] * len(examples), "ll_choices": None,
                "references": [task.reference(ex) for ex in examples]}  # fmt: skip

    monkeypatch.setattr(monitor_module, "score", fixed_score)
    model, tok = tiny_random("llama", seed=0)
    before = general_text_loss(copy.deepcopy(model), tok, n_chunks=2, chunk_tokens=128)["loss"]
    mon = ForgettingMonitor(["sentiment", "qa"], every=2, n=2, text_probe=2)
    cfg = TrainConfig(max_steps=4, batch_size=4, learning_rate=1e-2, precision="fp32")
    run = finetune(model, tok, records(), config=cfg, run_dir=tmp_path / "r", observers=[mon])
    rows = [h for h in run.history if h["kind"] == "monitor"]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert rows[0]["text_loss"] == pytest.approx(before, abs=1e-5), "step 0 is the base model's probe"
    assert all(r["text_loss_base"] == rows[0]["text_loss"] for r in rows)
    assert rows[-1]["text_loss"] != rows[0]["text_loss"] and rows[0]["text_probe"] == {
        "n_chunks": 2,
        "chunk_tokens": 128,
    }
    final = general_text_loss(model, tok, n_chunks=2, chunk_tokens=128)["loss"]
    assert rows[-1]["text_loss"] == pytest.approx(final, abs=1e-5)
    written = [json.loads(ln) for ln in (tmp_path / "r" / "history.jsonl").read_text().splitlines()]
    assert [w["text_loss"] for w in written if w["kind"] == "monitor"] == [r["text_loss"] for r in rows]
    from nbft.widgets._figures import monitor_figure

    fig = monitor_figure(run.history)
    lines = [ln for ax in fig.axes for ln in ax.lines if ln.get_gid() == "nbft-text-loss"]
    assert len(lines) == 1 and list(lines[0].get_ydata()) == [r["text_loss"] for r in rows]
    off = ForgettingMonitor(["sentiment"], n=1, text_probe=False)
    assert off.text_probe is None
    with pytest.raises(ValueError, match="text_probe"):
        ForgettingMonitor(["sentiment"], n=1, text_probe=0)


def test_a_column_of_several_runs_averages_them_with_a_two_level_ci(tiny):
    model, tok = tiny
    runs = [(_worse(model, std=0.1, seed=s), tok) for s in (1, 2)]
    table = compare({"base": model, "tuned": runs}, [_qa()], n=2, tokenizer=tok, progress=False, text_probe=PROBE)
    base = general_text_loss(model, tok, **PROBE)["loss"]
    each = [general_text_loss(m, tok, **PROBE)["loss"] - base for m, _ in runs]
    d = table.results["text_probe"]["deltas"][0]
    assert d["n_seeds"] == 2 and d["per_seed"] == pytest.approx(each, abs=1e-9)
    assert d["delta"] == pytest.approx(sum(each) / 2, abs=1e-9) and d["ci_low"] <= d["delta"] <= d["ci_high"]
    assert report.table_frame(table).loc[ROW, "seeds tuned"] == f"{min(each):+.3f} to {max(each):+.3f}"
