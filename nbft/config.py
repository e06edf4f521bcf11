"""Configuration dataclasses. Every field is documented and validated on construction; no torch import here.

Functions take explicit arguments; these records group them for scripts, the CLI and the widgets.

Example:
    >>> DataConfig(split=(0.8, 0.1, 0.1), max_length=256).max_length
    256
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Literal

# ----------------------------------------------------------------------------------------------------
# Field checks shared by the configs: a value of the wrong type is converted when that is unambiguous (a number
# given as text, 8.0 for an integer field), otherwise refused with a message that names the field and the fix.
# A bool is never taken for a number (``batch_size=True`` is a mistake, not 1).


def _fail(cls: str, field: str, value: Any, problem: str, fix: str) -> ValueError:
    return ValueError(f"{cls}.{field} {problem} (got {value!r}); {fix}")


def _as_number(cls: str, field: str, value: Any, *, integer: bool, fix: str) -> float | int:
    what = "an integer" if integer else "a number"
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise _fail(cls, field, value, f"must be {what}, not a bool", fix)
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            value = int(text) if integer and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise _fail(cls, field, value, f"must be {what}", fix) from None
    if not isinstance(value, numbers.Real):
        raise _fail(cls, field, value, f"must be {what}, not {type(value).__name__}", fix)
    if not math.isfinite(float(value)):
        raise _fail(cls, field, value, "must be a finite number", fix)
    if integer:
        if isinstance(value, numbers.Integral):
            return int(value)
        if float(value).is_integer():
            return int(value)
        raise _fail(cls, field, value, f"must be {what}", fix)
    return float(value)


def check_int(where: str, value: Any, minimum: int, fix: str, *, optional: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (a number given as text is converted), or a ``ValueError`` that names
    ``where`` (e.g. ``"build_instruction_dataset(n=...)"``) and the fix. Used for function arguments.

    Example:
        >>> check_int("mix(total=...)", "40", 1, "e.g. total=1000")
        40
    """
    if value is None and optional:
        return None
    words = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    words += " or None" if optional else ""
    if value is None:
        raise ValueError(f"{where} must be {words} (got None); {fix}")
    try:
        number = _as_number("", "", value, integer=True, fix=fix)
    except ValueError:
        raise ValueError(f"{where} must be {words} (got {value!r}); {fix}") from None
    if number < minimum:
        raise ValueError(f"{where} must be {words} (got {value!r}); {fix}")
    return int(number)


def check_number(where: str, value: Any, fix: str, *, minimum: float | None = None) -> float:
    """``value`` as a finite float (>= ``minimum`` when given), or a ``ValueError`` naming ``where`` and the fix."""
    try:
        number = float(_as_number("", "", value, integer=False, fix=fix))
    except ValueError:
        raise ValueError(f"{where} must be a finite number (got {value!r}); {fix}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{where} must be >= {minimum} (got {value!r}); {fix}")
    return number


def _int(obj: Any, field: str, minimum: int, fix: str, *, optional: bool = False) -> None:
    cls, value = type(obj).__name__, getattr(obj, field)
    if value is None and optional:
        return
    words = "a positive integer or None" if optional and minimum == 1 else f"an integer >= {minimum}"
    if value is None:
        raise _fail(cls, field, value, f"must be {words}", fix)
    number = _as_number(cls, field, value, integer=True, fix=fix)
    if number < minimum:
        raise _fail(cls, field, value, f"must be {words}", fix)
    setattr(obj, field, number)


def _float(
    obj: Any, field: str, fix: str, *, above: float | None = None, at_least: float | None = None,
    below: float | None = None, optional: bool = False, words: str = "",
) -> None:  # fmt: skip
    cls, value = type(obj).__name__, getattr(obj, field)
    if value is None and optional:
        return
    if value is None:
        raise _fail(cls, field, value, f"must be {words or 'a number'}", fix)
    number = _as_number(cls, field, value, integer=False, fix=fix)
    low_bad = (above is not None and not number > above) or (at_least is not None and not number >= at_least)
    if low_bad or (below is not None and not number < below):
        raise _fail(cls, field, value, f"must be {words}", fix)
    setattr(obj, field, number)


