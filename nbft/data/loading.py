"""Loading your data: a DataFrame, a list of dicts, a local CSV/JSON/JSONL/Parquet file, or a Hub dataset, as a
``datasets.Dataset``, with every bad row or file named (file line, row number) and how to fix it.

Example:
    >>> load_source([{"question": "2+2?", "answer": "4"}]).num_rows
    1
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from nbft._registry import hub_reachable
from nbft.errors import DataError, OfflineError

# one logger for the whole package, named as before the split (users' logging filters and nbft._quiet name it)
logger = logging.getLogger("nbft.data")

__all__ = ["FILE_FORMATS", "Source", "load_hub_dataset", "load_source"]


FILE_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".pq": "parquet"}


Source = str | os.PathLike[str] | pd.DataFrame | Sequence[Mapping[str, Any]] | datasets.Dataset | datasets.DatasetDict


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
