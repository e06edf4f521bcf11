"""Building instruction datasets: load -> validate -> dedupe + split (:func:`split_examples`) -> render templates
-> (mix) -> tokenize. A built-in task's training set comes from the task's train split (``task="sentiment"``).

Example:
    >>> rows = [{"text": f"review {i}", "label": ["negative", "positive"][i % 2]} for i in range(40)]
    >>> data = build_instruction_dataset(rows, "sentiment", seed=0)
    >>> sorted(data), data["train"].column_names
    (['test', 'train', 'validation'], ['prompt', 'completion', 'task', 'template_id', 'example_id'])
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import datasets
import pandas as pd

from nbft._registry import hub_reachable
from nbft._utils import atomic_path
from nbft.hashes import content_hash, near_duplicate_groups, normalize_text
from nbft.models import tokenizer_kind
from nbft.templates import PromptTemplate, TemplateError, phrasings, resolve_templates

logger = logging.getLogger(__name__)

COLUMNS = ["prompt", "completion", "task", "template_id", "example_id"]
FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".pq": "parquet"}

Source = str | os.PathLike[str] | pd.DataFrame | Sequence[Mapping[str, Any]] | datasets.Dataset | datasets.DatasetDict


class DataError(ValueError):
    """The data cannot become an instruction dataset as asked; the message says why and how to fix it."""


def _number_arg(where: str, value: Any, fix: str) -> float:
    from nbft.config import check_number

    try:
        return check_number(where, value, fix)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _int_arg(where: str, value: Any, minimum: int, fix: str, *, optional: bool = False) -> Any:
    from nbft.config import check_int

    try:
        return check_int(where, value, minimum, fix, optional=optional)
    except ValueError as exc:
        raise DataError(str(exc)) from None


class OfflineError(ConnectionError):
    """A Hugging Face Hub resource was asked for while the Hub is unreachable."""


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_source(source: Source, *, split: str | None = None) -> datasets.Dataset:
    """Load labelled examples from a Hub name, a local CSV/JSON/JSONL/Parquet file or saved folder, a DataFrame,
    a list of dicts, or a ``Dataset``/``DatasetDict`` (all splits are used; nbft re-splits).

    Example:
        >>> load_source([{"question": "2+2?", "answer": "4"}]).num_rows
        1
    """
    if isinstance(source, datasets.DatasetDict):
        if not source:
            raise DataError("the DatasetDict has no splits; pass a dataset with at least one example")
        ds = source[split] if split else datasets.concatenate_datasets(list(source.values()))
    elif isinstance(source, datasets.Dataset):
        ds = source
    elif isinstance(source, pd.DataFrame):
        ds = _table(
            lambda: datasets.Dataset.from_pandas(source, preserve_index=False),
            lambda: source.to_dict("records"),
            _dataframe_row(source),
            frame=True,
        )
    elif isinstance(source, (str, os.PathLike)):
        ds = _load_path_or_hub(str(source), split)
    elif isinstance(source, Sequence):
        rows = list(source)
        if rows and not all(isinstance(r, Mapping) for r in rows):
            raise DataError("a list source must hold dicts (one per example), e.g. [{'text': ..., 'label': ...}]")
        ds = _from_rows([dict(r) for r in rows], lambda i: f"row {i + 1} of the data (index {i} of your list)")
    else:
        raise DataError(
            f"cannot load examples from a {type(source).__name__}; pass a Hub dataset name, a file path "
            f"({', '.join(FILE_FORMATS)}), a pandas DataFrame, a list of dicts or a datasets.Dataset"
        )
    if ds.num_rows == 0:
        raise DataError("the source has no examples; check the file or filter that produced it")
    return ds


_WHERE: weakref.WeakKeyDictionary[datasets.Dataset, Callable[[int], str]] = weakref.WeakKeyDictionary()
"""For a dataset read from a file: where its row ``i`` is in that file (``line 12 of reviews.csv``), so that an
error names the line the user can open, not a position counted after loading."""


def _row_name(ds: datasets.Dataset, i: int) -> str:
    where = _WHERE.get(ds)
    return where(i) if where is not None else f"row {i + 1} of the data"


def _from_rows(rows: list[dict[str, Any]], where: Callable[[int], str]) -> datasets.Dataset:
    if not rows:
        return datasets.Dataset.from_dict({})
    return _table(lambda: datasets.Dataset.from_list(rows), lambda: rows, where)


def _table(
    make: Callable[[], datasets.Dataset],
    rows: Callable[[], list[Mapping[str, Any]]],
    where: Callable[[int], str],
    frame: bool = False,
) -> datasets.Dataset:
    """``make()`` the Arrow table, or say which value made it fail (column, row and value), not pyarrow's words."""
    import pyarrow as pa

    try:
        return make()
    except (pa.ArrowException, UnicodeEncodeError, OverflowError) as exc:
        problem = _bad_value(rows(), where, frame)
        if problem is None:
            raise DataError(
                f"could not make a table of the examples ({type(exc).__name__}: {exc}); give each column one type "
                "(text, numbers, or lists)"
            ) from None
        raise DataError(problem) from None


