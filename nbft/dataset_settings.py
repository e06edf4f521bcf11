"""One dataset, one set of settings: how a dataset is tokenized travels with it, from the builder to the verdict.

A dataset built by :class:`~nbft.widgets.DatasetBuilder` (or marked with :func:`with_settings`) carries its
:class:`TokenizationSettings`: the task, the template ids, chat format on or off, ``max_length`` and the overflow
policy. :func:`nbft.finetune` (and so ``TrainPanel``) tokenizes with them unless given its own, records them in the
run's ``run.json`` (key ``"data"``), and :func:`nbft.compare` and the ``ForgettingMonitor`` read them back to use the
prompt format the model was trained with, or to warn when they are told to use another.

Where the settings live: one line ``nbft-settings: {json}`` in each split's ``datasets.DatasetInfo.description``.
``datasets`` keeps the info through ``map``/``select``/``shuffle``/``filter``/``train_test_split``, concatenation
with unmarked data, ``save_to_disk``/``load_from_disk`` (so ``save_dataset(..., "disk")``). JSONL and Parquet files
keep no info: :func:`nbft.data.save_dataset` writes the settings beside the split files as ``nbft-settings.json``
(:func:`read_saved_settings`).

Example:
    >>> import datasets
    >>> ds = with_settings(datasets.Dataset.from_list([{"prompt": "Q\\n", "completion": "A"}]),
    ...                    TokenizationSettings(max_length=68, chat_template=True))
    >>> settings_of(ds).max_length, settings_of(ds).prompt_format
    (68, 'chat template')
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "SETTINGS_FILE",
    "TokenCut",
    "TokenizationSettings",
    "format_mismatch",
    "read_saved_settings",
    "settings_of",
    "trained_settings",
    "training_cut",
    "with_settings",
]

logger = logging.getLogger("nbft.data")

_MARK = "nbft-settings: "
SETTINGS_FILE = "nbft-settings.json"
"""The file :func:`nbft.data.save_dataset` writes beside JSONL/Parquet split files (they cannot hold the info)."""


@dataclasses.dataclass(frozen=True)
class TokenizationSettings:
    """How a dataset's prompt → completion pairs become training tokens (what the builder's label mask shows).

    Example:
        >>> TokenizationSettings(max_length=68, chat_template=True).describe()
        'chat template, max_length=68, overflow=truncate'
    """

    task: str | None = None
    """The task the dataset was built for (the target of a mixture)."""
    templates: tuple[str, ...] = ()
    """The instruction template ids the examples were rendered with."""
    chat_template: bool = False
    """Prompts wrapped as a user turn of the tokenizer's chat template (``True``) or plain text (``False``)."""
    max_length: int = 512
    """Longest tokenized example (prompt + completion + EOS)."""
    overflow: str = "truncate"
    """``"truncate"`` (cut the prompt's start) or ``"drop"`` (leave the example out)."""

    def __post_init__(self) -> None:
        if self.overflow not in ("truncate", "drop"):
            raise ValueError(f"overflow must be 'truncate' or 'drop', not {self.overflow!r}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"max_length must be a whole number of tokens >= 2, not {self.max_length!r}")
        object.__setattr__(self, "templates", tuple(str(t) for t in self.templates))
        object.__setattr__(self, "chat_template", bool(self.chat_template))

    @property
    def prompt_format(self) -> str:
        """``"chat template"`` or ``"plain text"``: the prompt format a model trained on this data expects."""
        return prompt_format(self.chat_template)

    def describe(self) -> str:
        return f"{self.prompt_format}, max_length={self.max_length}, overflow={self.overflow}"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["templates"] = list(self.templates)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenizationSettings:
        """The settings from :meth:`to_dict`'s output; unknown keys (a later nbft's) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})


def prompt_format(chat_template: bool | None) -> str:
    """The words for a prompt format, as warnings name it."""
    return "unknown" if chat_template is None else ("chat template" if chat_template else "plain text")


# ------------------------------------------------------------------------------------------------ on a dataset
def with_settings(data: Any, settings: TokenizationSettings) -> Any:
    """A copy of ``data`` (``Dataset`` or ``DatasetDict``; the rows are shared, not copied) that carries ``settings``.

    Example::

        data = with_settings(build_instruction_dataset(task="sentiment"), TokenizationSettings(max_length=256))
        nbft.finetune(model, tok, data["train"])      # tokenizes with max_length=256
    """
    import datasets

    if isinstance(data, datasets.DatasetDict):
        return datasets.DatasetDict({name: with_settings(ds, settings) for name, ds in data.items()})
    if not isinstance(data, datasets.Dataset):
        raise TypeError(f"with_settings() marks a datasets.Dataset or DatasetDict, not a {type(data).__name__}")
    fmt = data.format
    # with_format returns a new Dataset with its own copy of the info: the caller's dataset keeps its own
    out = data.with_format(fmt["type"], columns=fmt["columns"], output_all_columns=fmt["output_all_columns"],
                           **fmt["format_kwargs"])  # fmt: skip
    others = [ln for ln in (out.info.description or "").splitlines() if ln and not ln.startswith(_MARK)]
    out.info.description = "\n".join([*others, _MARK + json.dumps(settings.to_dict(), sort_keys=True)])
    return out


def mark_tokenized(tokenized: Any, source: Any, max_length: int, chat_template: bool, overflow: str) -> Any:
    """``tokenize_for_training``'s output, marked with the settings it was cut with (task and templates kept from
    ``source``'s settings), so that a run trained on it records them."""
    carried = settings_of(source)
    settings = TokenizationSettings(
        task=carried.task if carried else None,
        templates=carried.templates if carried else (),
        chat_template=chat_template,
        max_length=max_length,
        overflow=overflow,
    )
    return with_settings(tokenized, settings)


def settings_of(data: Any) -> TokenizationSettings | None:
    """The settings ``data`` carries (``None``: none, or splits/parts that disagree; a warning says which).

    A ``DatasetDict`` answers for its train split (else its first).
    """
    import datasets

    if isinstance(data, datasets.DatasetDict):
        if not data:
            return None
        data = data["train"] if "train" in data else next(iter(data.values()))
    info = getattr(data, "info", None)
    text = getattr(info, "description", None) if info is not None else None
    if not isinstance(text, str) or _MARK not in text:
        return None
    found = {ln[len(_MARK) :] for ln in text.splitlines() if ln.startswith(_MARK)}
    parsed = []
    for raw in sorted(found):
        try:
            parsed.append(TokenizationSettings.from_dict(json.loads(raw)))
        except (ValueError, TypeError) as exc:
            logger.warning("the dataset's nbft settings could not be read (%s); they are ignored", exc)
            return None
    if len(set(parsed)) > 1:  # concatenated datasets built with different settings
        logger.warning(
            "the dataset joins parts built with different settings (%s): none is used; mark it with "
            "nbft.dataset_settings.with_settings(data, TokenizationSettings(...))",
            "; ".join(s.describe() for s in parsed),
        )
        return None
    return parsed[0] if parsed else None


def write_saved_settings(data: Any, folder: Path) -> None:
    """Beside JSONL/Parquet split files (which keep no dataset info): ``nbft-settings.json``, when ``data`` has any."""
    settings = settings_of(data)
    if settings is not None:
        (folder / SETTINGS_FILE).write_text(json.dumps(settings.to_dict(), indent=2))


def read_saved_settings(path: str | Path) -> TokenizationSettings | None:
    """The settings of a dataset written by :func:`nbft.data.save_dataset` (any format), or ``None``.

    Example::

        save_dataset(builder.dataset, "data/sentiment", "jsonl")
        read_saved_settings("data/sentiment").max_length
    """
    path = Path(path)
    sidecar = path / SETTINGS_FILE
    if sidecar.is_file():
        return TokenizationSettings.from_dict(json.loads(sidecar.read_text()))
    if path.is_dir():
        import datasets

        try:
            return settings_of(datasets.load_from_disk(str(path)))
        except (FileNotFoundError, ValueError):
            return None
    return None


# ------------------------------------------------------------------------------------------------ the training cut
@dataclasses.dataclass
class TokenCut:
    """One example's tokens as training keeps them (:func:`nbft.data.tokenize_for_training`'s own cut).

    ``prompt`` and ``completion`` are kept (the completion ends with its EOS); ``cut_prompt`` was cut from the
    prompt's start, ``cut_completion`` from the completion's end (before its EOS). ``dropped``: the example is left
    out of training (``overflow="drop"``); then every token is in the ``cut_`` lists.
    """

    prompt: list[int]
    completion: list[int]
    cut_prompt: list[int]
    cut_completion: list[int]
    dropped: bool = False

    @property
    def answer_tokens(self) -> int:
        """Learned tokens of the answer itself (the completion's, without its EOS)."""
        return max(0, len(self.completion) - 1)


def training_cut(
    tokenizer: Any,
    prompt: str,
    completion: str,
    *,
    max_length: int,
    chat_template: bool = False,
    overflow: str = "truncate",
) -> TokenCut:
    """The tokens training keeps of one (causal) example, and those it cuts: the same encoding and the same cut as
    :func:`nbft.data.tokenize_for_training`, so a view of it is what the model learns.

    Example:
        >>> from nbft.models import tiny_random
        >>> _, tok = tiny_random()
        >>> cut = training_cut(tok, "Say hi please:\\n", "hi " * 40, max_length=16)
        >>> len(cut.prompt) + len(cut.completion)
        16
    """
    from nbft.prompting import _truncate_pair, encode_pair

    p, c = encode_pair(tokenizer, prompt, completion, chat_template)
    if len(p) + len(c) <= max_length:
        return TokenCut(p, c, [], [])
    if overflow == "drop":
        return TokenCut([], [], p, c, dropped=True)
    kept_p, kept_c = _truncate_pair(p, c, max_length)
    cut_prompt = p[: len(p) - len(kept_p)]
    cut_completion = c[len(kept_c) - 1 : -1] if len(kept_c) < len(c) else []
    return TokenCut(kept_p, kept_c, cut_prompt, cut_completion)


# ------------------------------------------------------------------------------------------------ runs
def trained_settings(spec: Any) -> dict[str, Any] | None:
    """The data settings a model was trained with: ``run.json``'s ``"data"`` of a ``Run``, a run directory, its
    ``model/`` folder or a model loaded from it (``None`` when unknown, e.g. a base model)."""
    direct = getattr(spec, "data_settings", None)
    if isinstance(direct, Mapping):
        return dict(direct)
    if isinstance(spec, tuple) and len(spec) == 2:
        spec = spec[0]
    folder: Path | None = None
    if isinstance(spec, str | Path) or hasattr(spec, "__fspath__"):
        folder = Path(spec)
    elif getattr(spec, "run_dir", None) is not None:
        folder = Path(spec.run_dir)
    else:
        loaded = getattr(spec, "name_or_path", None) or getattr(getattr(spec, "config", None), "_name_or_path", None)
        folder = Path(str(loaded)) if loaded else None
    if folder is None:
        return None
    for candidate in (folder, folder.parent):
        meta_path = candidate / "run.json"
        if meta_path.is_file():
            try:
                data = json.loads(meta_path.read_text()).get("data")
            except (OSError, ValueError, AttributeError):
                return None
            return dict(data) if isinstance(data, Mapping) else None
    return None


def format_mismatch(name: str, trained: bool, used: bool, fix: str) -> str:
    """The one line that says a model is evaluated with another prompt format than the one it was trained with."""
    return (
        f"{name} was trained on {prompt_format(trained)} prompts but is evaluated with {prompt_format(used)} prompts; "
        f"its scores measure a format it did not learn. {fix}"
    )


def follow_trained_format(
    models: Mapping[str, Any], chat_template: bool | None, *, where: str = "compare"
) -> tuple[bool, list[str]]:
    """The chat format to evaluate ``models`` with, and one warning line per model trained with another.

    ``chat_template`` given (``True``/``False``): it is used. ``None``: the format the compared runs were trained
    with (their ``run.json``), when they agree; else plain text.
    """
    trained: dict[str, bool] = {}
    for name, spec in models.items():
        for one in spec if isinstance(spec, list) else [spec]:
            settings = trained_settings(one)
            if settings is not None and isinstance(settings.get("chat_template"), bool):
                trained.setdefault(name, settings["chat_template"])
    used = chat_template
    if used is None:
        formats = set(trained.values())
        used = formats.pop() if len(formats) == 1 else False
        if trained and len(set(trained.values())) == 1:
            logger.info(
                "%s: chat_template=%s, the prompt format %s trained with (run.json)", where, used, ", ".join(trained)
            )
    follow = " (or leave it out to follow the run)." if chat_template is not None else "."
    lines = [
        format_mismatch(f"{where}: {name!r}", fmt, used, f"Pass chat_template={fmt}{follow}")
        for name, fmt in trained.items()
        if fmt != used
    ]
    return used, lines


def resolve_training_settings(
    data: Any,
    *,
    max_length: int | None,
    chat_template: bool | None,
    overflow: str | None,
    default_max_length: int,
    where: str = "finetune",
) -> tuple[TokenizationSettings, str]:
    """The settings to tokenize ``data`` with: each explicit argument wins (one log line when it differs from the
    dataset's), the rest come from the dataset's settings, else the defaults. Returns ``(settings, source)``, source
    ``"dataset"`` or ``"arguments"``."""
    carried = settings_of(data)
    if carried is None:
        return (
            TokenizationSettings(
                max_length=max_length if max_length is not None else default_max_length,
                chat_template=bool(chat_template),
                overflow=overflow or "truncate",
            ),
            "arguments",
        )
    chosen = {}
    for field, given in (("max_length", max_length), ("chat_template", chat_template), ("overflow", overflow)):
        theirs = getattr(carried, field)
        if given is not None and given != theirs:
            logger.warning(
                "%s: %s=%r as given, although the dataset was built with %s=%r", where, field, given, field, theirs
            )
        chosen[field] = theirs if given is None else given
    settings = dataclasses.replace(carried, **chosen)
    logger.info("%s: tokenizing with the dataset's settings (%s)", where, settings.describe())
    return settings, "dataset"


def follow_trained_format_kwargs(models: Any, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``compare()``'s keyword arguments with the prompt format of the compared runs filled in when the caller gave
    none (``chat_template=`` or ``config=``), and the warning lines for runs evaluated in another format (each is
    logged once, and goes into the table's notes)."""
    out = dict(kwargs)
    if not isinstance(models, Mapping):
        return out, []  # compare() refuses it with its own message
    if "chat_template" in out:
        asked = out["chat_template"]
    elif out.get("config") is not None:
        asked = getattr(out["config"], "chat_template", None)
    else:
        asked = None
    if asked is not None and not isinstance(asked, bool):
        return out, []  # EvalConfig refuses it with its own message
    used, lines = follow_trained_format(models, asked)
    if asked is None and used:
        out["chat_template"] = True
    for line in lines:
        logger.warning("%s", line)
    return out, lines
