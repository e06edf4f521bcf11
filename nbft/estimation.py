"""``nbft.estimate``: peak memory and step time of a fine-tune, predicted before it starts, with settings that fit.

Memory is added up from what the engine keeps: weights in the compute dtype, fp32 master weights (unless pure
bf16), gradients (the model's, and the fp32 masters'), AdamW's two moments (fp32, bf16 in pure bf16, 8-bit), the
activations saved for backward, and the LM head's chunk of logits. The activations per token are **measured**, not
guessed: a copy of the model with one and with two decoder layers (a 256-token vocabulary, random weights, the run's
compute dtype) runs forward on 64 tokens with a hook that adds up every tensor autograd saves, so any architecture
is covered, with and without activation checkpointing. Step time is the step's FLOPs (6 per parameter and token,
plus the LM head on labelled tokens and attention) over the matmul rate measured on the device for a moment, times an
efficiency factor for the non-matmul work.

Example:
    >>> import nbft
    >>> model, tok = nbft.tiny_random()
    >>> est = nbft.estimate(model, nbft.TrainConfig(batch_size=4, max_length=128))  # doctest: +SKIP
    >>> print(est.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import sys
import time
from typing import Any

import torch

from nbft.config import TrainConfig

logger = logging.getLogger("nbft.estimation")

GIB = 2**30
EFFICIENCY = {"cpu": 0.45, "cuda": 0.45}
"""Share of the device's measured matmul rate that a training step reaches (the rest goes to elementwise work,
attention and the optimizer); calibrated on the benchmarks (see benchmarks/README.md)."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What :func:`estimate` predicts for one configuration, and the alternatives that fit the device."""

    device: str
    precision: str
    parameters: int
    tokens_per_micro_batch: int
    memory: dict[str, int]
    """Bytes by part: ``weights``, ``master_weights``, ``gradients``, ``optimizer``, ``activations``, ``lm_head``."""
    peak_bytes: int
    """Predicted peak of the training tensors (on CPU, the process also holds ~0.5 GiB of libraries)."""
    available_bytes: int | None
    """Memory the device can give to training (CUDA: total; CPU: available RAM plus what the model holds already)."""
    step_flops: float
    step_seconds: float | None
    """Predicted seconds per optimizer step (None when the device rate could not be measured)."""
    suggestions: list[dict[str, Any]]
    """Alternatives (changed ``TrainConfig`` fields, ``peak_gib``, ``step_s``, ``fits``), fastest fitting first."""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    """What the run will do differently from what the config asks (a memory mode whose library is missing falls
    back to fp32 masters + AdamW, as ``finetune`` does): the prediction is for what will run."""

    @property
    def fits(self) -> bool | None:
        if self.available_bytes is None:
            return None
        return self.peak_bytes <= 0.9 * self.available_bytes

    def summary(self) -> str:
        """A few lines for a notebook or a log."""
        lines = [
            f"{self.parameters / 1e6:.0f}M parameters, {self.precision} on {self.device}, "
            f"{self.tokens_per_micro_batch} tokens per micro-batch",
            "peak memory ~{:.2f} GiB ({})".format(
                self.peak_bytes / GIB, ", ".join(f"{k} {v / GIB:.2f}" for k, v in self.memory.items())
            ),
        ]
        if self.available_bytes is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"{verdict} in {self.available_bytes / GIB:.1f} GiB available")
        if self.step_seconds is not None:
            lines.append(f"~{self.step_seconds:.2f} s per optimizer step ({self.step_flops / 1e12:.2f} TFLOP)")
        lines.extend(f"note: {note}" for note in self.notes)
        best = next((s for s in self.suggestions if s["fits"]), None)
        if best is not None and best["changes"]:
            step = f", ~{best['step_s']:.2f} s/step" if best["step_s"] == best["step_s"] else ""  # NaN: no rate
            lines.append(f"suggested: {best['changes']} (~{best['peak_gib']:.2f} GiB{step})")
        return "\n".join(lines)


