"""The model card (``README.md``) written next to a saved model.

The card has fixed sections (base model, data, templates, training config, final losses) and any number of extra
sections. Evaluation adds its table later with :func:`update_model_card`, which adds or replaces one ``## Title``
section of an existing card without touching the rest.

A comparison (``nbft.compare``) of a run also goes into its card as **metadata**: ``model-index``, the Hub's
evaluation-results format (:func:`eval_results`, parsed and written by ``huggingface_hub``'s own ``ModelCard``), one
entry per task (the headline metric and its Δ vs the base with the paired 95% CI) and one for forgetting (G, BWT′,
AF, worst drop), beside the prose table. :func:`record_comparison` writes both into each compared run's card.

Example:
    >>> text = render_model_card({"base_model": "tiny", "config": {"learning_rate": 1e-4}})
    >>> update_model_card_text(text, "Evaluation", "| task | score |").count("## Evaluation")
    1
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nbft._utils import atomic_path

logger = logging.getLogger(__name__)

EVALUATION = "Evaluation"
"""The card section a comparison writes (prose); its numbers also go into the ``model-index`` metadata."""


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
        if isinstance(body, CardSection) and body.eval_results:
            text = with_eval_results(text, body.eval_results, body.model_name)
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
    """Add or replace one section of ``<model_dir>/README.md`` (atomically); the hook evaluation uses. A
    :class:`CardSection` body also replaces the card's ``model-index`` metadata with its evaluation results.

    Example:
        >>> update_model_card("runs/sentiment-1/model", "Evaluation", table_markdown)  # doctest: +SKIP
    """
    path = Path(model_dir) / "README.md"
    text = path.read_text() if path.exists() else f"# {Path(model_dir).name}\n"
    text = update_model_card_text(text, title, body)
    if isinstance(body, CardSection) and body.eval_results:
        text = with_eval_results(text, body.eval_results, body.model_name)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ evaluation metadata
class CardSection(str):
    """Markdown of a card section that also carries metadata: the evaluation results (``huggingface_hub``
    ``EvalResult`` objects) that go into the card's ``model-index``. It is a ``str``, so ``Run.card_sections``
    takes it as any section, and :func:`render_model_card` writes its metadata too.

    Example::

        run.card_sections["Evaluation"] = CardSection(markdown, eval_results(results, "tuned"), "sentiment-1")
    """

    eval_results: list[Any]
    model_name: str

    def __new__(cls, text: str, eval_results: Sequence[Any] = (), model_name: str = "model") -> CardSection:
        self = super().__new__(cls, text)
        self.eval_results = list(eval_results)
        self.model_name = model_name
        return self


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else round(value, 2)


def eval_results(results: Mapping[str, Any], column: str) -> list[Any]:
    """The comparison ``results`` (``nbft.compare(...).results``) of one ``column`` (model) as the Hub's evaluation
    results: per task its headline metric in points (0-100) and, for a column other than the base, the Δ vs the
    base with its paired 95% CI; then G, BWT′, AF and the worst drop of the forgetting summary.

    Example::

        rows = eval_results(table.results, "tuned")
        rows[0].metric_type, rows[0].metric_value        # ('accuracy', 71.5)
    """
    from huggingface_hub import EvalResult

    if column not in results.get("columns", []):
        raise ValueError(f"{column!r} is not a column of this comparison; its columns: {results.get('columns')}")
    reference = results["reference"]
    out: list[Any] = []
    for task, info in results["tasks"].items():
        score = results["scores"][task].get(column)
        if score is None:
            continue
        role = {"target": "target task (trained for)", "other": "other task (forgetting)",
                "probe": "out-of-domain probe of a task's skill"}.get(info["role"])  # fmt: skip
        common = {
            "task_type": "text-generation",
            "task_name": role,
            "dataset_type": task,
            "dataset_name": info.get("description") or task,
            "dataset_split": "test",
            "dataset_args": {"n": score["n"], "template": info.get("template")},
        }
        key = score["keys"][0]
        value = _number(score["metrics"].get(key))
        if value is not None:
            out.append(EvalResult(**common, metric_type=key, metric_value=value, metric_name=f"{key} (points)"))
        for d in results["deltas"]:
            if d["task"] == task and d["model"] == column and d["metric"] == key:
                delta, lo, hi = _number(d["delta"]), _number(d["ci_low"]), _number(d["ci_high"])
                if delta is not None:
                    name = f"Δ {key} vs {reference} (points)" + (f", 95% CI [{lo}, {hi}]" if lo is not None else "")
                    out.append(EvalResult(**common, metric_type=f"delta_{key}", metric_value=delta, metric_name=name))
    target = results.get("target")
    for f in results.get("forgetting", []):
        if f["model"] != column or not f.get("n_other_tasks"):
            continue
        others = [t for t, i in results["tasks"].items() if t != target and i.get("role") != "probe"]
        common = {
            "task_type": "text-generation",
            "task_name": f"forgetting after training on {target}" if target else "forgetting",
            "dataset_type": "nbft/forgetting",
            "dataset_name": "forgetting on " + ", ".join(others),
            "dataset_split": "test",
        }
        names = {
            "G": f"G: gain on {target} (points)",
            "BWT": "BWT′: mean Δ on the other tasks (points)",
            "AF": "AF: mean drop on the other tasks (points)",
            "worst_drop": f"worst drop ({f.get('worst_task')}, points)",
        }
        for metric, name in names.items():
            value = _number(f.get(metric))
            if value is not None and (metric != "G" or target):
                out.append(EvalResult(**common, metric_type=metric, metric_value=value, metric_name=name))
    return out


def with_eval_results(text: str, results: Sequence[Any], model_name: str) -> str:
    """``text`` (a card with or without YAML metadata) with its ``model-index`` replaced by ``results``, through
    ``huggingface_hub``'s own ``ModelCard`` (the parser the Hub uses). Other metadata and the prose stay.

    Example::

        card = with_eval_results(card, eval_results(table.results, "tuned"), "sentiment-1")
    """
    from huggingface_hub import ModelCard

    card = ModelCard(text, ignore_metadata_errors=True)
    card.data.model_name = model_name
    card.data.eval_results = list(results)
    return str(card)


def _written_by_nbft(readme: Path) -> bool:
    from huggingface_hub import ModelCard

    try:
        tags = ModelCard(readme.read_text(), ignore_metadata_errors=True).data.tags or []
    except Exception:
        return False
    return "nbft" in tags


def _run_of(spec: Any) -> tuple[Any, Path | None]:
    """(a live ``Run`` or None, its run directory or None) of a model as ``compare()`` takes it."""
    if isinstance(spec, tuple) and len(spec) == 2:
        spec = spec[0]
    if hasattr(spec, "card_sections") and hasattr(spec, "run_dir"):  # a training Run handle
        return spec, Path(spec.run_dir)
    if not isinstance(spec, str | os.PathLike):
        # a model object: the folder it was loaded from may be another run's (a model tuned in place keeps its
        # base's name_or_path), so its card is never written on that guess
        return None, None
    path = Path(spec)
    if (path / "run.json").is_file():
        return None, path
    if path.name == "model" and (path.parent / "run.json").is_file():
        return None, path.parent
    return None, None  # a checkpoint, a Hub name, a folder of one's own: not a run's final model


def record_comparison(models: Mapping[str, Any], results: Mapping[str, Any], prose: str) -> list[Path]:
    """Write a comparison into the card of every compared run: ``prose`` as the ``Evaluation`` section and the
    numbers as ``model-index`` metadata; also ``<run_dir>/comparison.json`` (what ``nbft push`` renders into
    ``report.html``). A live ``Run`` keeps it in ``run.card_sections``, so a later ``run.save()`` writes it too.

    Only cards nbft wrote are changed (tagged ``nbft``); models that are not runs (a model object, a checkpoint, a
    folder of one's own) are left alone. Returns the cards written. ``nbft.compare`` calls this.

    Example::

        record_comparison({"base": base, "tuned": "runs/sentiment-1"}, table.results, model_card_section(table))
    """
    written: list[Path] = []
    for column, spec in models.items():
        if column not in results.get("columns", []):
            continue
        run, run_dir = _run_of(spec)
        if run_dir is None:
            continue
        section = CardSection(prose, eval_results(results, column), run_dir.name)
        if run is not None:
            run.card_sections[EVALUATION] = section
            if getattr(run, "status", None) in ("pending", "running"):
                continue  # still training: its save() writes the card with this section
        readme = run_dir / "model" / "README.md"
        try:
            with atomic_path(run_dir / "comparison.json") as tmp:
                tmp.write_text(json.dumps({**results, "compared_as": column}, indent=2, default=str))
            if readme.is_file() and _written_by_nbft(readme):
                update_model_card(readme.parent, EVALUATION, section)
                written.append(readme)
        except OSError as exc:  # a read-only run directory must not cost the caller the comparison itself
            logger.warning("could not record the comparison in %s: %s", run_dir, exc)
    return written
