"""Configuration dataclasses. Every field is documented and validated on construction; no torch import here.

Functions take explicit arguments; these records group them for scripts, the CLI and the widgets.

Example:
    >>> DataConfig(split=(0.8, 0.1, 0.1), max_length=256).max_length
    256
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal


@dataclasses.dataclass
class DataConfig:
    """How labelled examples become a tokenized instruction dataset."""

    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Fractions of train, validation and test; they must sum to 1."""
    seed: int = 0
    """Seeds the choice of phrasing per example and the split, so the same seed gives the same dataset."""
    stratify: bool | None = None
    """Stratify the split by label. ``None``: stratify when the templates are classification templates."""
    max_length: int = 512
    """Longest tokenized example (prompt + completion + EOS) in tokens."""
    overflow: Literal["truncate", "drop"] = "truncate"
    """What to do with longer examples: cut the prompt's start (``truncate``) or leave them out (``drop``)."""
    chat_template: bool = False
    """Wrap the prompt as a user turn and the completion as the assistant turn of the tokenizer's chat template."""

    def __post_init__(self) -> None:
        self.split = tuple(float(x) for x in self.split)  # type: ignore[assignment]
        if len(self.split) != 3 or any(x < 0 for x in self.split) or not math.isclose(sum(self.split), 1.0):
            raise ValueError(
                f"DataConfig.split must be three non-negative fractions (train, validation, test) summing to 1, "
                f"got {self.split}; for example (0.8, 0.1, 0.1)"
            )
        if self.split[0] == 0:
            raise ValueError("DataConfig.split gives the train split 0 examples; give it a fraction above 0")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"DataConfig.max_length must be an int >= 2, got {self.max_length!r}")
        if self.overflow not in ("truncate", "drop"):
            raise ValueError(f"DataConfig.overflow must be 'truncate' or 'drop', got {self.overflow!r}")


# ----------------------------------------------------------------------------------------------------
# Training (owned by the engine: nbft/train/). Plain data, no torch import.

_SCHEDULES = ("linear", "cosine", "constant")
_PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_OPTIMIZERS = ("adamw", "adamw-8bit")
_KERNELS = ("auto", "compile", "liger", "none")
_ATTENTIONS = ("auto", "varlen", "flex", "mask", "padded", "single")