def estimate(
    model: Any,
    config: TrainConfig | None = None,
    *,
    data: Any = None,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    measure_rate: bool = True,
) -> Estimate:
    """Predict peak memory and step time of ``finetune(model, tokenizer, data, config=config)`` on ``device``.

    ``data`` (optional, as ``finetune`` takes it) gives the real micro-batch sizes; without it a micro-batch is
    taken as ``batch_size`` examples of ``max_length`` tokens (an upper bound). ``device`` defaults to the one
    training would use (CUDA when available). A memory mode whose library is missing (``master_weights=False``
    without torchao, ``optimizer="adamw-8bit"`` without a working bitsandbytes) is predicted as the fallback the
    run takes, and ``notes`` says so. Each suggestion is predicted exactly as ``estimate`` would predict the config
    with its ``changes`` applied.

    Example:
        >>> from nbft.models import tiny_random
        >>> model, tok = tiny_random()
        >>> est = estimate(model, TrainConfig(batch_size=4, max_length=128, precision="fp32"), device="cpu")
        >>> est.memory["weights"] == 4 * est.parameters  # fp32 weights: 4 bytes per parameter
        True
        >>> est.fits, est.suggestions[0]["changes"]  # doctest: +SKIP
        (True, {})
        >>> print(est.summary())  # doctest: +SKIP
    """
    from nbft.train.api import _check_arguments, _check_flag
    from nbft.train.precision import precision_name, resolve_precision

    cfg = _check_arguments(model, config, [], background=False, overwrite=False)
    _check_flag("measure_rate", measure_rate)
    dev = _device(device) if device is not None else _default_device()
    compute = resolve_precision(cfg.precision, dev) or torch.float32
    params = _unique_parameters(model)
    n = sum(p.numel() for p in params)
    micro_batches = _MicroBatches(model, data, tokenizer)
    per_token = _activation_bytes_per_token(model, compute)
    rate = _matmul_rate(model, compute, dev) if measure_rate else None
    available = _available_bytes(dev, model)
    plans: dict[tuple[str, bool], Any] = {}

    def predict(c: TrainConfig) -> tuple[dict[str, int], int, float, float | None, str | None]:
        from nbft.train.memory import OptimizerPlan, plan_optimizer

        # What the engine will run: the micro-batches of this config, and the optimizer it falls back to.
        tokens, labels, lengths = micro_batches(c)
        key = (c.optimizer, not c.master_weights and compute == torch.bfloat16)
        if key not in plans and c is not cfg and key == ("adamw-8bit", False) and "bitsandbytes" not in sys.modules:
            # a suggestion (offered only where bitsandbytes is installed): not imported just to suggest it, since
            # importing it keeps nbft.launch from forking on a GPU and costs seconds
            plans[key] = OptimizerPlan("adamw-8bit", pure_bf16=False)
        if key not in plans:
            plans[key] = plan_optimizer(c.optimizer, key[1], dev)
        plan = plans[key]
        memory = _memory(model, params, c, plan, compute, dev, tokens, labels, per_token)
        peak = _peak(memory, c, n, compute)
        flops = _step_flops(model, n, c, tokens, labels, lengths)
        seconds = flops / (rate * EFFICIENCY.get(dev.type, 0.45)) if rate else None
        return memory, peak, flops, seconds, plan.note

    memory, peak, flops, seconds, note = predict(cfg)
    tokens = micro_batches(cfg)[0]
    suggestions = []
    for changes in _alternatives(cfg, compute):
        c = dataclasses.replace(cfg, **changes)
        _, p, _, s, alt_note = predict(c)
        if changes and alt_note is not None and alt_note != note:
            continue  # its library cannot run here: the run would not change
        fits = available is None or p <= 0.9 * available
        step = s if s is not None else math.nan
        suggestions.append({"changes": changes, "peak_gib": p / GIB, "step_s": step, "fits": fits})
    # Fitting first; then faster (within 5%: timing is rough); then fewer changes (the asked-for setup first);
    # then less memory.
    suggestions.sort(
        key=lambda s: (
            not s["fits"],
            round(math.log(s["step_s"]) / math.log(1.05)) if s["step_s"] > 0 else 0,
            len(s["changes"]),
            s["peak_gib"],
        )
    )
    return Estimate(
        device=str(dev),
        precision=precision_name(compute if compute != torch.float32 else None),
        parameters=n,
        tokens_per_micro_batch=tokens,
        memory=memory,
        peak_bytes=peak,
        available_bytes=available,
        step_flops=flops,
        step_seconds=seconds,
        suggestions=suggestions,
        config=dataclasses.asdict(cfg),
        notes=[note] if note else [],
    )


# ------------------------------------------------------------------------------------------------------- memory


def _memory(model, params, cfg, plan, compute, device, tokens, labels, per_token) -> dict[str, int]:
    from nbft.train.loss import chunk_rows_for

    c = _bytes(compute)
    n = sum(p.numel() for p in params)
    pure = plan.pure_bf16
    masters = compute != torch.float32 and not pure
    if plan.name == "adamw-8bit":
        big = sum(p.numel() for p in params if p.numel() >= 4096)
        optimizer = 2 * big + 8 * (n - big)  # bitsandbytes keeps small tensors in fp32
    else:
        optimizer = 2 * n * (2 if pure else 4)
    base, layer, checkpointed = per_token
    layers = _num_layers(model)
    if cfg.activation_checkpointing:
        # Only each layer's input is kept; backward recomputes one layer at a time.
        activations = tokens * (base + layers * checkpointed + layer)
    else:
        activations = tokens * (base + layers * layer)
    vocab, hidden = _head_shape(model)
    chunk = min(labels, chunk_rows_for(vocab, device))
    lm_head = chunk * vocab * (4 + c) + vocab * hidden * 4 + labels * hidden * c  # logits chunk, fp32 grad of W
    return {
        "weights": n * c,
        "master_weights": n * 4 if masters else 0,
        "gradients": n * c + (n * 4 if masters else 0),
        "optimizer": optimizer,
        "activations": int(activations),
        "lm_head": int(lm_head),
    }


