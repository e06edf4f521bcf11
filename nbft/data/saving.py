"""Saving a dataset: ``save_to_disk``, JSONL or Parquet, written atomically, never over what nbft did not write.

Example::

    save_dataset(data, "runs/data/sentiment", "jsonl")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets

from nbft._utils import atomic_path
from nbft.data.loading import FILE_FORMATS
from nbft.errors import DataError

__all__ = ["save_dataset"]


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
