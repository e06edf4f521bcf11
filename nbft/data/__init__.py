"""Building instruction datasets: load -> validate -> dedupe + split (:func:`split_examples`) -> render templates
-> (mix) -> tokenize. A built-in task's training set comes from the task's train split (``task="sentiment"``).

One job per module: :mod:`~nbft.data.loading` (your data and files), :mod:`~nbft.data.splitting` (the one split),
:mod:`~nbft.data.build` (templates rendered into prompt/completion rows), :mod:`~nbft.data.mixing` (replay),
:mod:`~nbft.data.tokenizing` (input ids and label masks) and :mod:`~nbft.data.saving`. Prompt encoding, shared with
evaluation, is :mod:`nbft.prompting`; the errors are :mod:`nbft.errors`. Every name below stays importable from
``nbft.data``.

Example:
    >>> rows = [{"text": f"review {i}", "label": ["negative", "positive"][i % 2]} for i in range(40)]
    >>> data = build_instruction_dataset(rows, "sentiment", seed=0)
    >>> sorted(data), data["train"].column_names
    (['test', 'train', 'validation'], ['prompt', 'completion', 'task', 'template_id', 'example_id'])
"""

from __future__ import annotations

# The names marked "as" are kept importable from nbft.data as before the split, outside __all__ (callers use them).
from nbft.data.build import COLUMNS as COLUMNS
from nbft.data.build import build_instruction_dataset, prepare_source, render_examples
from nbft.data.build import check_examples as check_examples
from nbft.data.loading import FILE_FORMATS as FILE_FORMATS
from nbft.data.loading import Source as Source
from nbft.data.loading import load_hub_dataset, load_source
from nbft.data.mixing import largest_remainder, mix, mix_report
from nbft.data.saving import save_dataset
from nbft.data.splitting import example_id as example_id
from nbft.data.splitting import split_examples
from nbft.data.tokenizing import TruncationReport, length_stats, tokenize_for_training
from nbft.errors import DataError, OfflineError
from nbft.hashes import content_hash
from nbft.prompting import encode_pair, encode_prompt, format_prompt
from nbft.prompting import resolve_mode as resolve_mode
from nbft.templates import TemplateError

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
    "largest_remainder",
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