def _peak(memory: dict[str, int], cfg: TrainConfig, n: int, compute: torch.dtype) -> int:
    static = memory["weights"] + memory["master_weights"] + memory["optimizer"]
    master_grads = memory["gradients"] - n * _bytes(compute)
    # During backward activations are freed as gradients appear; after it, the model's gradients are folded into
    # the masters'. With accumulation, the masters' gradients already exist during the next micro-batch.
    carried = master_grads if cfg.grad_accum > 1 else 0
    during = memory["activations"] + memory["lm_head"] + carried
    return int(static + max(during, memory["gradients"]))


def _activation_bytes_per_token(model: Any, compute: torch.dtype) -> tuple[float, float, float]:
    """(non-layer bytes, bytes per layer, bytes per checkpointed layer) that autograd saves per token, measured on
    one- and two-layer copies of the model; an analytic fallback for models that cannot be copied this way."""
    try:
        one = _saved_bytes(model, compute, layers=1, checkpoint=False)
        two = _saved_bytes(model, compute, layers=2, checkpoint=False)
        two_ckpt = _saved_bytes(model, compute, layers=2, checkpoint=True)
        one_ckpt = _saved_bytes(model, compute, layers=1, checkpoint=True)
        layer = two - one
        return one - layer, layer, max(two_ckpt - one_ckpt, 0.0)
    except Exception as exc:  # an unusual architecture: count the usual tensors of a decoder layer
        logger.info("activation memory from the formula (%s: %s)", type(exc).__name__, exc)
        hidden = int(getattr(model.config, "hidden_size", 768))
        inter = int(getattr(model.config, "intermediate_size", 4 * hidden))
        c = _bytes(compute)
        return 4.0 * hidden * c, (12 * hidden + 4 * inter) * c + 8 * hidden, float(hidden * c)


