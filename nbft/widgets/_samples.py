"""Live samples: the monitor's fixed prompts per task, the base model's answer and the answer now, word-diffed.

A pure function of the history (the rows a :class:`~nbft.evaluate.monitor.ForgettingMonitor` writes), like the
figures, so a panel can draw it again at any time and leave it in the saved notebook.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["samples_html"]

_CELL = "padding:3px 8px;vertical-align:top;text-align:left;border-top:1px solid #d0d7de"


def _sample_rows(history: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    rows = [h for h in history if h.get("kind") == "monitor" and isinstance(h.get("samples"), Mapping)]
    if not rows:
        return None, None
    base = next((r for r in rows if r.get("step") == 0), rows[0])
    return base, rows[-1]


def samples_html(history: Sequence[Mapping[str, Any]], *, max_input: int = 160) -> str:
    """An HTML table: per task and fixed prompt, the base model's answer, the answer at the latest monitor point
    with a word diff against the base (removed words struck through in red, added words in green), and the reference.

    Returns ``""`` when the history has no samples.

    Example:
        >>> row = lambda step, out: {"kind": "monitor", "step": step, "samples": {"qa": [
        ...     {"input": "Who?", "output": out, "reference": "Ada"}]}}
        >>> "<ins" in samples_html([row(0, "Ada Lovelace"), row(10, "Ada King")])
        True
    """
    from nbft.report import word_diff_html

    base, now = _sample_rows(history)
    if now is None or base is None:
        return ""
    step = now.get("step")
    head = (
        f"<tr><th style='{_CELL}'>task</th><th style='{_CELL}'>prompt</th><th style='{_CELL}'>base model</th>"
        f"<th style='{_CELL}'>step {html.escape(str(step))} (diff vs base)</th><th style='{_CELL}'>reference</th></tr>"
    )
    body = []
    for task, samples in now["samples"].items():
        before = base["samples"].get(task, [])
        for i, sample in enumerate(samples):
            text = str(sample.get("input", ""))
            short = text if len(text) <= max_input else text[: max_input - 1] + "…"
            base_out = str(before[i].get("output", "")) if i < len(before) else ""
            out = str(sample.get("output", ""))
            diff = word_diff_html(base_out, out) if out != base_out else html.escape(out) + " <i>(unchanged)</i>"
            body.append(
                f"<tr><td style='{_CELL}'>{html.escape(str(task)) if i == 0 else ''}</td>"
                f"<td style='{_CELL}' title='{html.escape(text, quote=True)}'>{html.escape(short)}</td>"
                f"<td style='{_CELL}'>{html.escape(base_out) or '<i>(empty)</i>'}</td>"
                f"<td style='{_CELL}'>{diff or '<i>(empty)</i>'}</td>"
                f"<td style='{_CELL}'>{html.escape(str(sample.get('reference', '')))}</td></tr>"
            )
    caption = (
        "<caption style='caption-side:top;text-align:left;font-weight:bold;padding-bottom:4px'>Live samples: the "
        "same prompts at every monitor point, greedy</caption>"
    )
    return (
        "<div class='nbft-samples' style='overflow-x:auto;font-size:12px'><table style='border-collapse:collapse'>"
        f"{caption}{head}{''.join(body)}</table></div>"
    )
