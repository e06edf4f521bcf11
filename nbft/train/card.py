"""The model card (``README.md``) written next to a saved model.

The card has fixed sections (base model, data, templates, training config, final losses) and any number of extra
sections. Evaluation adds its table later with :func:`update_model_card`, which adds or replaces one ``## Title``
section of an existing card without touching the rest.

Example:
    >>> text = render_model_card({"base_model": "tiny", "config": {"learning_rate": 1e-4}})
    >>> update_model_card_text(text, "Evaluation", "| task | score |").count("## Evaluation")
    1
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nbft._utils import atomic_path


def render_model_card(info: Mapping[str, Any], sections: Mapping[str, str] | None = None) -> str:
    """Markdown for a fine-tuned model. ``info`` keys: base_model, data, config, final (losses), status."""
    base = info.get("base_model") or "unknown"
    data = info.get("data") or {}
    lines = [
        "---",
        "library_name: transformers",
        "tags: [nbft, full-fine-tune, instruction-tuning]",
        *([f"base_model: {base}"] if base != "unknown" else []),
        "---",
        "",
        f"# {base} — full fine-tune with nbft",
        "",
        "Every weight of the base model was updated (a full fine-tune, not an adapter). The loss was computed on",
        "completion tokens only.",
        "",
        "## Base model",
        "",
        f"`{base}`",
        "",
        "## Data",
        "",
    ]
    if data:
        lines += [
            f"- examples: {data.get('examples', '?')}, tokens: {data.get('tokens', '?')} "
            f"(of which completion tokens with a loss: {data.get('label_tokens', '?')})",
            f"- longest example: {data.get('max_length', '?')} tokens",
        ]
        if data.get("tasks"):
            lines.append("- tasks: " + ", ".join(f"{k} ({v})" for k, v in data["tasks"].items()))
        if info.get("val_data"):
            lines.append(f"- validation examples: {info['val_data'].get('examples', '?')}")
    else:
        lines.append("Not recorded.")
    lines += ["", "## Templates", ""]
    templates = data.get("template_ids") or {}
    if templates:
        lines += [f"- `{name}`: {count} examples" for name, count in templates.items()]
    else:
        lines.append("Not recorded (the training data had no `template_id` column).")
    lines += ["", "## Training configuration", "", "```json", json.dumps(info.get("config", {}), indent=2), "```"]
    final = info.get("final") or {}
    lines += ["", "## Final losses", ""]
    if final:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in final.items()]
    else:
        lines.append("Not recorded.")
    text = "\n".join(lines) + "\n"
    for title, body in (sections or {}).items():
        text = update_model_card_text(text, title, body)
    return text


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def update_model_card_text(text: str, title: str, body: str) -> str:
    """Add ``## title`` with ``body`` at the end of ``text``, or replace that section when it exists."""
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    return text.rstrip("\n") + "\n\n" + section


def update_model_card(model_dir: str | os.PathLike[str], title: str, body: str) -> Path:
    """Add or replace one section of ``<model_dir>/README.md`` (atomically); the hook evaluation uses.

    Example:
        >>> update_model_card("runs/sentiment-1/model", "Evaluation", table_markdown)  # doctest: +SKIP
    """
    path = Path(model_dir) / "README.md"
    text = path.read_text() if path.exists() else f"# {Path(model_dir).name}\n"
    with atomic_path(path) as tmp:
        tmp.write_text(update_model_card_text(text, title, body))
    return path