def _kind(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None  # missing: fine in any column
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "a record"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _bad_value(rows: Sequence[Mapping[str, Any]], where: Callable[[int], str], frame: bool = False) -> str | None:
    """The first value that cannot go into an Arrow column: text that is not valid Unicode (a lone surrogate), or
    a value whose type differs from the rest of its column (an int among texts). ``None`` if none is found."""
    for i, row in enumerate(rows):
        for col, value in row.items():
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return (
                        f"{where(i)}: column {col!r} holds {value[exc.start]!r} at character {exc.start + 1} "
                        f"({value[max(0, exc.start - 20) : exc.start + 20]!r}), a lone surrogate, which is not "
                        "valid Unicode text (it often comes from reading bytes with errors='surrogateescape'). Fix or "
                        "drop that value, e.g. value.encode('utf-8', 'replace').decode('utf-8')"
                    )
    first: dict[str, str] = {}
    for i, row in enumerate(rows):
        for col, value in row.items():
            kind = _kind(value)
            if kind is None:
                continue
            seen = first.setdefault(col, kind)
            if kind != seen:
                # the rarer kind is the odd one out: name that value's row
                kinds = Counter(k for r in rows if (k := _kind(r.get(col))) is not None)
                if kinds[kind] > kinds[seen]:
                    odd = next(j for j, r in enumerate(rows) if _kind(r.get(col)) == seen)
                    kind, seen, i_odd = seen, kind, odd
                else:
                    i_odd = i
                value = rows[i_odd][col]
                plural = {"a number": "numbers", "a record": "records", "a list": "lists"}.get(seen, seen)
                fix = f"so that the column holds only {plural}"
                if seen == "text":
                    to_text = f"df[{col!r}] = df[{col!r}].astype(str)" if frame else (
                        f"rows = [{{**r, {col!r}: str(r[{col!r}])}} for r in rows]")  # fmt: skip
                    fix = f"or convert the column to text, e.g. {to_text}"
                return (
                    f"{where(i_odd)}: column {col!r} holds {value!r} ({kind}), but its other rows hold {seen} "
                    f"({kinds[seen]} of {sum(kinds.values())}); a column holds one type. Fix that value, {fix}"
                )
    return None


def _dataframe_row(df: pd.DataFrame) -> Callable[[int], str]:
    if isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1:
        return lambda i: f"row {i + 1} of the data (DataFrame index {i})"
    return lambda i: f"row {i + 1} of the data (DataFrame index {df.index[i]!r})"


def _file_lines(path: Path, fmt: str) -> Callable[[int], str]:
    """Row ``i`` of a dataset read from ``path`` -> ``line N of name`` (read again only when an error needs it)."""
    lines: list[int] = []

    def where(i: int) -> str:
        if not lines:
            lines.extend(_record_lines(path, fmt))
        if fmt == "parquet" or i >= len(lines):
            return f"row {i + 1} of {path.name}"
        return f"line {lines[i]} of {path.name}"

    return where


def _record_lines(path: Path, fmt: str) -> list[int]:
    """The line (CSV, JSON Lines) where each record of ``path`` starts."""
    import csv

    if fmt == "csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            next(reader, None)
            starts, prev = [], reader.line_num
            for row in reader:
                if row:  # the CSV reader skips blank lines, as nbft's loader does
                    starts.append(prev + 1)
                prev = reader.line_num
            return starts
    if fmt == "json":
        text = path.read_text(encoding="utf-8")
        return [n for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    return []


def _load_path_or_hub(text: str, split: str | None) -> datasets.Dataset:
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise DataError(f"{path} is a folder but not one written by save_to_disk ({exc})") from None
        return load_source(loaded, split=split)
    if path.exists():
        if suffix not in FILE_FORMATS:
            raise DataError(
                f"unsupported file type {suffix or '(none)'!r} for {path}; use one of {', '.join(FILE_FORMATS)}"
            )
        fmt = FILE_FORMATS[suffix]
        if fmt != "parquet":
            _check_text_file(path)  # the builders accept bytes that are not UTF-8 and fail later, far away
        if suffix == ".json":
            shaped = _json_document(path)
            if shaped is not None:
                return shaped
        try:
            # load_dataset's packaged builders run offline; keep_in_memory avoids writing a cache per file.
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train", keep_in_memory=True)
        except Exception as exc:  # the builders raise many types for a bad file; find the row and the reason
            if fmt == "csv":
                _check_csv_rows(path)
            raise DataError(f"could not read {path} as {fmt}: {_file_problem(path, fmt, exc)}") from None
        _WHERE[ds] = _file_lines(path, fmt)
        if fmt == "csv" and len(ds.column_names) == 1:
            sep = next((s for s in (";", "\t", "|") if s in ds.column_names[0]), None)
            if sep is not None:
                raise DataError(
                    f"{path} has one column {ds.column_names[0]!r}: its fields seem separated by {sep!r}, not commas. "
                    f"Read it with pandas and pass the DataFrame, e.g. pd.read_csv(path, sep={sep!r})"
                )
        return ds
    if suffix in FILE_FORMATS or text.startswith((".", "/", "~")):
        raise DataError(f"file not found: {path}")
    return load_hub_dataset(text, split=split or "train")


def _check_text_file(path: Path) -> None:
    """Refuse an empty file, or one that is not UTF-8 (naming the first line that is not)."""
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; check the export that wrote it")
    with path.open("rb") as f:
        head = f.read(4096)
    utf16 = head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or head[:200].count(b"\0") * 3 >= len(
        head[:200]
    )
    if utf16:  # Excel's "Unicode text" and PowerShell's default: every other byte is zero
        utf32 = head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE))
        name = "UTF-32" if utf32 else "UTF-16"
        bom = (
            "it starts with a " + name + " byte-order mark"
            if head[:2] in (b"\xff\xfe", b"\xfe\xff")
            else ("half of its bytes are zero")
        )
        raise DataError(
            f"{path} is {name} text ({bom}), not UTF-8: re-save it as UTF-8 (in Excel: 'CSV UTF-8'), or read it "
            f"with pandas and pass the DataFrame, e.g. pd.read_csv(path, encoding={name.lower()!r})"
        )
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                where = line + chunk[: max(exc.start, 0)].count(b"\n")
                raise DataError(
                    f"{path}: line {where} is not UTF-8 text (byte {chunk[exc.start : exc.start + 1]!r}); the file is "
                    "probably in another encoding such as latin-1 or cp1252. Re-save it as UTF-8, or read it with its "
                    "encoding and pass the DataFrame, e.g. pd.read_csv(path, encoding='latin-1')"
                ) from None
            line += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{path}: the file ends inside a character (line {line}); it was cut short") from None


