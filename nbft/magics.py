"""The IPython extension: ``%load_ext nbft`` (or ``%load_ext nbft.magics``). Thin wrappers over the public API.

- ``%nbft runs [FOLDER]`` — the training runs on disk with status, step, loss and time: :func:`nbft.runs`.
- ``%nbft stop [RUN]`` — stop a run training in this kernel after its current step (a checkpoint is written).
- ``%nbft gpu`` — memory in use, the models that hold it and the names that refer to them; frees what is unused.
- ``%nbft_models`` — known models and where each can come from (cached, Hub, offline fallback): ``model_status``.
- ``%nbft_templates [task]`` — the instruction templates: ``list_templates``.
- ``%nbft_tasks [--offline]`` — the evaluation tasks: ``list_tasks``.
- ``%%nbft_template ID --target FIELD [--task TASK] [--choices a,b,c]`` — the cell body is the Jinja2 instruction;
  registers a :class:`~nbft.templates.PromptTemplate` (``register_template``, replacing one with the same id).

Every error is one line that names the fix (an IPython ``UsageError``), not a traceback.

Example (three cells; a cell magic must start its cell)::

    %load_ext nbft

    %%nbft_template tweet/1 --target label --choices negative,neutral,positive
    Is this tweet negative, neutral or positive?
    Tweet: {{ text }}
    Answer:

    %nbft_templates tweet
"""

from __future__ import annotations

import argparse
import functools
import html
import shlex
from collections.abc import Callable
from typing import Any

import pandas as pd

__all__ = [
    "load_ipython_extension",
    "nbft",
    "nbft_models",
    "nbft_tasks",
    "nbft_template",
    "nbft_templates",
]


class _ArgumentError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse calls sys.exit on bad input, which would look like a crash in a notebook: raise a plain error instead.
    def error(self, message: str) -> None:  # type: ignore[override]
        usage = self.format_usage().strip().removeprefix("usage:").strip()
        raise _ArgumentError(f"{message}. Usage: {usage}")


