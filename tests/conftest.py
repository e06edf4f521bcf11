"""Shared fixtures. Tests use tiny random models; the real default model is loaded once per session (slow tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep every test run off the Hub: the offline path is the one these machines have, and it is fast to decide.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch, request):
    """Each test gets a private nbft cache unless it asks for the shared default-model cache."""
    if "default_model" in request.fixturenames or "nbft_cache" in request.fixturenames:
        return
    monkeypatch.setenv("NBFT_CACHE", str(tmp_path_factory.mktemp("nbft-cache")))


@pytest.fixture(scope="session")
def nbft_cache(tmp_path_factory) -> Path:
    """One nbft cache for the whole session, starting empty: the offline fallback really runs once."""
    return tmp_path_factory.mktemp("nbft-session-cache")


@pytest.fixture(scope="session")
def _default_model_session(nbft_cache):
    from nbft.models import load_model

    old = os.environ.get("NBFT_CACHE")
    os.environ["NBFT_CACHE"] = str(nbft_cache)
    try:
        return load_model()
    finally:
        if old is None:
            os.environ.pop("NBFT_CACHE", None)
        else:
            os.environ["NBFT_CACHE"] = old


@pytest.fixture
def default_model(_default_model_session, nbft_cache, monkeypatch):
    """(model, tokenizer) of SmolLM2-135M-Instruct via the package-registry fallback, loaded once per session."""
    monkeypatch.setenv("NBFT_CACHE", str(nbft_cache))
    return _default_model_session


@pytest.fixture
def tiny_llama():
    from nbft.models import tiny_random

    return tiny_random("llama")


@pytest.fixture
def tiny_t5():
    from nbft.models import tiny_random

    return tiny_random("t5")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test (e.g. to keep a screenshot)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