def _bool(obj: Any, field: str, *, optional: bool = False) -> None:
    cls, value = type(obj).__name__, getattr(obj, field)
    if value is None and optional:
        return
    if type(value).__name__ == "bool_":  # numpy's bool
        value = bool(value)
    if not isinstance(value, bool):
        options = "True, False or None" if optional else "True or False"
        raise _fail(cls, field, value, f"must be {options}", f"e.g. {field}={'None' if optional else 'True'}")
    setattr(obj, field, value)


def _choice(obj: Any, field: str, options: tuple[str, ...], fix: str) -> None:
    cls, value = type(obj).__name__, getattr(obj, field)
    if isinstance(value, str) and value.strip().lower() in options:
        setattr(obj, field, value.strip().lower())
        return
    raise _fail(cls, field, value, f"must be one of {options}", fix)


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
        if isinstance(self.split, str | bytes) or not hasattr(self.split, "__iter__"):
            raise _fail("DataConfig", "split", self.split, "must be three fractions", "for example (0.8, 0.1, 0.1)")
        fractions = []
        for x in self.split:
            fractions.append(_as_number("DataConfig", "split", x, integer=False, fix="for example (0.8, 0.1, 0.1)"))
        self.split = tuple(fractions)  # type: ignore[assignment]
        if len(self.split) != 3 or any(x < 0 for x in self.split) or not math.isclose(sum(self.split), 1.0):
            raise ValueError(
                f"DataConfig.split must be three non-negative fractions (train, validation, test) summing to 1, "
                f"got {self.split}; for example (0.8, 0.1, 0.1)"
            )
        if self.split[0] == 0:
            raise ValueError("DataConfig.split gives the train split 0 examples; give it a fraction above 0")
        _int(self, "seed", 0, "e.g. seed=0")
        _bool(self, "stratify", optional=True)
        _int(self, "max_length", 2, "e.g. max_length=512 (prompt + completion + EOS, in tokens)")
        _choice(self, "overflow", ("truncate", "drop"), "use 'truncate' (cut the prompt's start) or 'drop'")
        _bool(self, "chat_template")


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
    """Write a resumable checkpoint every N optimizer steps (a stop, and the end of a run, always write one)."""
    save_every_minutes: float | None = 10.0
    """Also write one when this many minutes of training passed since the last: a crash (a killed kernel, a lost
    Colab session) loses at most that much work. ``None`` turns the time-based checkpoints off."""
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
    ``"auto"``: Liger on CUDA when installed, else compile on CUDA for models of 50M parameters or more, else
    none (on CPU compiling measured no faster than eager). A path
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
        _float(self, "learning_rate", "full fine-tunes of small models typically use 1e-5 to 1e-4", above=0,
               words="> 0")  # fmt: skip
        _float(self, "epochs", "use e.g. epochs=1, or set max_steps", above=0, words="> 0")
        _int(self, "max_steps", 1, "e.g. max_steps=100 (None: use epochs)", optional=True)
        for name in ("batch_size", "grad_accum", "keep_last"):
            _int(self, name, 1, f"e.g. {name}=1")
        _int(self, "tokens_per_step", 1, "e.g. tokens_per_step=16384", optional=True)
        _int(self, "warmup_steps", 0, "e.g. warmup_steps=10")
        _float(self, "warmup_ratio", "e.g. warmup_ratio=0.05", at_least=0.0, below=1.0, words="in [0, 1)")
        if self.warmup_steps and self.warmup_ratio:
            raise _fail("TrainConfig", "warmup_ratio", self.warmup_ratio, "cannot be combined with warmup_steps",
                        "set only one of them")  # fmt: skip
        _choice(self, "schedule", _SCHEDULES, "use 'linear' (the usual choice) or 'cosine'")
        _float(self, "weight_decay", "use 0.0 (no decay) or e.g. 0.01", at_least=0.0, words=">= 0")
        _float(self, "max_grad_norm", "use 1.0, or None to turn clipping off", above=0, optional=True,
               words="> 0 or None")  # fmt: skip
        for name in ("eval_every", "save_every"):
            _int(self, name, 1, f"e.g. {name}=50 (None: only at the end)", optional=True)
        _float(self, "save_every_minutes", "e.g. save_every_minutes=10 (None: no time-based checkpoints)", above=0,
               optional=True, words="> 0 or None")  # fmt: skip
        _choice(self, "precision", _PRECISIONS, "'auto' picks bf16 where the hardware has it")
        _int(self, "seed", 0, "e.g. seed=0")
        _int(self, "max_length", 2, "e.g. max_length=1024")
        _bool(self, "packing")
        _choice(self, "attention", _ATTENTIONS, "'auto' picks the fastest correct layout")
        if not self.packing and self.attention in ("varlen", "flex", "mask"):
            raise _fail("TrainConfig", "attention", self.attention, "is a packed layout but packing=False",
                        "use attention='padded' or packing=True")  # fmt: skip
        _choice(self, "kernels", _KERNELS, "'auto' uses what the device supports")
        _choice(self, "optimizer", _OPTIMIZERS, "use 'adamw', or 'adamw-8bit' to save memory")
        _bool(self, "master_weights")
        _bool(self, "activation_checkpointing")
        if not self.master_weights and self.precision in ("fp16", "fp32"):
            raise _fail("TrainConfig", "master_weights", self.master_weights,
                        f"can only be False with bf16 compute (precision={self.precision!r})",
                        "use precision='bf16' (or 'auto'), or keep master_weights=True")  # fmt: skip


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
    probes: bool = False
    """Add each task's out-of-domain probes (``Task.probes``, e.g. sentiment's movie reviews) as rows of their own,
    ``"<task> · <probe>"``: the same template and decoding, left out of G, BWT′ and AF."""

    def __post_init__(self) -> None:
        if isinstance(self.icl_shots, numbers.Integral | str) and not isinstance(self.icl_shots, bool):
            self.icl_shots = (self.icl_shots,)  # type: ignore[assignment]  # icl_shots=3 means (3,)
        if not isinstance(self.icl_shots, list | tuple):
            raise _fail("EvalConfig", "icl_shots", self.icl_shots, "must be a tuple of shot counts", "e.g. (0, 3)")
        self.icl_shots = tuple(
            _as_number("EvalConfig", "icl_shots", k, integer=True, fix="e.g. (0, 3)") for k in self.icl_shots
        )  # type: ignore[assignment]
        _int(self, "n", 1, "e.g. n=200 (None: the whole test split)", optional=True)
        if self.n_per_task is not None and not isinstance(self.n_per_task, dict):
            raise _fail("EvalConfig", "n_per_task", self.n_per_task, "must be a dict of task -> n", "e.g. {'qa': 50}")
        for task, k in (self.n_per_task or {}).items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"EvalConfig.n_per_task[{task!r}] must be a positive integer, got {k!r}")
        _int(self, "batch_size", 1, "e.g. batch_size=16")
        if any(k < 0 for k in self.icl_shots):
            raise ValueError(f"EvalConfig.icl_shots must be non-negative, got {self.icl_shots!r}; e.g. (0, 3)")
        _int(self, "icl_n", 1, "e.g. icl_n=50 (None: all test examples)", optional=True)
        if self.icl_tasks is not None:
            if isinstance(self.icl_tasks, str):
                self.icl_tasks = (self.icl_tasks,)
            if not all(isinstance(t, str) for t in self.icl_tasks):
                raise _fail("EvalConfig", "icl_tasks", self.icl_tasks, "must be task names", "e.g. ('qa',)")
            self.icl_tasks = tuple(self.icl_tasks)
        _choice(self, "scoring", _SCORINGS, "'both' scores classification by generation and by log-likelihood")
        _bool(self, "chat_template")
        _int(self, "n_boot", 100, "an integer >= 100 gives a usable 95% CI, e.g. n_boot=1000")
        _int(self, "seed", 0, "e.g. seed=0")
        _int(self, "max_new_tokens", 1, "e.g. max_new_tokens=64 (None: each task's own)", optional=True)
        _bool(self, "progress")
        _bool(self, "probes")