@dataclasses.dataclass
class TrainConfig:
    """How a full fine-tune runs: every field is checked when the config is built.

    An optimizer step sees ``batch_size * grad_accum`` examples (times the number of processes), or, when
    ``tokens_per_step`` is set, as many examples as fit in that many real (non-pad) tokens.

    Example:
        >>> cfg = TrainConfig(learning_rate=5e-5, epochs=2, batch_size=8, eval_every=50)
        >>> cfg.precision
        'auto'
    """

    learning_rate: float = 5e-5
    """Peak AdamW learning rate, reached after warmup. Full fine-tunes of small models use 1e-5 to 1e-4."""
    epochs: float = 1.0
    """Passes over the training data (fractions allowed). Ignored when ``max_steps`` is set."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides ``epochs`` when set."""
    batch_size: int = 8
    """Examples per micro-batch (one forward/backward pass)."""
    tokens_per_step: int | None = None
    """Instead of counting examples: real tokens per optimizer step (``batch_size`` is then ignored)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (gradient accumulation): more means less memory, same maths."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to ``learning_rate``."""
    warmup_ratio: float = 0.0
    """Warmup as a fraction of all steps; use this or ``warmup_steps``, not both."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warmup: ``"linear"`` or ``"cosine"`` (to 0), or ``"constant"``."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay, applied to matrices only (not to norms and biases)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; ``None`` turns clipping off."""
    eval_every: int | None = None
    """Validation loss every N optimizer steps (and at the end, when there is validation data)."""
    save_every: int | None = None
    """Write a resumable checkpoint every N optimizer steps (a stop always writes one)."""
    keep_last: int = 2
    """How many checkpoints to keep in the run directory; older ones are deleted."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Compute dtype. ``"auto"``: bf16 on GPUs and CPUs with native bf16 (AVX512-BF16, AMX); fp16 with dynamic loss
    scaling on GPUs without native bf16 (T4, V100: overflowing steps are skipped and marked ``skipped`` in the
    history); else fp32. The optimizer keeps fp32 master weights unless ``master_weights=False``."""
    seed: int = 0
    """Seed for data order and initialisation: the same seed gives the same loss curve on CPU, bit for bit."""
    max_length: int = 1024
    """Longest example in tokens: used when the engine tokenizes prompt/completion data itself."""
    packing: bool = True
    """Pack examples into shared rows (attention kept separate per example): no compute goes to padding."""
    attention: Literal["auto", "varlen", "flex", "mask", "padded", "single"] = "auto"
    """How packed examples are kept apart (:mod:`nbft.train.layout`). ``"auto"``: the fastest layout that passes the
    packed = unpacked check (on GPU chosen by timing the candidates once at setup). Naming one starts the fallback
    chain there."""
    kernels: Literal["auto", "compile", "liger", "none"] = "auto"
    """Fused kernels (:mod:`nbft.train.kernels`): ``"liger"`` (liger-kernel's Triton RMSNorm, rotary, SwiGLU and
    fused linear cross-entropy; CUDA only), ``"compile"`` (``torch.compile`` of each decoder layer), ``"none"``.
    ``"auto"``: Liger on CUDA when installed, else compile for models of 50M parameters or more, else none. A path
    that cannot run falls back to the plain one with a logged message."""
    master_weights: bool = True
    """With bf16 compute, keep fp32 master weights for the optimizer. ``False`` (pure bf16, about 40% less memory):
    the weights stay bf16 and AdamW rounds its updates stochastically (torchao), so small updates are not lost."""
    optimizer: Literal["adamw", "adamw-8bit"] = "adamw"
    """``"adamw-8bit"``: bitsandbytes' AdamW with 8-bit states (6 bytes less per parameter); falls back to AdamW
    with a logged message where bitsandbytes is missing or cannot run."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations during backward instead of keeping them: much less memory for
    long sequences, about a third more compute."""

    def __post_init__(self) -> None:
        def fail(field: str, problem: str, fix: str) -> None:
            raise ValueError(f"TrainConfig.{field} {problem} (got {getattr(self, field)!r}); {fix}")

        if not self.learning_rate > 0:
            fail("learning_rate", "must be > 0", "full fine-tunes of small models typically use 1e-5 to 1e-4")
        if self.max_steps is None and not self.epochs > 0:
            fail("epochs", "must be > 0", "use e.g. epochs=1, or set max_steps")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            fail("max_steps", "must be a positive integer or None", "e.g. max_steps=100 (None: use epochs)")
        for name in ("batch_size", "grad_accum", "keep_last"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, "must be an integer >= 1", f"e.g. {name}=1")
        tps = self.tokens_per_step
        if tps is not None and (not isinstance(tps, int) or tps < 1):
            fail("tokens_per_step", "must be a positive integer or None", "e.g. tokens_per_step=16384")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            fail("warmup_steps", "must be an integer >= 0", "e.g. warmup_steps=10")
        if not 0.0 <= self.warmup_ratio < 1.0:
            fail("warmup_ratio", "must be in [0, 1)", "e.g. warmup_ratio=0.05")
        if self.warmup_steps and self.warmup_ratio:
            fail("warmup_ratio", "cannot be combined with warmup_steps", "set only one of them")
        if self.schedule not in _SCHEDULES:
            fail("schedule", f"must be one of {_SCHEDULES}", "use 'linear' (the usual choice) or 'cosine'")
        if self.weight_decay < 0:
            fail("weight_decay", "must be >= 0", "use 0.0 (no decay) or e.g. 0.01")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            fail("max_grad_norm", "must be > 0 or None", "use 1.0, or None to turn clipping off")
        for name in ("eval_every", "save_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                fail(name, "must be a positive integer or None", f"e.g. {name}=50 (None: only at the end)")
        if self.precision not in _PRECISIONS:
            fail("precision", f"must be one of {_PRECISIONS}", "'auto' picks bf16 where the hardware has it")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            fail("max_length", "must be an integer >= 2", "e.g. max_length=1024")
        if self.attention not in _ATTENTIONS:
            fail("attention", f"must be one of {_ATTENTIONS}", "'auto' picks the fastest correct layout")
        if not self.packing and self.attention in ("varlen", "flex", "mask"):
            fail("attention", "is a packed layout but packing=False", "use attention='padded' or packing=True")
        if self.kernels not in _KERNELS:
            fail("kernels", f"must be one of {_KERNELS}", "'auto' uses what the device supports")
        if self.optimizer not in _OPTIMIZERS:
            fail("optimizer", f"must be one of {_OPTIMIZERS}", "use 'adamw', or 'adamw-8bit' to save memory")
        if not self.master_weights and self.precision in ("fp16", "fp32"):
            fail(
                "master_weights",
                f"can only be False with bf16 compute (precision={self.precision!r})",
                "use precision='bf16' (or 'auto'), or keep master_weights=True",
            )


# --------------------------------------------------------------------------------------------------------------
# Evaluation (owned by eval: nbft/evaluate/). Plain data, no torch import.

_SCORINGS = ("generate", "loglik", "both")


@dataclasses.dataclass
class EvalConfig:
    """How :func:`nbft.compare` runs every model: the same settings for all of them, so the comparison is fair.

    Example:
        >>> EvalConfig(n=100, icl_shots=(0, 3)).icl_shots
        (0, 3)
    """

    n: int | None = 200
    """Test examples per task (a seeded sample of the test split); ``None`` or more than the split uses all of it."""
    n_per_task: dict[str, int] | None = None
    """Per-task ``n`` for the named tasks, e.g. ``{"qa": 50}`` (a tight CI on the target, fewer elsewhere)."""
    batch_size: int = 16
    """Prompts per generation batch; the same for every model in a table."""
    icl_shots: tuple[int, ...] = (0,)
    """In-context baselines for the first (base) model: k-shot prompts with k examples from the *train* split."""
    icl_n: int | None = None
    """Evaluate the k-shot columns on only the first ``icl_n`` test examples (they cost k+1 times the tokens);
    their Δ is paired with the base on exactly those examples. ``None``: all of them."""
    icl_tasks: tuple[str, ...] | None = None
    """Tasks that get the k-shot columns; ``None``: the target task only (all tasks when there is no target)."""
    scoring: Literal["generate", "loglik", "both"] = "both"
    """Classification tasks: score the generated text, the log-likelihood of each choice, or both."""
    chat_template: bool = False
    """Wrap each prompt as a user turn of the tokenizer's chat template (match how the model was trained)."""
    n_boot: int = 1000
    """Bootstrap resamples for every 95% confidence interval."""
    seed: int = 0
    """Seeds the test sample, the k-shot draws and the bootstrap."""
    max_new_tokens: int | None = None
    """Override every task's generation length (``None``: each task's own setting)."""
    progress: bool = True
    """Show tqdm progress bars."""

    def __post_init__(self) -> None:
        self.icl_shots = tuple(int(k) for k in self.icl_shots)
        if self.n is not None and (not isinstance(self.n, int) or self.n < 1):
            raise ValueError(f"EvalConfig.n must be a positive integer or None (all), got {self.n!r}")
        for task, k in (self.n_per_task or {}).items():
            if not isinstance(k, int) or k < 1:
                raise ValueError(f"EvalConfig.n_per_task[{task!r}] must be a positive integer, got {k!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"EvalConfig.batch_size must be an integer >= 1, got {self.batch_size!r}")
        if any(k < 0 for k in self.icl_shots):
            raise ValueError(f"EvalConfig.icl_shots must be non-negative, got {self.icl_shots!r}; e.g. (0, 3)")
        if self.icl_n is not None and (not isinstance(self.icl_n, int) or self.icl_n < 1):
            raise ValueError(f"EvalConfig.icl_n must be a positive integer or None (all), got {self.icl_n!r}")
        if self.scoring not in _SCORINGS:
            raise ValueError(f"EvalConfig.scoring must be one of {_SCORINGS}, got {self.scoring!r}")
        if not isinstance(self.n_boot, int) or self.n_boot < 100:
            raise ValueError(f"EvalConfig.n_boot must be an integer >= 100 for a usable 95% CI, got {self.n_boot!r}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"EvalConfig.max_new_tokens must be >= 1 or None, got {self.max_new_tokens!r}")