def _saved_bytes(model: Any, compute: torch.dtype, *, layers: int, checkpoint: bool, tokens: int = 64) -> float:
    from nbft.train.batching import collate_varlen
    from nbft.train.loss import CausalLMLoss

    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    config.vocab_size = 256  # the embedding's output per token does not depend on the vocabulary
    with torch.device("cpu"):
        probe = type(model)(config).to(compute).train()
    if checkpoint:
        enable = getattr(probe, "activation_checkpointing_enable", None) or probe.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    module = CausalLMLoss(probe, fused=True)
    params = {id(p) for p in probe.parameters()}
    seen: set[int] = set()
    kept: list[torch.Tensor] = []
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(base) not in seen and id(base) not in params and base.device.type != "meta":
            seen.add(id(base))
            kept.append(base)  # keeps ids unique while counting
            total[0] += base.numel() * base.element_size()
        return t

    ids = [torch.arange(tokens // 2) % 256, (torch.arange(tokens // 2) + 7) % 256]
    batch = collate_varlen(ids, ids)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module._run(True, batch["input_ids"], batch["position_ids"], None, batch["bounds"])
    return total[0] / tokens


# ------------------------------------------------------------------------------------------------------- time


def _step_flops(model, n, cfg, tokens, labels, lengths) -> float:
    vocab, hidden = _head_shape(model)
    embed = vocab * hidden
    micro = cfg.grad_accum
    body = 6 * max(n - embed, 0) * tokens * micro
    head = 6 * vocab * hidden * labels * micro
    attention = 6 * _num_layers(model) * hidden * sum(x * x for x in lengths) * micro  # causal: half of 12
    recompute = 2 * max(n - embed, 0) * tokens * micro if cfg.activation_checkpointing else 0
    return float(body + head + attention + recompute)


def _matmul_rate(model: Any, compute: torch.dtype, device: torch.device) -> float | None:
    """FLOP/s of a decoder-sized matmul in the compute dtype on ``device`` (about a quarter of a second)."""
    hidden = int(getattr(model.config, "hidden_size", 768))
    inter = int(getattr(model.config, "intermediate_size", 4 * hidden))
    try:
        a = torch.randn(1024, hidden, device=device, dtype=compute)
        b = torch.randn(hidden, inter, device=device, dtype=compute)
        (a @ b).sum().item()  # warm-up
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.25:
            (a @ b).sum().item()
            count += 1
        return 2 * 1024 * hidden * inter * count / (time.perf_counter() - t0)
    except Exception as exc:
        logger.info("could not time a matmul on %s (%s)", device, exc)
        return None


# ------------------------------------------------------------------------------------------------------- helpers


def _installed(name: str) -> bool:
    """Whether a library is installed, without importing it (torchao and bitsandbytes are heavy to import)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _alternatives(cfg: TrainConfig, compute: torch.dtype) -> list[dict[str, Any]]:
    options: list[dict[str, Any]] = [{}]
    if not cfg.activation_checkpointing:
        options.append({"activation_checkpointing": True})
    pure_ok = compute == torch.bfloat16 and cfg.master_weights and _installed("torchao")
    if pure_ok:
        options.append({"master_weights": False})
    if cfg.optimizer != "adamw-8bit" and _installed("bitsandbytes"):
        options.append({"optimizer": "adamw-8bit"})
    if pure_ok and not cfg.activation_checkpointing:
        options.append({"master_weights": False, "activation_checkpointing": True})
    if cfg.batch_size > 1 and cfg.tokens_per_step is None:
        options.append({"batch_size": max(1, cfg.batch_size // 2), "grad_accum": cfg.grad_accum * 2})
    return options


class _MicroBatches:
    """(real tokens, labelled tokens, example lengths) of a config's largest micro-batch; the data are tokenized
    once per ``max_length``."""

    def __init__(self, model: Any, data: Any, tokenizer: Any) -> None:
        self.model, self.data, self.tokenizer = model, data, tokenizer
        self.examples: dict[int, Any] = {}

    def __call__(self, cfg: TrainConfig) -> tuple[int, int, list[int]]:
        if self.data is not None and cfg.max_length not in self.examples:
            from nbft.train.batching import as_examples

            kind = "seq2seq" if getattr(self.model.config, "is_encoder_decoder", False) else "causal"
            self.examples[cfg.max_length] = as_examples(
                self.data, kind=kind, tokenizer=self.tokenizer, max_length=cfg.max_length
            )
        return _micro_batch_tokens(self.model, cfg, self.examples.get(cfg.max_length))


def _micro_batch_tokens(model: Any, cfg: TrainConfig, examples: Any) -> tuple[int, int, list[int]]:
    """(real tokens, labelled tokens, example lengths) of the largest micro-batch."""
    if examples is None:
        lengths = [cfg.max_length] * cfg.batch_size
        return sum(lengths), sum(lengths) // 4, lengths
    from nbft.train.batching import StepPlan

    kind = "seq2seq" if getattr(model.config, "is_encoder_decoder", False) else "causal"
    plan = StepPlan(
        examples.lengths,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        tokens_per_step=cfg.tokens_per_step,
        max_steps=min(cfg.max_steps or 50, 50),
    )
    counts = examples.label_counts(kind)
    best: tuple[int, int, list[int]] = (0, 0, [])
    for step in range(plan.total_steps):
        for micro in plan.step(step)[1]:
            tokens = sum(examples.lengths[i] for i in micro)
            if tokens > best[0]:
                best = (tokens, sum(counts[i] for i in micro), [examples.lengths[i] for i in micro])
    return best


def _available_bytes(device: torch.device, model: Any) -> int | None:
    held = sum(p.numel() * p.element_size() for p in _unique_parameters(model) if p.device.type == device.type)
    if device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(device)
        return int(total)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
            limit = _cgroup_limit()
            available = info.get("MemAvailable", 0) + held
            return min(available, limit) if limit else available
        except OSError:
            return None
    return None


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                value = f.read().strip()
            if value.isdigit() and int(value) < 2**60:
                return int(value)
        except OSError:
            continue
    return None


def _device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device {device!r} is not a torch device ({exc}): use e.g. device='cpu' or device='cuda'"
        ) from None
    if dev.type == "cuda":  # torch itself would fail deep inside with "Torch not compiled with CUDA enabled"
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}" + (" is a CPU-only build" if torch.version.cuda is None else "")
            raise ValueError(
                f"device={str(device)!r}, but this machine has no CUDA GPU that torch can use ({build}): estimate "
                "for device='cpu', or run on a machine with an NVIDIA GPU and a CUDA build of torch"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(device)!r}, but this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    return dev


def _default_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _unique_parameters(model: Any) -> list[torch.nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())


def _num_layers(model: Any) -> int:
    return int(getattr(model.config, "num_hidden_layers", 1))


def _head_shape(model: Any) -> tuple[int, int]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0]), int(head.weight.shape[1])
    return int(getattr(model.config, "vocab_size", 0)), int(getattr(model.config, "hidden_size", 0))


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