def _one_line_errors(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn any error of a magic into an IPython ``UsageError``: one line (no traceback) that names the fix."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def magic(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                from IPython.core.error import UsageError

                text = " ".join(str(exc).split()) or type(exc).__name__
                raise UsageError(f"{name}: {text}") from None

        return magic

    return wrap


# ------------------------------------------------------------------------------------------------ %nbft
class _Report:
    """Several titled tables, shown as HTML in a notebook and as text in a terminal."""

    def __init__(self, parts: list[tuple[str, Any]]) -> None:
        self.parts = parts

    def _repr_html_(self) -> str:
        out = []
        for title, value in self.parts:
            body = value.to_html(index=False) if isinstance(value, pd.DataFrame) else html.escape(str(value))
            out.append(f"<b>{html.escape(title)}</b>{body}")
        return "".join(out)

    def __repr__(self) -> str:
        return "\n\n".join(
            f"{title}\n{value.to_string(index=False) if isinstance(value, pd.DataFrame) else value}"
            for title, value in self.parts
        )


def _runs(args: list[str], shell: Any) -> Any:
    from nbft.run_dirs import runs

    if len(args) > 1:
        raise _ArgumentError("takes at most one folder. Usage: %nbft runs [FOLDER]")
    return runs(args[0] if args else "runs")


class _Message(str):
    """Plain text shown without quotes as a cell's result."""

    def __repr__(self) -> str:
        return str(self)


def _stop(args: list[str], shell: Any) -> str:
    from nbft.run_dirs import stop_run

    if len(args) > 1:
        raise _ArgumentError("takes at most one run. Usage: %nbft stop [RUN]")
    run = stop_run(args[0] if args else None)
    return _Message(f"stopping {run.run_dir}: the current step finishes, then a checkpoint is written")


def _gpu(args: list[str], shell: Any) -> _Report:
    from nbft.run_dirs import free_memory, memory_report

    if args:
        raise _ArgumentError("takes no arguments. Usage: %nbft gpu")
    namespace = getattr(shell, "user_ns", {}) if shell is not None else {}
    models = memory_report(namespace)
    freed = free_memory()  # after the caller dropped references: returns the cached blocks to the driver
    before, after = pd.DataFrame(freed["before"]), pd.DataFrame(freed["after"])
    memory = before.merge(after, on="device", suffixes=(" before", " after"))
    hint = (
        "To free a model: panel.close() for a panel holding it, `del` every name in held_by, then %nbft gpu again."
        if len(models)
        else "No model is in memory."
    )
    return _Report([("Memory (freed what nothing refers to)", memory), ("Models in memory", models), ("", hint)])


_SUBCOMMANDS: dict[str, tuple[Callable[[list[str], Any], Any], str]] = {
    "runs": (_runs, "runs [FOLDER]    the training runs on disk (default folder: runs)"),
    "stop": (_stop, "stop [RUN]       stop a run training in this kernel (RUN: its folder, if several run)"),
    "gpu": (_gpu, "gpu              memory in use, the models holding it, and free what is unused"),
}


@_one_line_errors("%nbft")
def nbft(line: str = "", shell: Any = None) -> Any:
    """``%nbft runs [FOLDER]`` · ``%nbft stop [RUN]`` · ``%nbft gpu``."""
    args = shlex.split(line)
    if not args or args[0] in ("help", "-h", "--help"):
        return _Message("\n".join(f"%nbft {usage}" for _, usage in _SUBCOMMANDS.values()))
    command, rest = args[0], args[1:]
    if command not in _SUBCOMMANDS:
        from nbft._utils import did_you_mean

        raise _ArgumentError(
            f"no subcommand {command!r}.{did_you_mean(command, _SUBCOMMANDS)} Use one of: "
            + ", ".join(f"%nbft {c}" for c in _SUBCOMMANDS)
        )
    return _SUBCOMMANDS[command][0](rest, shell)


# ------------------------------------------------------------------------------------------------ listings
@_one_line_errors("%nbft_models")
def nbft_models(line: str = "") -> pd.DataFrame:
    """``%nbft_models``: a table of the known models: task type, cached, Hub reachable, offline fallback."""
    from nbft.models import KNOWN_MODELS, model_status

    if line.strip():
        raise _ArgumentError("takes no arguments. Usage: %nbft_models")
    return pd.DataFrame([model_status(name) for name in KNOWN_MODELS])


@_one_line_errors("%nbft_templates")
def nbft_templates(line: str = "") -> pd.DataFrame:
    """``%nbft_templates [task]``: id, task, target, choices and instruction of each registered template."""
    from nbft.templates import list_templates

    parts = shlex.split(line)
    if len(parts) > 1:
        raise _ArgumentError("takes at most one task name. Usage: %nbft_templates [TASK]")
    rows = [
        {
            "id": t.id,
            "task": t.task,
            "target": t.target,
            "choices": ", ".join(t.choices) if t.choices else "",
            "instruction": t.instruction,
        }
        for t in list_templates(parts[0] if parts else None)
    ]
    return pd.DataFrame(rows)


@_one_line_errors("%nbft_tasks")
def nbft_tasks(line: str = "") -> pd.DataFrame:
    """``%nbft_tasks [--offline]``: the evaluation tasks with their headline metric and data description."""
    from nbft.evaluate import get_task, list_tasks

    parts = shlex.split(line)
    if any(p != "--offline" for p in parts):
        raise _ArgumentError("the only option is --offline. Usage: %nbft_tasks [--offline]")
    rows = []
    for name in list_tasks(offline_only="--offline" in parts):
        task = get_task(name)
        rows.append(
            {"task": name, "template": task.template.id, "headline": task.headline_key(), "data": task.description}
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ %%nbft_template
def _template_parser() -> _Parser:
    parser = _Parser(prog="%%nbft_template", add_help=False)
    parser.add_argument("id", help="template id, by convention task/n, e.g. tweet/1")
    parser.add_argument("--target", required=True, help="the field that becomes the completion")
    parser.add_argument("--task", default=None, help="task name (default: the part of the id before '/')")
    parser.add_argument("--choices", default=None, help="comma-separated allowed answers (classification)")
    parser.add_argument("--description", default="", help="one line for people choosing a template")
    return parser


@_one_line_errors("%%nbft_template")
def nbft_template(line: str, cell: str) -> Any:
    """``%%nbft_template ID --target FIELD [--task T] [--choices a,b]``: register the cell as a template."""
    from nbft.templates import PromptTemplate, register_template

    args = _template_parser().parse_args(shlex.split(line))
    task = args.task or args.id.split("/", 1)[0]
    choices = tuple(c.strip() for c in args.choices.split(",") if c.strip()) if args.choices else None
    instruction = cell.strip("\n")
    if not instruction.strip():
        raise _ArgumentError("the cell is empty: write the instruction below the magic line, e.g. 'Answer: {{ q }}'")
    if not instruction.endswith("\n"):
        instruction += "\n"  # the completion follows the prompt directly, on its own line
    template = PromptTemplate(
        args.id, task, instruction, target=args.target, choices=choices, description=args.description
    )
    return register_template(template, overwrite=True)


# ------------------------------------------------------------------------------------------------ loading
def load_ipython_extension(ipython: Any) -> None:
    """Register nbft's magics (called by ``%load_ext nbft`` / ``%load_ext nbft.magics``)."""

    @functools.wraps(nbft)
    def nbft_magic(line: str = "") -> Any:
        return nbft(line, ipython)  # %nbft gpu reads the notebook's names to say which ones hold a model

    ipython.register_magic_function(nbft_magic, "line", "nbft")
    ipython.register_magic_function(nbft_models, "line", "nbft_models")
    ipython.register_magic_function(nbft_templates, "line", "nbft_templates")
    ipython.register_magic_function(nbft_tasks, "line", "nbft_tasks")
    ipython.register_magic_function(nbft_template, "cell", "nbft_template")


def unload_ipython_extension(ipython: Any) -> None:
    """Nothing to undo beyond what IPython does: magics stay registered until the kernel restarts."""