def _json_document(path: Path) -> datasets.Dataset | None:
    """A ``.json`` file holding one document: a list of records, columns (``{"text": [...], "label": [...]}``) or
    records under one key (``{"data": [...]}``). ``None`` when it is JSON Lines (the datasets loader reads those)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if isinstance(doc, dict) and len(doc) == 1 and isinstance(next(iter(doc.values())), list):
        key, doc = next(iter(doc.items()))
        if doc and all(isinstance(r, Mapping) for r in doc):
            logger.info("%s: reading the records under the key %r", path, key)
    if isinstance(doc, list):
        for n, record in enumerate(doc, 1):
            if not isinstance(record, Mapping):
                raise DataError(
                    f"could not read {path}: item {n} of its JSON array is a {type(record).__name__}, not an object "
                    'like {"text": ..., "label": ...}'
                )
        item = f"item {{}} of the JSON array in {path.name}"
        ds = _from_rows([dict(r) for r in doc], lambda i: item.format(i + 1))
        _WHERE[ds] = lambda i: item.format(i + 1)
        return ds
    if isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
        lengths = {k: len(v) for k, v in doc.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"could not read {path}: its columns have different lengths {lengths}; make them equal")
        rows = [dict(zip(doc, values, strict=True)) for values in zip(*doc.values(), strict=True)]
        ds = _from_rows(rows, lambda i: f"row {i + 1} of the columns in {path.name}")
        return ds
    if isinstance(doc, dict):
        return _from_rows([doc], lambda i: f"the record in {path.name}")
    raise DataError(f"could not read {path}: it holds a JSON {type(doc).__name__}, not records")


def _check_csv_rows(path: Path) -> None:
    """A CSV that is only a header line is valid CSV with no examples: say that, not "not valid csv"."""
    import csv

    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if header and not any(row for row in reader):
            raise DataError(
                f"{path} has a header ({', '.join(header)}) and no rows, so no examples: add them below the header "
                "line, or check the export that wrote it"
            )


def _file_problem(path: Path, fmt: str, exc: BaseException) -> str:
    """The row and reason a file failed to load, found by reading it again with the standard library."""
    if fmt == "json":
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            return "the file holds only whitespace"
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    return f"line {n} is not valid JSON ({err.msg} at column {err.colno}); fix or remove that line"
                if not isinstance(record, dict):
                    return f'line {n} is a JSON {type(record).__name__}, not an object like {{"text": ...}}'
        if isinstance(whole, list):
            for n, record in enumerate(whole, 1):
                if not isinstance(record, dict):
                    return f"item {n} of the JSON array is a {type(record).__name__}, not an object"
    elif fmt == "csv":
        import csv

        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            try:
                header = next(reader, [])
                for row in reader:
                    if row and len(row) != len(header):
                        return (
                            f"line {reader.line_num} has {len(row)} fields but the header has {len(header)} "
                            f"({header}); quote fields that contain commas, or fix that line"
                        )
            except csv.Error as err:
                return f"line {reader.line_num}: {err}"
    root = exc
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    detail = f"{type(root).__name__}: {str(root).splitlines()[0] if str(root) else 'no details'}"
    if fmt == "parquet":
        return f"it is not a readable Parquet file ({detail}); re-export it, e.g. with DataFrame.to_parquet(path)"
    return f"{detail}; check that the file is valid {fmt}"


def load_hub_dataset(name: str, *, split: str = "train", config: str | None = None) -> datasets.Dataset:
    """Load a dataset from the Hugging Face Hub (or the local datasets cache).

    Raises :class:`OfflineError` with what to do instead when the Hub cannot be reached.
    """
    try:
        return datasets.load_dataset(name, config, split=split)
    except (ConnectionError, OSError, FileNotFoundError) as exc:
        if hub_reachable():
            raise
        raise OfflineError(
            f"could not load {name!r} from the Hugging Face Hub: this machine cannot reach it ({type(exc).__name__}). "
            "Use local data instead (a CSV/JSON/JSONL/Parquet path, a DataFrame or a list of dicts), one of "
            "nbft.sources' offline datasets, or download it on a connected machine with "
            f"datasets.load_dataset({name!r}).save_to_disk(...) and pass that folder"
        ) from None


# ----------------------------------------------------------------------------------------------------------------
# Splitting: the one place nbft makes a train/validation/test split


def example_id(task: str, example: Mapping[str, Any], fields: Sequence[str]) -> str:
    """A stable id from the task and the example's own values (not its phrasing, not its position)."""
    payload = json.dumps([task, *[example.get(f) for f in fields]], sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def split_examples(
    source: datasets.Dataset,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    key_fields: Sequence[str] | None = None,
    stratify: str | None = None,
) -> datasets.DatasetDict:
    """Split raw examples into disjoint train/validation/test splits: the only split function in nbft.

    Every task's ``load()`` and :func:`build_instruction_dataset` call it, so a task's test split and a training set
    built from the same data with the same ``seed`` and ``fractions`` never share an example. Duplicates (equal
    values of ``key_fields``, default all columns, ignoring case and spacing) are dropped first; near duplicates
    (texts sharing a 13-word window, e.g. a retweet) are kept on the same side of the split. Examples are put in an
    order given by their content, so the split depends on *which* examples there are, not on their order in the
    file. ``stratify`` names a label column whose proportions each split keeps (when every label has enough
    examples). Sizes are exact when there are no near-duplicate groups (a group counts as one).

    Example:
        >>> rows = datasets.Dataset.from_list([{"q": f"q{i}", "a": str(i)} for i in range(10)])
        >>> {k: v.num_rows for k, v in split_examples(rows, (0.6, 0.2, 0.2)).items()}
        {'train': 6, 'validation': 2, 'test': 2}
    """
    from nbft.config import DataConfig

    fractions = DataConfig(split=tuple(fractions)).split  # one place validates split fractions
    fields = list(key_fields or source.column_names)
    missing = [f for f in fields if f not in source.column_names]
    if missing:
        raise DataError(f"split_examples: the data has no field(s) {missing}; it has {source.column_names}")
    rows = source.select_columns(fields).to_list()
    first: dict[str, int] = {}
    raw = [json.dumps([row[f] for f in fields], default=str, ensure_ascii=False) for row in rows]
    for i, row in enumerate(rows):
        # case and spacing do not make a different example; which copy is kept depends on content, not order
        key = json.dumps(
            [normalize_text(row[f]) if isinstance(row[f], str) else row[f] for f in fields],
            default=str,
            ensure_ascii=False,
        )
        if key not in first or raw[i] < raw[first[key]]:
            first[key] = i
    dropped = len(rows) - len(first)
    if dropped:
        # a large share of copies usually means a broken export or join: say so; a few retweets are routine
        log = logger.warning if dropped * 10 >= len(rows) else logger.info
        log(
            "dropped %d exact duplicate examples of %d (equal %s, ignoring case and spacing): %d distinct remain",
            dropped, len(rows), ", ".join(fields), len(first),
        )  # fmt: skip
    keys, unique = list(first), list(first.values())
    # near duplicates (a shared 13-word window) stay together: one side of the split, never both
    groups = near_duplicate_groups([[v for v in rows[i].values() if isinstance(v, str)] for i in unique])
    members: dict[int, list[int]] = {}
    for j, g in enumerate(groups):
        members.setdefault(g, []).append(j)
    # content order, not file order: the same examples give the same split however they were loaded
    digest = {g: min(hashlib.sha1(keys[j].encode("utf-8")).hexdigest() for j in js) for g, js in members.items()}
    order = sorted(members, key=digest.__getitem__)
    labels = [str(rows[unique[members[g][0]]][stratify]) for g in order] if stratify else None
    parts = _assign_splits(len(order), fractions, seed, labels)
    _warn_empty_splits(parts, fractions, len(rows), len(first))
    return datasets.DatasetDict(
        {name: source.select([unique[j] for k in idx for j in members[order[k]]]) for name, idx in parts.items()}
    )


def _warn_empty_splits(
    parts: Mapping[str, list[int]], fractions: Sequence[float], n_rows: int, n_distinct: int
) -> None:
    """Say so when a split that was asked for (a fraction above 0) came out empty: too few distinct examples."""
    empty = [name for (name, idx), share in zip(parts.items(), fractions, strict=True) if share > 0 and not idx]
    if not empty:
        return
    smallest = min(f for f in fractions if f > 0)
    enough = next(n for n in range(1, 10_000) if round(n * smallest) >= 1)
    sizes = ", ".join(f"{name} {len(idx)}" for name, idx in parts.items())
    copies = f" ({n_rows} before dropping duplicates)" if n_rows != n_distinct else ""
    logger.warning(
        "only %d distinct example%s%s: the split %s gives %s, so %s %s empty (no validation loss, nothing to "
        "evaluate on). Add data (at least %d distinct examples), or set split= with 0 for the splits you do not need",
        n_distinct, "" if n_distinct == 1 else "s", copies, tuple(fractions), sizes, " and ".join(empty),
        "is" if len(empty) == 1 else "are", enough,
    )  # fmt: skip


def _assign_splits(n: int, fractions: Sequence[float], seed: int, labels: list[str] | None) -> dict[str, list[int]]:
    from sklearn.model_selection import train_test_split

    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    if n - n_val - n_test < 1:
        raise DataError(f"only {n} examples: too few to split {tuple(fractions)}; add data or change split")
    if labels is not None:
        counts = Counter(labels)
        rare = {k: v for k, v in counts.items() if v < 2}
        holdout = n_val + n_test
        if rare or (holdout and holdout < len(counts)):
            logger.warning(
                "cannot stratify %d examples over %d labels (rare: %s); splitting at random instead",
                n,
                len(counts),
                rare,
            )
            labels = None
    idx = list(range(n))
    train_idx, hold_idx = (idx, [])
    if n_val + n_test:
        train_idx, hold_idx = train_test_split(
            idx, test_size=n_val + n_test, random_state=seed, shuffle=True, stratify=labels
        )
    val_idx, test_idx = hold_idx, []
    if n_val and n_test:
        hold_labels = [labels[i] for i in hold_idx] if labels is not None else None
        if hold_labels is not None and min(Counter(hold_labels).values()) < 2:
            hold_labels = None
        val_idx, test_idx = train_test_split(
            hold_idx, test_size=n_test, random_state=seed, shuffle=True, stratify=hold_labels
        )
    elif n_test:
        val_idx, test_idx = [], hold_idx
    return {"train": list(train_idx), "validation": list(val_idx), "test": list(test_idx)}


# ----------------------------------------------------------------------------------------------------------------
# Building prompt -> completion pairs


def render_examples(
    rows: datasets.Dataset | Sequence[Mapping[str, Any]],
    templates: str | PromptTemplate | Sequence[str | PromptTemplate],
    *,
    task: str | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """Render raw examples into prompt → completion rows, one phrasing per example chosen at random with ``seed``.

    Columns: ``prompt``, ``completion``, ``task``, ``template_id``, ``example_id``. Empty completions are an error.

    Example:
        >>> list(render_examples([{"question": "2+2?", "answer": "4"}], "qa/1")["completion"])
        ['4']
    """
    tmpl = resolve_templates(templates)
    task = task or tmpl[0].task
    fields = sorted({f for t in tmpl for f in (*t.fields, t.target)})
    rows = rows.to_list() if isinstance(rows, datasets.Dataset) else [dict(r) for r in rows]
    rng = random.Random(seed)
    records, empty = [], []
    for row in rows:
        t = tmpl[rng.randrange(len(tmpl))]
        completion = t.completion(row)
        if not completion.strip():
            empty.append({f: row.get(f) for f in fields})
            continue
        records.append(
            {
                "prompt": t.render(row),
                "completion": completion,
                "task": task,
                "template_id": t.id,
                "example_id": example_id(task, row, fields),
            }
        )
    if empty:
        raise DataError(
            f"{len(empty)} of {len(rows)} examples have an empty completion (field {tmpl[0].target!r}), "
            f"e.g. {empty[:3]}; drop or fill them before building (e.g. dataset.filter(lambda x: x[...].strip()))"
        )
    return datasets.Dataset.from_dict({c: [r[c] for r in records] for c in COLUMNS}, features=_features())


def _subsample(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    if n is None or n >= ds.num_rows:
        return ds
    return ds.select(sorted(random.Random(seed).sample(range(ds.num_rows), n)))


def build_instruction_dataset(
    source: Source | None = None,
    templates: str | PromptTemplate | Sequence[str | PromptTemplate] | None = None,
    *,
    task: Any = None,
    n: int | None = None,
    n_validation: int | None = None,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    stratify: bool | None = None,
    columns: Mapping[str, str] | None = None,
    max_examples: int | None = None,
) -> datasets.DatasetDict:
    """Render labelled examples into prompt → completion pairs, split by :func:`split_examples`.

    **A built-in task** (``source`` left out, ``task="sentiment"``, or a :class:`~nbft.evaluate.Task`): the training
    set comes from the task's own *train* split and the validation set from its *validation* split; its *test* split
    stays with the task, for :func:`nbft.compare`, and is not returned. ``n`` training examples (default: all).

    **Your own data** (``source``: anything :func:`load_source` accepts): the data is split with
    :func:`split_examples` into train/validation/test, exactly as ``Task.from_data(source, ...)`` splits it with the
    same ``split`` and ``seed``, so evaluating on that task never scores a training example.

    Each example gets one phrasing, chosen at random among ``templates`` with ``seed`` (same seed, same dataset).
    Exact duplicate examples are dropped; empty completions are an error. Classification data is split stratified
    by label unless ``stratify=False``.

    Args:
        source: your data, or ``None`` for a built-in task's data.
        templates: a task name (all its phrasings, e.g. ``"summarize"``), template ids, or ``PromptTemplate`` objects.
            Default for a built-in task: all phrasings of its template family.
        task: without ``source``, the built-in task (name or Task) whose splits are used; with ``source``, the task
            name recorded in the ``task`` column (default: the templates' task).
        n: training examples to keep (a seeded sample of the train split); ``None``: all.
        n_validation: validation examples to keep; default for a built-in task: ``max(8, n // 8)`` (all when
            ``n`` is ``None``), for your own data: all of its validation split.
        split: fractions of train, validation and test (your own data only: a task's split is the task's).
        columns: rename data columns to the template's field names, ``{"field": "column"}``.
        max_examples: your own data: keep a seeded share of each split so that the total is about this many.

    Example:
        >>> rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
        >>> build_instruction_dataset(rows, ["qa/1", "qa/2"], split=(0.6, 0.2, 0.2))["test"].num_rows
        2
    """
    seed = _int_arg("seed", seed, 0, "e.g. seed=0 (the same seed gives the same dataset)")
    n = _int_arg("n", n, 1, "the number of training examples to keep, e.g. n=800 (None: all)", optional=True)
    n_validation = _int_arg("n_validation", n_validation, 0, "e.g. n_validation=100 (None: the default)", optional=True)
    max_examples = _int_arg("max_examples", max_examples, 1, "e.g. max_examples=1000 (None: all)", optional=True)
    if columns is not None and not isinstance(columns, Mapping):
        raise DataError(
            f"columns= must be a dict {{template field: your column}}, e.g. {{'text': 'review'}}; got {columns!r}"
        )
    if templates is not None and not isinstance(templates, str | PromptTemplate | list | tuple):
        raise DataError(
            f"templates= must be a template id, a task name, a PromptTemplate or a list of those; got {templates!r}"
        )
    if source is None:
        if task is None:
            raise DataError(
                "give a source (your data) or a built-in task, e.g. build_instruction_dataset(task='sentiment', n=800)"
            )
        return _from_task(task, templates, n=n, n_validation=n_validation, seed=seed)
    if templates is None:
        raise DataError(
            "templates= is needed with your own data, e.g. build_instruction_dataset(rows, 'sentiment') or "
            "['qa/1', 'qa/2']; rows that already hold prompt/completion use 'prompt-completion/1'"
        )
    tmpl = resolve_templates(templates)
    tasks = {t.task for t in tmpl}
    if task is None:
        if len(tasks) > 1:
            raise DataError(f"templates of several tasks {sorted(tasks)} given for one source; pass task=...")
        task = tmpl[0].task
    ds = prepare_source(source, tmpl, columns=columns)
    fields = sorted({f for t in tmpl for f in (*t.fields, t.target)})
    _check_rows(ds, tmpl)
    _check_completions(ds, tmpl, fields)
    classification = all(t.is_classification for t in tmpl)
    do_stratify = classification if stratify is None else stratify
    splits = split_examples(ds, split, seed, key_fields=fields, stratify=tmpl[0].target if do_stratify else None)
    total = sum(s.num_rows for s in splits.values())
    out = {}
    for name, part in splits.items():
        keep = None if max_examples is None or max_examples >= total else round(part.num_rows * max_examples / total)
        if name == "train" and n is not None:
            keep = n if keep is None else min(n, keep)
        if name == "validation" and n_validation is not None:
            keep = n_validation if keep is None else min(n_validation, keep)
        out[name] = render_examples(_subsample(part, keep, seed), tmpl, task=task, seed=seed)
    return datasets.DatasetDict(out)


def _check_rows(ds: datasets.Dataset, templates: Sequence[PromptTemplate]) -> None:
    """Refuse, with the row number, a value a template would print as something other than its text (None, NaN, a
    nested record, a list), a row whose input fields are all empty, and a template that renders an empty prompt."""
    inputs = sorted({f for t in templates for f in t.fields})
    if not inputs:
        return
    rows = ds.select_columns(inputs).to_list()
    for i, row in enumerate(rows):
        for t in templates:
            try:
                t.render(row)
            except TemplateError as exc:
                raise TemplateError(f"{_row_name(ds, i)}: {exc}") from None


def check_examples(ds: datasets.Dataset, templates: Sequence[PromptTemplate]) -> None:
    """Refuse, with the row number, examples a template cannot turn into a proper prompt and completion."""
    _check_rows(ds, templates)
    _check_completions(ds, templates, sorted({f for t in templates for f in (*t.fields, t.target)}))


def _check_completions(ds: datasets.Dataset, templates: Sequence[PromptTemplate], fields: Sequence[str]) -> None:
    """Refuse empty completions over the whole source, before it is split (the count then means the whole data)."""
    by_target = {t.target: t for t in templates}
    rows = ds.select_columns(list(fields)).to_list()
    empty = []
    for i, row in enumerate(rows):
        try:
            if any(not t.completion(row).strip() for t in by_target.values()):
                empty.append(i)
        except TemplateError as exc:
            raise TemplateError(f"{_row_name(ds, i)}: {exc}") from None
    if empty:
        target = next(iter(by_target))
        shown = "rows " + ", ".join(str(i + 1) for i in empty[:5])
        if ds in _WHERE:  # read from a file: the lines the user can open
            shown = ", ".join(_row_name(ds, i) for i in empty[:5])
        shown += " ..." if len(empty) > 5 else ""
        raise DataError(
            f"{len(empty)} of {len(rows)} examples have an empty completion (field {target!r}; {shown}), "
            f"e.g. {[rows[i] for i in empty[:3]]}; drop or fill them before building "
            "(e.g. dataset.filter(lambda x: x[...].strip()))"
        )


def prepare_source(
    source: Source, templates: Sequence[PromptTemplate], *, columns: Mapping[str, str] | None = None
) -> datasets.Dataset:
    """Load ``source`` (:func:`load_source`), rename ``columns``, and check the templates' fields are there."""
    ds = load_source(source)
    if columns:
        missing = [c for c in columns.values() if c not in ds.column_names]
        if missing:
            raise DataError(f"columns= names {missing}, which the data lacks; it has {ds.column_names}")
        where = _WHERE.get(ds)
        ds = ds.rename_columns({col: field for field, col in columns.items() if col != field})
        if where is not None:
            _WHERE[ds] = where
    for t in templates:
        t.check_columns(ds.column_names)
    return ds


def _from_task(
    task: Any,
    templates: Any,
    *,
    n: int | None,
    n_validation: int | None,
    seed: int,
) -> datasets.DatasetDict:
    if isinstance(task, str):
        from nbft import sources

        name, splits = task, sources.load_splits(task)
        family = sources.template_family(task)
    elif hasattr(task, "load") and hasattr(task, "template"):  # a Task object (duck-typed: evaluate sits above data)
        name, splits, family = task.name, task.load(), phrasings(task.template)
    else:
        raise DataError(f"task= must be a built-in task name (e.g. 'sentiment') or an nbft Task, not {task!r}")
    tmpl = resolve_templates(templates if templates is not None else family)
    if "train" not in splits or splits["train"].num_rows == 0:
        raise DataError(f"task {name!r} has no train split to build a training set from")
    train = _subsample(splits["train"], n, seed)
    if n_validation is None:
        n_validation = None if n is None else max(8, n // 8)
    out = {"train": render_examples(train, tmpl, task=name, seed=seed)}
    if "validation" in splits and splits["validation"].num_rows:
        val = _subsample(splits["validation"], n_validation, seed)
        out["validation"] = render_examples(val, tmpl, task=name, seed=seed + 1)
    return datasets.DatasetDict(out)


def _features() -> datasets.Features:
    return datasets.Features({c: datasets.Value("string") for c in COLUMNS})


# ----------------------------------------------------------------------------------------------------------------
# Mixing tasks


def _largest_remainder(total: int, ratios: Mapping[str, float]) -> dict[str, int]:
    raw = {k: total * r for k, r in ratios.items()}
    counts = {k: math.floor(v) for k, v in raw.items()}
    leftover = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[:leftover]:
        counts[k] += 1
    return counts


def mix(
    parts: Mapping[str, datasets.Dataset],
    ratios: Mapping[str, float] | None = None,
    *,
    replay: float | None = None,
    total: int | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """Mix tasks with exact per-task proportions (each within one example), shuffled with ``seed``.

    Either give ``ratios`` (normalised to sum to 1), or give ``replay``: the first task is the target and the
    other tasks share ``replay`` of the mixture equally. This is how forgetting is mitigated: replaying a little
    of the other tasks while tuning the target. ``total`` defaults to the largest mixture the data allows without
    repeating examples. The achieved counts are logged; :func:`mix_report` recomputes them from the data.

    Example:
        >>> a = datasets.Dataset.from_dict({"prompt": ["a"] * 8, "task": ["a"] * 8})
        >>> b = datasets.Dataset.from_dict({"prompt": ["b"] * 8, "task": ["b"] * 8})
        >>> mix({"a": a, "b": b}, replay=0.25, total=8)["task"].count("b")
        2
    """
    if not isinstance(parts, Mapping):
        raise DataError(
            "mix() takes a dict {task name: dataset}, e.g. mix({'sentiment': a, 'qa': b}), not a "
            f"{type(parts).__name__}"
        )
    if not parts:
        raise DataError("mix() needs at least one task dataset")
    for key, part in parts.items():
        if not isinstance(part, datasets.Dataset):
            raise DataError(f"mix(): {key!r} is a {type(part).__name__}, not a datasets.Dataset (e.g. data['train'])")
        if part.num_rows == 0:
            raise DataError(f"mix(): the dataset for {key!r} is empty; leave it out or give it examples")
    seed = _int_arg("mix(seed=...)", seed, 0, "e.g. seed=0")
    total = _int_arg("mix(total=...)", total, 1, "e.g. total=1000 (None: as many as the data allows)", optional=True)
    if replay is not None:
        replay = _number_arg("mix(replay=...)", replay, "a share such as replay=0.1")
    if ratios is not None:
        if not isinstance(ratios, Mapping):
            raise DataError("ratios= must be a dict {task name: share}, e.g. {'qa': 0.9, 'sentiment': 0.1}")
        ratios = {k: _number_arg(f"ratios[{k!r}]", v, "e.g. 0.5") for k, v in ratios.items()}
    names = list(parts)
    if ratios is not None and replay is not None:
        raise DataError("give either ratios= or replay=, not both")
    if replay is not None:
        if not 0 <= replay < 1 or (replay > 0 and len(names) < 2):
            raise DataError(f"replay must be in [0, 1) and needs at least two tasks; got {replay} for {names}")
        others = names[1:]
        ratios = {names[0]: 1 - replay, **{k: replay / len(others) for k in others}}
    if ratios is None:
        ratios = {k: 1.0 for k in names}
    unknown_tasks = sorted(set(ratios) - set(names))
    if unknown_tasks:
        raise DataError(f"ratios name {unknown_tasks}, which are not among the datasets {names}")
    if any(r < 0 for r in ratios.values()) or sum(ratios.values()) <= 0:
        raise DataError(f"ratios must be non-negative with a positive sum, got {dict(ratios)}")
    norm = {k: ratios.get(k, 0.0) / sum(ratios.values()) for k in names}
    capacity = min(math.floor(parts[k].num_rows / r) for k, r in norm.items() if r > 0)
    total = capacity if total is None else total
    counts = _largest_remainder(total, norm)
    short = {k: (c, parts[k].num_rows) for k, c in counts.items() if c > parts[k].num_rows}
    if short:
        raise DataError(
            f"total={total} needs more examples than some tasks have (needed, available): {short}; "
            f"lower total (at most {capacity} keeps these ratios) or add data"
        )
    rng = random.Random(seed)
    chosen = []
    for k in names:
        if counts[k]:
            idx = sorted(rng.sample(range(parts[k].num_rows), counts[k]))
            part = parts[k].select(idx)
            if "task" not in part.column_names:  # the loss per task needs it: the dict key names the task
                part = part.add_column("task", [k] * part.num_rows)
            chosen.append(part)
    _warn_mix_mistakes(parts)
    _check_mix_columns(parts)
    common = [c for c in chosen[0].column_names if all(c in p.column_names for p in chosen)]
    dropped = sorted({c for p in chosen for c in p.column_names} - set(common))
    if dropped:  # concatenating would fill them with None for the datasets that lack them
        logger.warning("mix(): columns %s are not in every dataset and were left out", dropped)
        chosen = [p.select_columns(common) for p in chosen]
    mixed = datasets.concatenate_datasets(chosen).shuffle(seed=seed)
    logger.info(
        "mixture of %d examples: %s",
        total,
        ", ".join(f"{k} {counts[k]} ({counts[k] / max(total, 1):.1%}, asked {norm[k]:.1%})" for k in names),
    )
    return mixed


_TRAINING_COLUMNS = ("prompt", "completion", "input_ids", "labels")


def _check_mix_columns(parts: Mapping[str, datasets.Dataset]) -> None:
    """Refuse parts whose training columns differ: the mixture would lose the ones not in every part (e.g. no
    ``prompt`` when one part calls it ``text``), and could not be trained on."""
    lost = [c for c in _TRAINING_COLUMNS if any(c in p.column_names for p in parts.values())
            and not all(c in p.column_names for p in parts.values())]  # fmt: skip
    if not lost:
        return
    each = "; ".join(f"{k!r} has {p.column_names}" for k, p in parts.items())
    raise DataError(
        f"mix(): the datasets have different columns ({each}), so the mixture would have no {lost} column"
        f"{'s' if len(lost) > 1 else ''}. Give every dataset the same columns: build each with "
        "build_instruction_dataset (prompt/completion), or rename, e.g. data.rename_column('text', 'prompt'); "
        "tokenized parts need input_ids and labels in each"
    )


def _warn_mix_mistakes(parts: Mapping[str, datasets.Dataset]) -> None:
    """Say when the same examples sit under two names, or a name differs from the data's own task column."""
    seen: dict[str, set[str]] = {}
    for key, part in parts.items():
        if "task" in part.column_names:
            tasks = set(part.unique("task"))
            if len(tasks) == 1 and key not in tasks:
                logger.warning("mix(): the data under %r is task %r (its task column); ratios use the name %r",
                               key, next(iter(tasks)), key)  # fmt: skip
        if "example_id" in part.column_names:
            ids = set(part["example_id"])
            for other, other_ids in seen.items():
                if ids & other_ids:
                    logger.warning("mix(): %d examples are both in %r and %r: they would be trained on twice",
                                   len(ids & other_ids), other, key)  # fmt: skip
            seen[key] = ids


def mix_report(dataset: datasets.Dataset) -> pd.DataFrame:
    """Count and share of each task in a (mixed) dataset, from its ``task`` column."""
    counts = Counter(dataset["task"])
    total = sum(counts.values())
    return pd.DataFrame([{"task": k, "n": v, "share": v / total} for k, v in sorted(counts.items())])


# ----------------------------------------------------------------------------------------------------------------
# Tokenization


@dataclasses.dataclass
class TruncationReport:
    """What tokenize_for_training did with over-long examples, overall and per task (the data's ``task`` column).

    ``n_no_answer``: examples left with no supervised token of their answer (only the EOS is learned) after the cut.
    ``per_task``: ``{task: {"examples", "over", "no_answer"}}`` (one entry, ``"-"``, without a task column).
    """

    max_length: int
    overflow: str
    n_examples: int
    n_over: int
    over_ids: list[str]
    longest: int
    kept_all_at: int
    n_no_answer: int = 0
    per_task: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        if not self.n_over:
            text = f"all {self.n_examples} examples fit in max_length={self.max_length} (longest {self.longest})"
        else:
            verb = "truncated" if self.overflow == "truncate" else "dropped"
            ids = ", ".join(self.over_ids[:5]) + (" ..." if len(self.over_ids) > 5 else "")
            text = (
                f"{verb} {self.n_over} of {self.n_examples} examples longer than max_length={self.max_length} "
                f"(example_id {ids}); max_length={self.kept_all_at} would keep them all"
            )
        if self.n_no_answer:
            text += f"; {self.n_no_answer} left with no answer token to learn (only the EOS)"
        if len(self.per_task) > 1:
            text += "; per task: " + ", ".join(f"{task} {self.task_line(task)}" for task in self.per_task)
        return text

    def task_line(self, task: str) -> str:
        """``3/28 truncated, 0 with no answer token`` for one task."""
        counts = self.per_task[task]
        verb = "truncated" if self.overflow == "truncate" else "dropped"
        return f"{counts['over']}/{counts['examples']} {verb}, {counts['no_answer']} with no answer token"


def format_prompt(
    tokenizer: Any,
    prompt: str,
    chat_template: bool = False,
    shots: Sequence[tuple[str, str]] = (),
) -> str:
    """The exact text a model sees before its completion, in training and in evaluation alike.

    ``shots`` are solved examples ``(prompt, completion)`` put before the prompt (in-context learning). Plain text:
    each shot is its prompt, its completion and a blank line. With ``chat_template=True`` each shot is a user turn
    and an assistant turn, and the prompt becomes the last user turn followed by the assistant's generation prompt.

    Example:
        >>> format_prompt(None, "Q: 3+3?\\nA:", shots=[("Q: 1+1?\\nA:", " 2")])
        'Q: 1+1?\\nA: 2\\n\\nQ: 3+3?\\nA:'
    """
    if not chat_template:
        return "".join(p + c + "\n\n" for p, c in shots) + prompt
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"chat_template=True but tokenizer {type(tokenizer).__name__} has no chat template; "
            "use chat_template=False or an instruct model's tokenizer"
        )
    messages: list[dict[str, str]] = []
    for p, c in shots:
        messages += [{"role": "user", "content": p.rstrip("\n")}, {"role": "assistant", "content": c}]
    messages.append({"role": "user", "content": prompt.rstrip("\n")})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer: Any, text: str, *, chat: bool = False, seq2seq: bool = False) -> list[int]:
    """Token ids of a formatted prompt (:func:`format_prompt`), the same in training and in evaluation.

    Plain prompts get the tokenizer's special tokens (BOS) but never a trailing EOS; chat-formatted prompts already
    hold their special tokens as text. A seq2seq encoder input ends with EOS.
    """
    if seq2seq:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        eos = tokenizer.eos_token_id
        return ids if (ids and ids[-1] == eos) or eos is None else [*ids, eos]
    if chat:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]  # some tokenizers append EOS to every text; a prompt must not end there
    return ids


def encode_pair(
    tokenizer: Any, prompt: str, completion: str, chat_template: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of a causal prompt and of its completion (ending with EOS), tokenized separately.

    Tokenizing the two parts separately makes the label mask exact: the completion's tokens are exactly the
    labelled ones, whatever the tokenizer would merge across the boundary.
    """
    prompt_text = format_prompt(tokenizer, prompt, chat_template)
    if chat_template:
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.rstrip("\n")}, {"role": "assistant", "content": completion}],
            tokenize=False,
        )
        if not full.startswith(prompt_text):
            raise DataError("the chat template renders the user turn differently with and without an answer")
        completion_text = full[len(prompt_text) :].rstrip("\n")
    else:
        completion_text = completion
    prompt_ids = encode_prompt(tokenizer, prompt_text, chat=chat_template)
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    if not completion_ids or completion_ids[-1] != tokenizer.eos_token_id:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    return prompt_ids, completion_ids


def _encode_seq2seq(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    eos = tokenizer.eos_token_id
    src = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    tgt = tokenizer(completion, add_special_tokens=True)["input_ids"]
    if not src or src[-1] != eos:
        src = [*src, eos]
    if not tgt or tgt[-1] != eos:
        tgt = [*tgt, eos]
    return src, tgt


def resolve_mode(tokenizer: Any, mode: str | None, model: Any = None) -> Literal["causal", "seq2seq"]:
    """Pick causal or seq2seq tokenization, refusing a mode that contradicts the tokenizer or model."""
    from nbft.models import model_kind

    known = model_kind(model) if model is not None else tokenizer_kind(tokenizer)
    if mode is None:
        return known or "causal"
    if mode not in ("causal", "seq2seq"):
        raise DataError(f"mode must be 'causal', 'seq2seq' or None (auto), not {mode!r}")
    if known is not None and known != mode:
        why = (
            "A seq2seq model reads the prompt in its encoder and writes the completion as labels"
            if known == "seq2seq"
            else "A causal model reads prompt and completion as one sequence"
        )
        raise DataError(
            f"mode={mode!r} but the tokenizer ({type(tokenizer).__name__}) belongs to a {known} model. "
            f"{why}; use mode={known!r} (or leave mode=None)"
        )
    return mode  # type: ignore[return-value]


def tokenize_for_training(
    dataset: datasets.Dataset,
    tokenizer: Any,
    *,
    max_length: int = 1024,
    mode: str | None = None,
    chat_template: bool = False,
    overflow: Literal["truncate", "drop"] = "truncate",
    model: Any = None,
    return_report: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, TruncationReport]:
    """Tokenize prompt → completion pairs for training with a completion-only loss.

    Causal LMs: ``input_ids = prompt + completion + EOS`` and ``labels`` equal to ``input_ids`` with -100 on
    the prompt (aligned with ``input_ids``; the loss shifts by one). Seq2seq: ``input_ids`` is the prompt and
    ``labels`` the completion. No padding here: the collator pads, with label -100. Over-long examples lose the
    start of their prompt (``overflow="truncate"``; the instruction cue before the completion is kept) or are left
    out (``"drop"``), and the report says which and what ``max_length`` would have kept them.

    Example:
        >>> from nbft.models import tiny_random
        >>> _, tok = tiny_random()
        >>> ds = datasets.Dataset.from_list([{"prompt": "Q: hi\\n", "completion": "yo"}])
        >>> row = tokenize_for_training(ds, tok)[0]
        >>> tok.decode([t for t, l in zip(row["input_ids"], row["labels"]) if l != -100])
        'yo</s>'
    """
    dataset = _as_dataset(dataset)
    for col in ("prompt", "completion"):
        if col not in dataset.column_names:
            raise DataError(
                f"the dataset has no {col!r} column (columns: {dataset.column_names}); "
                "build it with build_instruction_dataset() first"
            )
    max_length = _int_arg(
        "max_length", max_length, 2, "it must leave room for the end of the prompt and the EOS, e.g. max_length=512"
    )
    if overflow not in ("truncate", "drop"):
        raise DataError(f"overflow must be 'truncate' or 'drop', not {overflow!r}")
    _check_tokenizer(tokenizer)
    kind = resolve_mode(tokenizer, mode, model)
    if kind == "seq2seq" and chat_template:
        raise DataError("chat_template=True applies to causal (decoder-only) models; use chat_template=False")
    if dataset.num_rows == 0:
        raise DataError("the dataset is empty; nothing to tokenize")
    _check_texts(dataset)

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {
            "input_ids": [], "labels": [], "length": [], "full_length": [], "content_hash": [], "answer_tokens": [],
        }  # fmt: skip
        for prompt, completion in zip(batch["prompt"], batch["completion"]):
            # kept with the tokens, so a run can record what it trained on even without the text columns
            out["content_hash"].append(content_hash(prompt, completion))
            if kind == "seq2seq":
                src, tgt = _encode_seq2seq(tokenizer, prompt, completion)
                full = max(len(src), len(tgt))
                src, tgt = src[:max_length], tgt[:max_length]
                eos = tokenizer.eos_token_id
                if src[-1] != eos:
                    src[-1] = eos
                if tgt[-1] != eos:  # a cut target still ends: the model must learn where an answer stops
                    tgt[-1] = eos
                ids, labels = src, tgt
            else:
                p, c = encode_pair(tokenizer, prompt, completion, chat_template)
                full = len(p) + len(c)
                if full > max_length:
                    p, c = _truncate_pair(p, c, max_length)
                ids, labels = p + c, [-100] * len(p) + c
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["length"].append(len(ids))
            out["full_length"].append(full)
            out["answer_tokens"].append(len(labels if kind == "seq2seq" else c) - 1)  # without the EOS
        return out

    tokenized = dataset.map(encode, batched=True, desc="tokenize", load_from_cache_file=False)
    full = tokenized["full_length"]
    over = [i for i, n in enumerate(full) if n > max_length]
    ids = tokenized["example_id"] if "example_id" in tokenized.column_names else [str(i) for i in range(len(full))]
    answers = tokenized["answer_tokens"]
    over_set = set(over)
    # a dropped example is left out, not "left with no answer": only kept examples can be left with none
    no_answer = [i for i, n in enumerate(answers) if n <= 0 and not (overflow == "drop" and i in over_set)]
    tasks = [str(t) for t in tokenized["task"]] if "task" in tokenized.column_names else ["-"] * len(full)
    per_task: dict[str, dict[str, int]] = {}
    for task in tasks:
        per_task.setdefault(task, {"examples": 0, "over": 0, "no_answer": 0})["examples"] += 1
    for i in over:
        per_task[tasks[i]]["over"] += 1
    for i in no_answer:
        per_task[tasks[i]]["no_answer"] += 1
    report = TruncationReport(
        max_length=max_length,
        overflow=overflow,
        n_examples=len(full),
        n_over=len(over),
        over_ids=[ids[i] for i in over],
        longest=max(full),
        kept_all_at=max(full),
        n_no_answer=len(no_answer),
        per_task=per_task,
    )
    if over:
        if overflow == "drop":
            if len(over) == len(full):
                raise DataError(
                    f"every example ({len(full)}) is longer than max_length={max_length} tokens (shortest "
                    f"{min(full)}); raise max_length to at least {min(full)} or use overflow='truncate'"
                )
            tokenized = tokenized.select([i for i in range(len(full)) if i not in over_set])
        logger.warning("%s", report)
    tokenized = tokenized.remove_columns(["full_length", "answer_tokens"])
    from nbft.dataset_settings import mark_tokenized

    tokenized = mark_tokenized(tokenized, dataset, max_length, chat_template, overflow)  # finetune records them
    return (tokenized, report) if return_report else tokenized


def _truncate_pair(p: list[int], c: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Fit prompt + completion in ``max_length``: cut the prompt's start (the cue right before the answer matters
    most); when the completion alone is too long, keep the prompt's last tokens (its cue, up to a quarter of the
    room) and the completion's start, and end it with its EOS."""
    if len(c) < max_length and len(p) + len(c) > max_length:
        keep = max_length - len(c)
        if keep >= min(len(p), max(1, max_length // 4)):
            return p[len(p) - keep :], c
    cue = min(len(p), max(1, max_length // 4), max_length - 1)
    room = max_length - cue
    return p[len(p) - cue :] if cue else [], [*c[: room - 1], c[-1]]


def _as_dataset(data: Any) -> datasets.Dataset:
    if isinstance(data, datasets.DatasetDict):
        raise DataError(f"pass one split, e.g. data['train'], not the whole DatasetDict (splits: {list(data)})")
    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, pd.DataFrame):
        return datasets.Dataset.from_pandas(data, preserve_index=False)
    if isinstance(data, Sequence) and not isinstance(data, str | bytes) and all(isinstance(r, Mapping) for r in data):
        if not data:
            raise DataError("the dataset is empty; nothing to tokenize")
        return datasets.Dataset.from_list([dict(r) for r in data])
    raise DataError(
        f"expected a datasets.Dataset with prompt and completion columns (or a list of such dicts), got "
        f"{type(data).__name__}; build one with build_instruction_dataset()"
    )


def _check_tokenizer(tokenizer: Any) -> None:
    if tokenizer is None or isinstance(tokenizer, str) or not callable(tokenizer):
        raise DataError(f"tokenizer must be a loaded tokenizer (model, tok = nbft.load_model(...)), not {tokenizer!r}")
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise DataError(
            f"the tokenizer ({type(tokenizer).__name__}) has no end-of-sequence token, so a completion could not "
            "end; set one first, e.g. tokenizer.eos_token = '</s>' (a token the model knows as its end)"
        )


def _check_texts(dataset: datasets.Dataset) -> None:
    """Every prompt and completion is text, and neither is empty (an empty one would train on nothing but EOS)."""
    for col in ("prompt", "completion"):
        for i, value in enumerate(dataset[col]):
            if not isinstance(value, str):
                raise DataError(
                    f"row {i + 1}: {col} is {value!r} ({type(value).__name__}), not text; fill or drop such rows, "
                    f"e.g. dataset.filter(lambda x: isinstance(x[{col!r}], str) and x[{col!r}].strip())"
                )
            if not value.strip():
                raise DataError(
                    f"row {i + 1}: the {col} is empty, so the example would teach nothing but "
                    f"{'the answer without a question' if col == 'prompt' else 'to stop'}; fill or drop such rows, "
                    f"e.g. dataset.filter(lambda x: x[{col!r}].strip())"
                )


def length_stats(
    data: datasets.Dataset | datasets.DatasetDict, tokenizer: Any, *, chat_template: bool = False
) -> pd.DataFrame:
    """Token-length summary per split and task: count, mean/median/p95/max of prompt, completion and total tokens.

    Example:
        >>> from nbft.models import tiny_random
        >>> _, tok = tiny_random()
        >>> ds = datasets.Dataset.from_list([{"prompt": "ab\\n", "completion": "c", "task": "t"}])
        >>> int(length_stats(ds, tok)["total_max"].iloc[0])
        5
    """
    splits = data.items() if isinstance(data, datasets.DatasetDict) else [("data", _as_dataset(data))]
    for _, ds in splits:
        if not {"prompt", "completion"} <= set(ds.column_names):
            raise DataError(
                f"length_stats needs prompt and completion columns (it has {ds.column_names}); "
                "build the data with build_instruction_dataset() first"
            )
    rows = []
    for split_name, ds in splits:
        tasks = ds["task"] if "task" in ds.column_names else ["-"] * ds.num_rows
        for prompt, completion, task in zip(ds["prompt"], ds["completion"], tasks):
            p, c = encode_pair(tokenizer, prompt, completion, chat_template)
            rows.append(
                {"split": split_name, "task": task, "prompt": len(p), "completion": len(c), "total": len(p) + len(c)}
            )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    agg = frame.groupby(["split", "task"], sort=False)[["prompt", "completion", "total"]].agg(
        ["count", "mean", "median", lambda s: s.quantile(0.95), "max"]
    )
    agg.columns = [f"{col}_{'p95' if stat == '<lambda_0>' else stat}" for col, stat in agg.columns]
    agg = agg.rename(columns={"prompt_count": "n"}).drop(columns=["completion_count", "total_count"])
    return agg.reset_index()


# ----------------------------------------------------------------------------------------------------------------
# Export


def save_dataset(
    data: datasets.Dataset | datasets.DatasetDict,
    path: str | os.PathLike[str],
    format: str = "disk",
    *,
    overwrite: bool = False,
) -> Path:
    """Write a dataset atomically: ``"disk"`` (save_to_disk folder), ``"jsonl"`` or ``"parquet"``.

    For a DatasetDict and a file format, ``path`` is a folder with one file per split (and ``nbft-settings.json``
    when the data carries tokenization settings, :mod:`nbft.dataset_settings`). An existing file is
    replaced; an existing folder only when nbft wrote it (or with ``overwrite=True``): nothing else is deleted.

    Example:
        >>> save_dataset(datasets.Dataset.from_list([{"a": 1}]), "/tmp/nbft-doc.jsonl", "jsonl").name
        'nbft-doc.jsonl'
    """
    if format not in ("disk", "jsonl", "parquet"):
        raise DataError(f"format must be 'disk', 'jsonl' or 'parquet', not {format!r}")
    if not isinstance(data, datasets.Dataset | datasets.DatasetDict):
        raise DataError(
            f"save_dataset() writes a datasets.Dataset or DatasetDict, not a {type(data).__name__}; e.g. "
            "datasets.Dataset.from_list(rows)"
        )
    if not isinstance(path, str | os.PathLike) or not str(path).strip():
        raise DataError(f"path must be a file or folder path, not {path!r}")
    path = Path(path)
    kind = "dir" if format == "disk" or isinstance(data, datasets.DatasetDict) else "file"
    if isinstance(data, datasets.DatasetDict) and format != "disk" and path.suffix.lower() in FILE_FORMATS:
        raise DataError(
            f"a DatasetDict is written as a folder with one {format} file per split, but {path.name!r} looks like a "
            f"file name: give a folder, e.g. {path.with_suffix('')}, or save one split, e.g. "
            f"save_dataset(data['train'], {str(path)!r}, {format!r})"
        )
    if kind == "file" and path.is_dir():
        raise FileExistsError(
            f"{path} is a folder: give a file path for the {format} file, e.g. {path / ('data.' + format)}"
        )
    if isinstance(data, datasets.DatasetDict):
        for name in data:
            _check_split_name(name, path)
    from nbft._quiet import call_scope

    # datasets' "Creating json from Arrow format" / "Saving the dataset" bars would land in the notebook cell
    with call_scope(), atomic_path(path, kind=kind, overwrite=overwrite) as tmp:
        if format == "disk":
            data.save_to_disk(str(tmp))
        elif isinstance(data, datasets.DatasetDict):
            tmp.mkdir()
            for name, ds in data.items():
                _write_file(ds, tmp / f"{name}.{format}", format)
            from nbft.dataset_settings import write_saved_settings

            write_saved_settings(data, tmp)  # JSONL/Parquet keep no dataset info: the settings go beside the splits
        else:
            _write_file(data, tmp, format)
    return path


def _check_split_name(name: Any, path: Path) -> None:
    """A split name becomes a file or folder name inside ``path``: a plain name only, never a path out of it."""
    text = str(name)
    bad = (
        not text.strip()
        or text in (".", "..")
        or text.startswith(".")
        or "/" in text
        or "\\" in text
        or "\0" in text
        or (os.altsep is not None and os.altsep in text)
    )
    if bad:
        raise DataError(
            f"the DatasetDict has a split named {text!r}, which is not a plain name: its files would be written "
            f"outside {path} (or hidden). Rename the split to a plain name, e.g. "
            f"DatasetDict({{'train': data[{text!r}], ...}})"
        )


def _write_file(ds: datasets.Dataset, path: Path, format: str) -> None:
    if format == "jsonl":
        ds.to_json(str(path), lines=True, force_ascii=False)
    else:
        ds.to_parquet(str(path))


__all__ = [
    "DataError",
    "OfflineError",
    "TemplateError",
    "TruncationReport",
    "build_instruction_dataset",
    "content_hash",
    "encode_pair",
    "encode_prompt",
    "format_prompt",
    "length_stats",
    "load_hub_dataset",
    "load_source",
    "mix",
    "mix_report",
    "prepare_source",
    "render_examples",
    "save_dataset",
    "split_examples",
    "tokenize_for_training",
]
