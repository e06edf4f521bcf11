"""The IPython extension: ``%load_ext nbft`` (or ``%load_ext nbft.magics``). Thin wrappers over the public API.

- ``%nbft_models`` — known models and where each can come from (cached, Hub, offline fallback): ``model_status``.
- ``%nbft_templates [task]`` — the instruction templates: ``list_templates``.
- ``%nbft_tasks`` — the evaluation tasks: ``list_tasks``.
- ``%%nbft_template ID --target FIELD [--task TASK] [--choices a,b,c]`` — the cell body is the Jinja2 instruction;
  registers a :class:`~nbft.templates.PromptTemplate` (``register_template``, replacing one with the same id).

Example::

    %load_ext nbft
    %%nbft_template tweet/1 --target label --choices negative,neutral,positive
    Is this tweet negative, neutral or positive?
    Tweet: {{ text }}
    Answer:
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

import pandas as pd

__all__ = ["load_ipython_extension", "nbft_models", "nbft_tasks", "nbft_template", "nbft_templates"]


class _ArgumentError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse calls sys.exit on bad input, which would look like a crash in a notebook: raise a plain error instead.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(f"{self.prog}: {message}\nusage: {self.format_usage().strip()}")


def nbft_models(line: str = "") -> pd.DataFrame:
    """``%nbft_models``: a table of the known models: task type, cached, Hub reachable, offline fallback."""
    from nbft.models import KNOWN_MODELS, model_status

    return pd.DataFrame([model_status(name) for name in KNOWN_MODELS])


def nbft_templates(line: str = "") -> pd.DataFrame:
    """``%nbft_templates [task]``: id, task, target, choices and instruction of each registered template."""
    from nbft.templates import list_templates

    task = line.strip() or None
    rows = [
        {
            "id": t.id,
            "task": t.task,
            "target": t.target,
            "choices": ", ".join(t.choices) if t.choices else "",
            "instruction": t.instruction,
        }
        for t in list_templates(task)
    ]
    return pd.DataFrame(rows)


def nbft_tasks(line: str = "") -> pd.DataFrame:
    """``%nbft_tasks [--offline]``: the evaluation tasks with their headline metric and data description."""
    from nbft.evaluate import get_task, list_tasks

    offline = "--offline" in line.split()
    rows = []
    for name in list_tasks(offline_only=offline):
        task = get_task(name)
        rows.append(
            {"task": name, "template": task.template.id, "headline": task.headline_key(), "data": task.description}
        )
    return pd.DataFrame(rows)


def _template_parser() -> _Parser:
    parser = _Parser(prog="%%nbft_template", add_help=False)
    parser.add_argument("id", help="template id, by convention task/n, e.g. tweet/1")
    parser.add_argument("--target", required=True, help="the field that becomes the completion")
    parser.add_argument("--task", default=None, help="task name (default: the part of the id before '/')")
    parser.add_argument("--choices", default=None, help="comma-separated allowed answers (classification)")
    parser.add_argument("--description", default="", help="one line for people choosing a template")
    return parser


def nbft_template(line: str, cell: str) -> Any:
    """``%%nbft_template ID --target FIELD [--task T] [--choices a,b]``: register the cell as a template."""
    from nbft.templates import PromptTemplate, register_template

    args = _template_parser().parse_args(shlex.split(line))
    task = args.task or args.id.split("/", 1)[0]
    choices = tuple(c.strip() for c in args.choices.split(",") if c.strip()) if args.choices else None
    instruction = cell.strip("\n")
    if not instruction.endswith("\n"):
        instruction += "\n"  # the completion follows the prompt directly, on its own line
    template = PromptTemplate(
        args.id, task, instruction, target=args.target, choices=choices, description=args.description
    )
    return register_template(template, overwrite=True)


def load_ipython_extension(ipython: Any) -> None:
    """Register nbft's magics (called by ``%load_ext nbft`` / ``%load_ext nbft.magics``)."""
    ipython.register_magic_function(nbft_models, "line", "nbft_models")
    ipython.register_magic_function(nbft_templates, "line", "nbft_templates")
    ipython.register_magic_function(nbft_tasks, "line", "nbft_tasks")
    ipython.register_magic_function(nbft_template, "cell", "nbft_template")


def unload_ipython_extension(ipython: Any) -> None:
    """Nothing to undo beyond what IPython does: magics stay registered until the kernel restarts."""
