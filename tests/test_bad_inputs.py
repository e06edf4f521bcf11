"""A catalogue of bad inputs: each one gets a clear error that names the problem and the fix (or, where the input is
merely unusual, the right result), is raised by nbft itself (never a raw exception from deep in a library), and
leaves every file as it was: nothing written, nothing deleted.

Each case runs in a fresh workspace holding a user's files (a folder of exports, a data file, an unrelated run); the
tree is compared before and after. CLI cases run ``nbft ...`` in-process: exit code 2 and one line on stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest
from _train_data import records

import nbft
from nbft import report
from nbft._registry import RegistryError, wheel_member
from nbft.config import DataConfig, EvalConfig, TrainConfig
from nbft.data import DataError, build_instruction_dataset, mix, save_dataset, tokenize_for_training
from nbft.evaluate import Task, TaskError
from nbft.models import ModelNotFoundError, tiny_random
from nbft.sources import SourceUnavailableError
from nbft.templates import PromptTemplate, TemplateError
from nbft.train import finetune, resume
from nbft.train.lock import RunInUseError, RunLock

NBFT_ROOT = Path(nbft.__file__).resolve().parent


@dataclasses.dataclass
class Case:
    area: str
    name: str
    run: Callable[[Path], Any]
    """Called with the workspace folder."""
    error: type[BaseException] | tuple[type[BaseException], ...] | None
    """The error class; ``None``: the call succeeds (an unusual input with a correct result) and ``check`` holds."""
    says: str = ""
    """A regex the message must match: it names the problem and the fix."""
    check: Callable[[Any, Path], None] | None = None
    writes: tuple[str, ...] = ()
    """Workspace paths the call may create (everything else must stay exactly as it was)."""

    @property
    def outcome(self) -> str:
        return "correct behaviour" if self.error is None else "clear error"


# ------------------------------------------------------------------------------------------------ shared inputs

_TINY: dict[str, Any] = {}


def tiny(arch: str = "llama") -> tuple[Any, Any]:
    if arch not in _TINY:
        _TINY[arch] = tiny_random(arch)
    return _TINY[arch]


def fresh() -> tuple[Any, Any]:
    return tiny_random("llama")  # a new object: a case that trains must not touch the shared one


QA = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(30)]
SENT = [{"text": f"review number {i}", "label": ["negative", "positive"][i % 2]} for i in range(30)]


def pairs(n: int = 8) -> datasets.Dataset:
    return datasets.Dataset.from_list(records(n))


def qa_rows(**change: Any) -> list[dict[str, Any]]:
    rows = [dict(r) for r in QA]
    for key, value in change.items():
        rows[3][key] = value
    return rows


_MADE: list[tuple[Path, dict[str, tuple[int, int]]]] = []
"""What a case set up for itself (an input file, a copied run), with its tree at that moment."""


def settled(path: Path) -> Path:
    """The case has finished preparing ``path`` (e.g. damaged a copied run on purpose): snapshot it now."""
    _MADE[:] = [(p, t) for p, t in _MADE if p != path]
    _MADE.append((path, _tree(path)))
    return path


def file(ws: Path, name: str, content: str | bytes) -> str:
    path = ws / "inputs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    _MADE.append((path, _tree(path)))
    return str(path)


def cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(**{"max_steps": 1, "batch_size": 4, "precision": "fp32", **kw})


_RUNS: dict[str, Path] = {}


def run_copy(ws: Path, kind: str) -> Path:
    """A copy of a tiny run in the workspace: ``"stopped"`` (checkpoints at steps 1-2 of 4) or ``"completed"``."""
    if kind not in _RUNS:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="nbft-bad-inputs-"))
        model, tok = fresh()

        class StopAt2:
            def on_step(self, state):
                if state.step == 2:
                    raise nbft.StopTraining

        observers = [StopAt2()] if kind == "stopped" else []
        finetune(
            model, tok, records(8), config=cfg(max_steps=4, save_every=1), run_dir=root / kind, observers=observers
        )
        _RUNS[kind] = root / kind
    target = ws / "runs" / kind
    shutil.copytree(_RUNS[kind], target)
    _MADE.append((target, _tree(target)))
    return target


def cli(*args: str) -> tuple[int, str]:
    from nbft.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own exit
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


def refused_by_cli(says: str) -> Callable[[Any, Path], None]:
    def check(result: tuple[int, str], ws: Path) -> None:
        code, err = result
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2, err
        assert len(lines) == 1 and "Traceback" not in err, err
        assert re.search(says, lines[0]), lines[0]

    return check


def magic(name: str, line: str, cell: str | None = None) -> Any:
    import nbft.magics as magics

    func = getattr(magics, name)
    return func(line) if cell is None else func(line, cell)


# ------------------------------------------------------------------------------------------------ the catalogue

E = re.escape
CASES: list[Case] = []


def case(area: str, name: str, run: Callable[[Path], Any], error: Any, says: str = "", **kw: Any) -> None:
    CASES.append(Case(area, name, run, error, says, **kw))


# --- data: sources and files
case(
    "data",
    "malformed JSONL line",
    lambda ws: build_instruction_dataset(
        file(ws, "bad.jsonl", '{"question": "a", "answer": "b"}\n{"question": "c", "answer": \n'), "qa"
    ),
    DataError,
    r"line 2 is not valid JSON .*fix or remove that line",
)
case(
    "data",
    "ragged CSV row",
    lambda ws: build_instruction_dataset(file(ws, "ragged.csv", "question,answer\na,b\nc,d,e,f\n"), "qa"),
    DataError,
    r"line 3 has 4 fields but the header has 2 .*quote fields",
)
case(
    "data",
    "latin-1 CSV",
    lambda ws: build_instruction_dataset(file(ws, "latin.csv", "question,answer\ncaf\xe9,b\n".encode("latin-1")), "qa"),
    DataError,
    r"line 2 is not UTF-8 .*latin-1.*Re-save it as UTF-8",
)
case(
    "data",
    "latin-1 JSONL",
    lambda ws: build_instruction_dataset(
        file(ws, "latin.jsonl", '{"question": "caf\xe9", "answer": "b"}\n'.encode("latin-1")), "qa"
    ),
    DataError,
    r"line 1 is not UTF-8 .*Re-save it as UTF-8",
)
case(
    "data",
    "empty file",
    lambda ws: build_instruction_dataset(file(ws, "empty.jsonl", ""), "qa"),
    DataError,
    r"is empty; check the export",
)
case(
    "data",
    "JSONL line that is not an object",
    lambda ws: build_instruction_dataset(file(ws, "list.jsonl", '{"question": "a", "answer": "b"}\n[1, 2]\n'), "qa"),
    DataError,
    r"line 2 is a JSON list, not an object",
)
case(
    "data",
    "garbage parquet",
    lambda ws: build_instruction_dataset(file(ws, "x.parquet", b"\0junk"), "qa"),
    DataError,
    r"could not read .*x.parquet as parquet: it is not a readable Parquet file .*to_parquet",
)
case(
    "data",
    "unsupported file type",
    lambda ws: build_instruction_dataset(file(ws, "x.txt", "hi"), "qa"),
    DataError,
    r"unsupported file type '.txt'.*use one of .csv",
)
case(
    "data",
    "missing file",
    lambda ws: build_instruction_dataset(str(ws / "nope.jsonl"), "qa"),
    DataError,
    r"file not found: .*nope.jsonl",
)
case(
    "data",
    "a folder that is not a saved dataset",
    lambda ws: build_instruction_dataset(str(ws / "exports"), "qa"),
    DataError,
    r"is a folder but not one written by save_to_disk",
)
case(
    "data",
    "None in an input field",
    lambda ws: build_instruction_dataset(qa_rows(question=None), "qa"),
    TemplateError,
    r"row 4 of the data: .*field 'question' is missing \(None\).*dataset.filter",
)
case(
    "data",
    "NaN in a DataFrame field",
    lambda ws: build_instruction_dataset(pd.DataFrame(qa_rows(question=math.nan)), "qa"),
    TemplateError,
    r"row 4 .*'question' is missing",
)
case(
    "data",
    "None target",
    lambda ws: build_instruction_dataset(qa_rows(answer=None), "qa"),
    TemplateError,
    r"row 4 .*target field 'answer' is missing.*drop or fill",
)
case(
    "data",
    "NaN target in a DataFrame",
    lambda ws: build_instruction_dataset(pd.DataFrame(qa_rows(answer=math.nan)), "qa"),
    TemplateError,
    r"row 4 .*'answer' is missing",
)
case(
    "data",
    "nested column (dict)",
    lambda ws: build_instruction_dataset(
        [{"question": {"text": r["question"]}, "answer": r["answer"]} for r in QA], "qa"
    ),
    TemplateError,
    r"row 1 .*nested record.*flatten the column",
)
case(
    "data",
    "list column",
    lambda ws: build_instruction_dataset(
        [{"question": r["question"].split(), "answer": r["answer"]} for r in QA], "qa"
    ),
    TemplateError,
    r"is a list .*join it into text first",
)
case(
    "data",
    "empty input field",
    lambda ws: build_instruction_dataset(qa_rows(question="  "), "qa"),
    TemplateError,
    r"row 4 .*every input field is empty.*fill or drop",
)
case(
    "data",
    "whitespace completions",
    lambda ws: build_instruction_dataset([{**r, "answer": " "} for r in QA], "qa"),
    DataError,
    r"30 of 30 examples have an empty completion .*rows 1, 2",
)
case(
    "data",
    "missing column",
    lambda ws: build_instruction_dataset([{"q": r["question"], "answer": r["answer"]} for r in QA], "qa"),
    TemplateError,
    r"needs the field 'question'.*pass columns=",
)
case(
    "data",
    "label outside the choices",
    lambda ws: build_instruction_dataset([{**r, "label": "great"} for r in SENT], "sentiment"),
    TemplateError,
    r"'great'.*not one of .*with_labels",
)
case(
    "data",
    "integer labels",
    lambda ws: build_instruction_dataset([{**r, "label": i % 2} for i, r in enumerate(SENT)], "sentiment"),
    TemplateError,
    r"holds int values.*with_labels",
)
case("data", "no examples", lambda ws: build_instruction_dataset([], "qa"), DataError, r"no examples")
case("data", "a list of strings", lambda ws: build_instruction_dataset(["a", "b"], "qa"), DataError, r"must hold dicts")
case(
    "data",
    "a number as source",
    lambda ws: build_instruction_dataset(5, "qa"),
    DataError,
    r"cannot load examples from a int; pass .*file path",
)
case(
    "data",
    "split that does not sum to 1",
    lambda ws: build_instruction_dataset(QA, "qa", split=(1, 1, 0)),
    ValueError,
    r"summing to 1.*\(0.8, 0.1, 0.1\)",
)
case(
    "data",
    "NaN in split",
    lambda ws: build_instruction_dataset(QA, "qa", split=(math.nan, 0.5, 0.5)),
    ValueError,
    r"DataConfig.split must be a finite number",
)
case(
    "data",
    "seed as text",
    lambda ws: build_instruction_dataset(QA, "qa", seed="0"),
    None,
    check=lambda r, ws: r["train"].num_rows == build_instruction_dataset(QA, "qa", seed=0)["train"].num_rows,
)
case(
    "data",
    "fractional seed",
    lambda ws: build_instruction_dataset(QA, "qa", seed=1.5),
    DataError,
    r"seed must be an integer >= 0 .*seed=0",
)
case(
    "data",
    "seed None",
    lambda ws: build_instruction_dataset(QA, "qa", seed=None),
    DataError,
    r"seed must be an integer >= 0 \(got None\)",
)
case("data", "n=0", lambda ws: build_instruction_dataset(QA, "qa", n=0), DataError, r"n must be a positive integer")
case("data", "negative n", lambda ws: build_instruction_dataset(QA, "qa", n=-1), DataError, r"n=800")
case(
    "data",
    "n as text",
    lambda ws: build_instruction_dataset(QA, "qa", n="5"),
    None,
    check=lambda r, ws: r["train"].num_rows == 5,
)
case(
    "data",
    "max_examples=0",
    lambda ws: build_instruction_dataset(QA, "qa", max_examples=0),
    DataError,
    r"max_examples must be a positive integer",
)
case(
    "data",
    "columns= as a list",
    lambda ws: build_instruction_dataset(QA, "qa", columns=["question"]),
    DataError,
    r"columns= must be a dict .*\{'text': 'review'\}",
)
case(
    "data",
    "columns= naming a missing column",
    lambda ws: build_instruction_dataset(QA, "qa", columns={"question": "nope"}),
    DataError,
    r"columns= names \['nope'\].*it has",
)
case(
    "data",
    "templates= a number",
    lambda ws: build_instruction_dataset(QA, 5),
    DataError,
    r"templates= must be a template id",
)
case("data", "templates= missing", lambda ws: build_instruction_dataset(QA), DataError, r"templates= is needed")
case(
    "data",
    "task= a number",
    lambda ws: build_instruction_dataset(task=5),
    DataError,
    r"task= must be a built-in task name",
)
case(
    "data",
    "misspelt built-in task",
    lambda ws: build_instruction_dataset(task="sentimnt"),
    LookupError,
    r"Did you mean 'sentiment'",
)
case(
    "data",
    "a duplicate-only source keeps one example",
    lambda ws: build_instruction_dataset([QA[0]] * 20, "qa"),
    None,
    check=lambda r, ws: sum(s.num_rows for s in r.values()) == 1,
)
case(
    "data",
    "numbers in a text field render as text",
    lambda ws: build_instruction_dataset([{"question": i, "answer": str(i)} for i in range(30)], "qa"),
    None,
    check=lambda r, ws: all(p.strip() for p in r["train"]["prompt"]),
)
case(
    "data",
    "save_dataset into a user's folder",
    lambda ws: save_dataset(pairs(), ws / "exports", "jsonl"),
    FileExistsError,
    r"exports is a folder: give a file path .*data.jsonl",
)
case(
    "data",
    "save_dataset(disk) over a user's folder",
    lambda ws: save_dataset(pairs(), ws / "exports", "disk"),
    FileExistsError,
    r"did not write.*overwrite=True",
)
case(
    "data",
    "save_dataset of a list",
    lambda ws: save_dataset(records(4), ws / "out.jsonl", "jsonl"),
    DataError,
    r"writes a datasets.Dataset.*from_list",
)
case(
    "data",
    "save_dataset bad format",
    lambda ws: save_dataset(pairs(), ws / "out.csv", "csv"),
    DataError,
    r"format must be 'disk', 'jsonl' or 'parquet'",
)
case(
    "data",
    "save_dataset replaces its own file",
    lambda ws: [save_dataset(pairs(), ws / "out.jsonl", "jsonl"), save_dataset(pairs(3), ws / "out.jsonl", "jsonl")],
    None,
    writes=("out.jsonl",),
    check=lambda r, ws: len((ws / "out.jsonl").read_text().splitlines()) == 3,
)

case(
    "data",
    "CSV separated by semicolons",
    lambda ws: build_instruction_dataset(file(ws, "semi.csv", "question;answer\na;b\nc;d\n"), "qa"),
    DataError,
    r"fields seem separated by ';'.*pd.read_csv\(path, sep=';'\)",
)
case(
    "data",
    "a JSON array of numbers",
    lambda ws: build_instruction_dataset(file(ws, "nums.json", "[1, 2, 3]"), "qa"),
    DataError,
    r"item 1 of its JSON array is a int, not an object",
)
case(
    "data",
    "JSON columns of different lengths",
    lambda ws: build_instruction_dataset(file(ws, "cols.json", '{"question": ["a", "b"], "answer": ["c"]}'), "qa"),
    DataError,
    r"columns have different lengths",
)
case(
    "data",
    "a column-oriented JSON file is read as rows",
    lambda ws: build_instruction_dataset(
        file(ws, "cols.json", json.dumps({k: [r[k] for r in QA] for k in ("question", "answer")})), "qa"
    ),
    None,
    check=lambda r, ws: sum(s.num_rows for s in r.values()) == 30,
)
case(
    "data",
    "records under one key of a JSON file are read",
    lambda ws: build_instruction_dataset(file(ws, "wrapped.json", json.dumps({"data": QA})), "qa"),
    None,
    check=lambda r, ws: sum(s.num_rows for s in r.values()) == 30,
)
case(
    "data",
    "a CSV with a byte-order mark",
    lambda ws: build_instruction_dataset(
        file(
            ws, "bom.csv", b"\xef\xbb\xbf" + ("question,answer\n" + "".join(f"q{i},a{i}\n" for i in range(20))).encode()
        ),
        "qa",
    ),
    None,
    check=lambda r, ws: sum(s.num_rows for s in r.values()) == 20,
)
case(
    "data",
    "length_stats of raw rows",
    lambda ws: nbft.data.length_stats(datasets.Dataset.from_list(QA), tiny()[1]),
    DataError,
    r"needs prompt and completion columns .*build_instruction_dataset",
)

case(
    "data",
    "save_dataset of a DatasetDict to a file name",
    lambda ws: save_dataset(datasets.DatasetDict({"train": pairs()}), ws / "all.jsonl", "jsonl"),
    DataError,
    r"written as a folder with one jsonl file per split.*save one split",
)

# --- templates
case(
    "templates",
    "Jinja syntax error",
    lambda ws: PromptTemplate("x/1", "x", "{{ a ", target="b"),
    TemplateError,
    r"syntax error on line 1",
)
case(
    "templates",
    "unknown filter",
    lambda ws: PromptTemplate("x/1", "x", "{{ a | nope }}", target="b"),
    TemplateError,
    r"does not compile: No filter named 'nope'",
)
case(
    "templates",
    "target shown in the prompt",
    lambda ws: PromptTemplate("x/1", "x", "{{ b }}", target="b"),
    TemplateError,
    r"shows its target field 'b'",
)
case(
    "templates",
    "id not text",
    lambda ws: PromptTemplate(5, "x", "{{ a }}", target="b"),
    TemplateError,
    r"PromptTemplate.id must be a non-empty text",
)
case(
    "templates",
    "instruction None",
    lambda ws: PromptTemplate("x/1", "x", None, target="b"),
    TemplateError,
    r"instruction must be a non-empty text",
)
case(
    "templates",
    "empty target",
    lambda ws: PromptTemplate("x/1", "x", "{{ a }}", target=""),
    TemplateError,
    r"target must be a non-empty text",
)
case(
    "templates",
    "choices given as one string",
    lambda ws: PromptTemplate("x/1", "x", "{{ a }}", "b", choices="yes"),
    TemplateError,
    r"choices must be a list of texts, not one text 'yes'; e.g. choices=\['yes'\]",
)
case(
    "templates",
    "label_map values outside choices",
    lambda ws: PromptTemplate("x/1", "x", "{{ a }}", "b", choices=("no",), label_map={0: "yes"}),
    TemplateError,
    r"not in choices",
)
case(
    "templates",
    "template renders an empty prompt",
    lambda ws: build_instruction_dataset(
        [{"a": "", "b": f"c{i}"} for i in range(20)], PromptTemplate("x/1", "x", "{{ a }}", target="b")
    ),
    TemplateError,
    r"row 1 .*renders an empty prompt",
)
case(
    "templates",
    "sandboxed: no attribute escape",
    lambda ws: PromptTemplate("x/1", "x", "{{ a.__class__.__mro__ }}", target="b").render({"a": "s"}),
    TemplateError,
    r"unsafe",
)
case(
    "templates",
    "undefined attribute",
    lambda ws: PromptTemplate("x/1", "x", "{{ a.nope }}", target="b").render({"a": "s"}),
    TemplateError,
    r"failed to render: .*no attribute 'nope'",
)
case(
    "templates",
    "misspelt template id",
    lambda ws: nbft.get_template("sentimnt/1"),
    LookupError,
    r"Did you mean 'sentiment/1'",
)
case("templates", "unknown template task", lambda ws: nbft.list_templates("qaa"), LookupError, r"Did you mean 'qa'")
case(
    "templates",
    "registering an id twice",
    lambda ws: nbft.templates.register_template(nbft.get_template("qa/1")),
    TemplateError,
    r"already registered; pass overwrite=True",
)
case("templates", "no templates", lambda ws: build_instruction_dataset(QA, []), TemplateError, r"no templates given")
case(
    "templates",
    "several tasks' templates for one source",
    lambda ws: build_instruction_dataset(QA, ["qa/1", "sentiment/1"]),
    (DataError, TemplateError),
    r"pass task=|needs the field",
)

# --- mixing
_A = datasets.Dataset.from_dict({"prompt": [f"a{i}" for i in range(10)], "completion": ["x"] * 10, "task": ["a"] * 10})
_B = datasets.Dataset.from_dict({"prompt": [f"b{i}" for i in range(10)], "completion": ["y"] * 10, "task": ["b"] * 10})
case("mixing", "a list instead of a dict", lambda ws: mix([_A, _B]), DataError, r"takes a dict \{task name: dataset\}")
case("mixing", "no datasets", lambda ws: mix({}), DataError, r"needs at least one task dataset")
case(
    "mixing",
    "negative ratio",
    lambda ws: mix({"a": _A, "b": _B}, {"a": -1, "b": 2}),
    DataError,
    r"non-negative with a positive sum",
)
case(
    "mixing",
    "NaN ratio",
    lambda ws: mix({"a": _A, "b": _B}, {"a": math.nan, "b": 1}),
    DataError,
    r"ratios\['a'\] must be a finite number",
)
case("mixing", "infinite ratio", lambda ws: mix({"a": _A, "b": _B}, {"a": math.inf, "b": 1}), DataError, r"finite")
case(
    "mixing",
    "ratio for an unknown task",
    lambda ws: mix({"a": _A, "b": _B}, {"c": 1}),
    DataError,
    r"ratios name \['c'\]",
)
case("mixing", "replay of 1", lambda ws: mix({"a": _A, "b": _B}, replay=1.0), DataError, r"replay must be in \[0, 1\)")
case("mixing", "replay NaN", lambda ws: mix({"a": _A, "b": _B}, replay=math.nan), DataError, r"finite number")
case("mixing", "total=0", lambda ws: mix({"a": _A, "b": _B}, total=0), DataError, r"total=1000")
case("mixing", "fractional total", lambda ws: mix({"a": _A, "b": _B}, total=5.5), DataError, r"positive integer")
case(
    "mixing",
    "total larger than the data",
    lambda ws: mix({"a": _A, "b": _B}, total=10**6),
    DataError,
    r"lower total \(at most 20",
)
case("mixing", "an empty part", lambda ws: mix({"a": _A, "b": _B.select([])}), DataError, r"'b' is empty")
case(
    "mixing",
    "a part that is not a dataset",
    lambda ws: mix({"a": _A, "b": [1]}),
    DataError,
    r"'b' is a list, not a datasets.Dataset",
)
case("mixing", "ratios as a list", lambda ws: mix({"a": _A, "b": _B}, [0.5, 0.5]), DataError, r"ratios= must be a dict")
case("mixing", "seed as text", lambda ws: mix({"a": _A, "b": _B}, seed="1"), None, check=lambda r, ws: r.num_rows == 20)
case(
    "mixing",
    "a part without a task column gets its key",
    lambda ws: mix({"a": _A.remove_columns("task"), "b": _B}),
    None,
    check=lambda r, ws: set(r["task"]) == {"a", "b"},
)


def _warned(fn: Callable[[], Any], logger: str = "nbft") -> list[str]:
    """Run ``fn`` and return the warnings nbft logged meanwhile."""
    import logging

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                seen.append(record.getMessage())

    handler, log = Keep(), logging.getLogger(logger)
    log.addHandler(handler)
    try:
        fn()
    finally:
        log.removeHandler(handler)
    return seen


_QA_BUILT = build_instruction_dataset(QA, "qa")["train"]
case(
    "mixing",
    "the same examples under two names are trained twice: said",
    lambda ws: _warned(lambda: mix({"qa": _QA_BUILT, "qa-again": _QA_BUILT})),
    None,
    check=lambda r, ws: any("both in 'qa' and 'qa-again'" in m for m in r),
)
case(
    "mixing",
    "a name that differs from the data's task: said",
    lambda ws: _warned(lambda: mix({"sentiment": _QA_BUILT, "b": _B})),
    None,
    check=lambda r, ws: any("under 'sentiment' is task 'qa'" in m for m in r),
)

# --- tokenization
case(
    "tokenization",
    "max_length=0",
    lambda ws: tokenize_for_training(pairs(), tiny()[1], max_length=0),
    DataError,
    r"max_length must be an integer >= 2 .*room for the end of the prompt and the EOS",
)
case(
    "tokenization",
    "negative max_length",
    lambda ws: tokenize_for_training(pairs(), tiny()[1], max_length=-3),
    DataError,
    r"max_length=512",
)
case(
    "tokenization",
    "max_length None",
    lambda ws: tokenize_for_training(pairs(), tiny()[1], max_length=None),
    DataError,
    r"max_length must be an integer",
)
case(
    "tokenization",
    "fractional max_length",
    lambda ws: tokenize_for_training(pairs(), tiny()[1], max_length=6.5),
    DataError,
    r"got 6.5",
)


def _keeps_cue_and_eos(ds: datasets.Dataset, ws: Path) -> None:
    tok = tiny()[1]
    for row in ds:
        assert len(row["input_ids"]) <= 16
        assert row["labels"][0] == -100, "some of the prompt (its cue) is kept"
        assert row["input_ids"][-1] == tok.eos_token_id and row["labels"][-1] == tok.eos_token_id


case(
    "tokenization",
    "completion longer than max_length",
    lambda ws: tokenize_for_training(
        datasets.Dataset.from_list([{"prompt": "Question: why?\nAnswer:", "completion": "x" * 200}]),
        tiny()[1],
        max_length=16,
    ),
    None,
    check=_keeps_cue_and_eos,
)
case(
    "tokenization",
    "tokenizer None",
    lambda ws: tokenize_for_training(pairs(), None),
    DataError,
    r"tokenizer must be a loaded tokenizer",
)
case(
    "tokenization",
    "tokenizer given by name",
    lambda ws: tokenize_for_training(pairs(), "gpt2"),
    DataError,
    r"nbft.load_model",
)


def _no_eos(ws: Path) -> Any:
    import copy

    tok = copy.deepcopy(tiny()[1])
    tok.eos_token = None
    return tokenize_for_training(pairs(), tok)


case("tokenization", "tokenizer without EOS", _no_eos, DataError, r"no end-of-sequence token.*tokenizer.eos_token = ")
case(
    "tokenization",
    "a DatasetDict",
    lambda ws: tokenize_for_training(datasets.DatasetDict({"train": pairs()}), tiny()[1]),
    DataError,
    r"pass one split, e.g. data\['train'\]",
)
case(
    "tokenization",
    "no prompt column",
    lambda ws: tokenize_for_training(datasets.Dataset.from_list(QA), tiny()[1]),
    DataError,
    r"no 'prompt' column .*build_instruction_dataset",
)
case(
    "tokenization",
    "None prompt",
    lambda ws: tokenize_for_training(
        datasets.Dataset.from_list([{"prompt": "p", "completion": "a"}, {"prompt": None, "completion": "b"}]), tiny()[1]
    ),
    DataError,
    r"row 2: prompt is None .*fill or drop",
)
case(
    "tokenization",
    "None completion",
    lambda ws: tokenize_for_training(datasets.Dataset.from_list([{"prompt": "p", "completion": None}]), tiny()[1]),
    DataError,
    r"completion is None",
)
case(
    "tokenization",
    "empty prompt",
    lambda ws: tokenize_for_training(datasets.Dataset.from_list([{"prompt": " ", "completion": "a"}]), tiny()[1]),
    DataError,
    r"the prompt is empty",
)
case(
    "tokenization",
    "empty completion",
    lambda ws: tokenize_for_training(datasets.Dataset.from_list([{"prompt": "p", "completion": ""}]), tiny()[1]),
    DataError,
    r"completion is empty",
)
case(
    "tokenization",
    "bad overflow",
    lambda ws: tokenize_for_training(pairs(), tiny()[1], overflow="cut"),
    DataError,
    r"'truncate' or 'drop'",
)
case(
    "tokenization",
    "mode against the tokenizer",
    lambda ws: tokenize_for_training(pairs(), tiny("t5")[1], mode="causal"),
    DataError,
    r"belongs to a seq2seq model.*mode='seq2seq'",
)
case(
    "tokenization",
    "chat template for seq2seq",
    lambda ws: tokenize_for_training(pairs(), tiny("t5")[1], chat_template=True),
    DataError,
    r"chat_template=False",
)
case(
    "tokenization",
    "every example too long with drop",
    lambda ws: tokenize_for_training(pairs(), tiny()[1], max_length=4, overflow="drop"),
    DataError,
    r"raise max_length to at least",
)
case(
    "tokenization",
    "a list of dicts is accepted",
    lambda ws: tokenize_for_training(records(4), tiny()[1]),
    None,
    check=lambda r, ws: r.num_rows == 4,
)

# --- config
for kwargs, says in [
    ({"learning_rate": math.inf}, r"learning_rate must be a finite number"),
    ({"learning_rate": math.nan}, r"finite number"),
    ({"learning_rate": 0}, r"learning_rate must be > 0 .*1e-5 to 1e-4"),
    ({"learning_rate": "fast"}, r"learning_rate must be a number \(got 'fast'\)"),
    ({"learning_rate": [1e-4]}, r"not list"),
    ({"weight_decay": math.nan}, r"weight_decay must be a finite number"),
    ({"weight_decay": -0.1}, r"weight_decay must be >= 0"),
    ({"batch_size": True}, r"batch_size must be an integer, not a bool"),
    ({"batch_size": 0}, r"batch_size must be an integer >= 1 .*batch_size=1"),
    ({"batch_size": 2.5}, r"batch_size must be an integer \(got 2.5\)"),
    ({"grad_accum": "two"}, r"grad_accum must be an integer"),
    ({"epochs": math.inf}, r"epochs must be a finite number"),
    ({"epochs": 0}, r"epochs must be > 0"),
    ({"max_steps": 0}, r"max_steps must be a positive integer or None"),
    ({"max_steps": False}, r"not a bool"),
    ({"seed": -1}, r"seed must be an integer >= 0"),
    ({"seed": "zero"}, r"seed must be an integer"),
    ({"warmup_ratio": 1.5}, r"warmup_ratio must be in \[0, 1\)"),
    ({"warmup_steps": 5, "warmup_ratio": 0.1}, r"set only one of them"),
    ({"schedule": "exponential"}, r"schedule must be one of"),
    ({"precision": "fp8"}, r"'auto' picks bf16"),
    ({"max_grad_norm": 0}, r"None to turn clipping off"),
    ({"save_every": 0}, r"save_every must be a positive integer or None"),
    ({"save_every_minutes": -1}, r"save_every_minutes must be > 0 or None"),
    ({"max_length": 1}, r"max_length must be an integer >= 2"),
    ({"packing": "yes"}, r"packing must be True or False"),
    ({"keep_last": 0}, r"keep_last must be an integer >= 1"),
]:
    case(
        "config",
        f"TrainConfig({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})",
        lambda ws, kw=kwargs: TrainConfig(**kw),
        ValueError,
        r"TrainConfig\..*" + says,
    )
case(
    "config",
    "TrainConfig(seed='0') is read as 0",
    lambda ws: TrainConfig(seed="0"),
    None,
    check=lambda r, ws: r.seed == 0 and isinstance(r.seed, int),
)
case(
    "config",
    "TrainConfig(learning_rate='5e-5') is read as a number",
    lambda ws: TrainConfig(learning_rate="5e-5"),
    None,
    check=lambda r, ws: r.learning_rate == 5e-5,
)
case(
    "config",
    "TrainConfig(schedule='Cosine') is read as 'cosine'",
    lambda ws: TrainConfig(schedule="Cosine"),
    None,
    check=lambda r, ws: r.schedule == "cosine",
)
case("config", "DataConfig(max_length=0)", lambda ws: DataConfig(max_length=0), ValueError, r"max_length=512")
case("config", "DataConfig(stratify='yes')", lambda ws: DataConfig(stratify="yes"), ValueError, r"True, False or None")
case("config", "EvalConfig(n=0)", lambda ws: EvalConfig(n=0), ValueError, r"EvalConfig.n must be a positive integer")
case("config", "EvalConfig(n_boot=10)", lambda ws: EvalConfig(n_boot=10), ValueError, r"n_boot=1000")
case("config", "EvalConfig(batch_size=True)", lambda ws: EvalConfig(batch_size=True), ValueError, r"not a bool")
case("config", "EvalConfig(scoring='all')", lambda ws: EvalConfig(scoring="all"), ValueError, r"'both' scores")
case("config", "EvalConfig(icl_shots=(-1,))", lambda ws: EvalConfig(icl_shots=(-1,)), ValueError, r"non-negative")


# --- finetune / resume
def _ft(data: Any, **kw: Any) -> Callable[[Path], Any]:
    def run(ws: Path) -> Any:
        model, tok = kw.pop("model_tok", None) or fresh()
        return finetune(model, tok, data, **{"config": cfg(), "run_dir": ws / "new-run", **kw})

    return run


case(
    "finetune",
    "every label is -100",
    _ft([{"input_ids": [5, 6, 7], "labels": [-100] * 3}] * 4),
    ValueError,
    r"no labelled token: every label is -100.*tokenize_for_training",
)
case("finetune", "empty training data", _ft([]), ValueError, r"train data is empty")
case("finetune", "empty validation data", _ft(records(8), val=[]), ValueError, r"validation data is empty.*val=None")
case(
    "finetune",
    "label id outside the vocabulary",
    _ft([{"input_ids": [5, 6, 7], "labels": [-100, 99999, 7]}] * 4),
    ValueError,
    r"token ids \[99999\] outside the model's vocabulary .*own tokenizer",
)
case(
    "finetune",
    "negative input id",
    _ft([{"input_ids": [5, -5, 7], "labels": [-100, 6, 7]}] * 4),
    ValueError,
    r"token ids \[-5\]",
)
case(
    "finetune",
    "labels not aligned",
    _ft([{"input_ids": [5, 6, 7], "labels": [6, 7]}] * 4),
    ValueError,
    r"must be aligned with input_ids",
)
case("finetune", "raw rows without prompt/completion", _ft(QA), ValueError, r"build_instruction_dataset")
case("finetune", "a DatasetDict", _ft(datasets.DatasetDict({"train": pairs()})), ValueError, r"pass one split")
case("finetune", "config as a dict", _ft(records(8), config={"max_steps": 1}), TypeError, r"TrainConfig\(\*\*")
case(
    "finetune",
    "model given by name",
    lambda ws: finetune("gpt2", tiny()[1], records(8), run_dir=ws / "r"),
    TypeError,
    r"nbft.load_model\('gpt2'\)",
)
case(
    "finetune",
    "(model, tokenizer) as model",
    lambda ws: finetune(fresh(), tiny()[1], records(8), run_dir=ws / "r"),
    TypeError,
    r"unpack it",
)
case("finetune", "observers not a list", _ft(records(8), observers=print), TypeError, r"observers=\[ProgressObserver")
case("finetune", "background='yes'", _ft(records(8), background="yes"), TypeError, r"background must be True or False")
case("finetune", "run_dir a number", _ft(records(8), run_dir=5), TypeError, r"run_dir must be a folder path")
case(
    "finetune",
    "run_dir is a file",
    lambda ws: finetune(*fresh(), records(8), config=cfg(), run_dir=ws / "mydata.jsonl"),
    FileExistsError,
    r"is a file; give a folder",
)
case(
    "finetune",
    "run_dir holds a completed run",
    lambda ws: finetune(*fresh(), records(8), config=cfg(), run_dir=run_copy(ws, "completed")),
    FileExistsError,
    r"already holds a run .*more_steps=N.*overwrite=True",
)
case(
    "finetune",
    "run_dir holds a stopped run",
    lambda ws: finetune(*fresh(), records(8), config=cfg(), run_dir=run_copy(ws, "stopped")),
    FileExistsError,
    r"continue it with nbft.resume",
)


def _other_runs_files(ws: Path) -> Any:
    run_dir = ws / "someone-else"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"config": {}}))
    (run_dir / "history.jsonl").write_text('{"kind": "train", "step": 1}\n')
    settled(run_dir)
    return finetune(*fresh(), records(8), config=cfg(), run_dir=run_dir)


case(
    "finetune",
    "run_dir holds another run's run.json and history, no checkpoint",
    _other_runs_files,
    FileExistsError,
    r"history.jsonl with 1 step.*no checkpoint.*overwrite=True",
)


def _locked(ws: Path) -> Any:
    lock = RunLock(ws / "busy").acquire()
    try:
        return finetune(*fresh(), records(8), config=cfg(), run_dir=ws / "busy")
    finally:
        lock.release()


case("finetune", "run_dir locked by another writer", _locked, RunInUseError, r"being written by this process .*stop")


def _model_in_use(ws: Path) -> Any:
    from nbft.train.guard import claim_model, release_model

    model, tok = fresh()
    owner = type("Owner", (), {"run_dir": ws / "elsewhere", "status": "running"})()
    claim_model(model, owner)
    try:
        return finetune(model, tok, records(8), config=cfg(), run_dir=ws / "second")
    finally:
        release_model(model, owner)


case("finetune", "the same model object in two runs", _model_in_use, RuntimeError, r"copy.deepcopy\(model\)")


def _mutated(ws: Path) -> Any:
    config = cfg()
    config.learning_rate = math.inf  # changed after construction: finetune checks the fields again
    return finetune(*fresh(), records(8), config=config, run_dir=ws / "r")


case("finetune", "a config changed after it was made", _mutated, ValueError, r"learning_rate must be a finite number")


def _completed_run(ws: Path) -> Any:
    from nbft.train.run import Run

    run_dir = run_copy(ws, "completed")
    model, tok = fresh()
    handle = Run.__new__(Run)  # a finished run's handle, as finetune returns it
    handle.model, handle.tokenizer, handle.run_dir, handle.status = model, tok, run_dir, "completed"
    return handle


case(
    "finetune",
    "run.save(run.run_dir)",
    lambda ws: (lambda r: r.save(r.run_dir))(_completed_run(ws)),
    FileExistsError,
    r"is a run directory: save the model into a folder of its own",
)
case(
    "finetune",
    "run.save into a user's folder",
    lambda ws: _completed_run(ws).save(ws / "exports"),
    FileExistsError,
    r"did not write.*overwrite=True",
)

case("resume", "a folder that does not exist", lambda ws: resume(ws / "nope"), FileNotFoundError, r"nbft.runs")
case(
    "resume",
    "a folder that is not a run",
    lambda ws: resume(ws / "exports"),
    FileNotFoundError,
    r"not an nbft run directory .*run_dir of finetune",
)
case(
    "resume",
    "a completed run",
    lambda ws: resume(run_copy(ws, "completed")),
    ValueError,
    r"has completed .*more_steps=N",
)
case(
    "resume",
    "more_steps=0",
    lambda ws: resume(run_copy(ws, "completed"), more_steps=0),
    ValueError,
    r"more_steps must be a positive integer",
)
case(
    "resume",
    "more_steps on an unfinished run",
    lambda ws: resume(run_copy(ws, "stopped"), more_steps=2),
    ValueError,
    r"has not completed .*resume it without more_steps",
)


def _changed_config(ws: Path) -> Any:
    run_dir = run_copy(ws, "stopped")
    meta = json.loads((run_dir / "run.json").read_text())
    meta["config"]["batch_size"] = 2
    (run_dir / "run.json").write_text(json.dumps(meta))
    return resume(settled(run_dir))


case("resume", "a changed run.json config", _changed_config, ValueError, r"batch_size: 4 -> 2.*allow_config_change")


def _torn_run_json(ws: Path) -> Any:
    run_dir = run_copy(ws, "stopped")
    (run_dir / "run.json").write_text('{"config": {"learn')
    return resume(settled(run_dir))


case("resume", "a torn run.json", _torn_run_json, ValueError, r"run.json is damaged .*Restore it")


def _while_training(ws: Path) -> Any:
    run_dir = run_copy(ws, "stopped")
    lock = RunLock(run_dir).acquire()  # what a live run holds
    try:
        return resume(run_dir)
    finally:
        lock.release()


case("resume", "a run that is still training", _while_training, RunInUseError, r"being written by")


def _all_damaged(ws: Path) -> Any:
    run_dir = run_copy(ws, "stopped")
    for ck in (run_dir / "checkpoints").iterdir():
        (ck / "state.json").unlink()
    return resume(settled(run_dir))


case("resume", "every checkpoint damaged", _all_damaged, FileNotFoundError, r"none is intact: step-000002: state.json")
case("resume", "run_dir a number", lambda ws: resume(5), TypeError, r"run_dir must be a path")

# --- models
case(
    "models",
    "a folder that does not exist",
    lambda ws: nbft.load_model("./no/such/model"),
    ModelNotFoundError,
    r"no such folder: ./no/such/model",
)
case(
    "models",
    "a file instead of a folder",
    lambda ws: nbft.load_model(str(ws / "mydata.jsonl")),
    ModelNotFoundError,
    r"is a file; pass the folder that holds the model's config.json",
)
case(
    "models",
    "a folder without config.json",
    lambda ws: nbft.load_model(str(ws / "exports")),
    ModelNotFoundError,
    r"has no config.json; point to a folder written by save_pretrained",
)
case("models", "a number", lambda ws: nbft.load_model(5), TypeError, r"load_model\('HuggingFaceTB")
case("models", "a misspelt alias", lambda ws: nbft.load_model("smolm2"), LookupError, r"Did you mean 'smollm2'")
case(
    "models",
    "a bad dtype",
    lambda ws: nbft.load_model(str(ws / "exports"), dtype="fp8"),
    ValueError,
    r"unknown dtype 'fp8'; use 'fp32', 'bf16'",
)
case(
    "models",
    "unknown tiny architecture",
    lambda ws: nbft.tiny_random("gpt"),
    LookupError,
    r"Did you mean .gpt2.*Known: .*llama.*t5",
)

# --- sources
case(
    "sources",
    "a QA topic that climbs out of the cache",
    lambda ws: nbft.sources.load_builtin("qa", topics=("../../x",)),
    LookupError,
    r"unknown chatterbot-corpus topic '../../x'",
)
case(
    "sources",
    "a misspelt QA topic",
    lambda ws: nbft.sources.load_builtin("qa", topics=("histroy",)),
    LookupError,
    r"Did you mean 'history'",
)
case(
    "sources",
    "a wheel member with '..'",
    lambda ws: wheel_member("chatterbot-corpus", "1.3.3", "../../../etc/passwd"),
    RegistryError,
    r"not a plain path inside the wheel",
)
case(
    "sources",
    "an unknown built-in source",
    lambda ws: nbft.sources.load_builtin("sentimnt"),
    LookupError,
    r"Did you mean 'sentiment'",
)


# --- compare and report
def _compare(models: Any = None, tasks: Any = ("qa",), **kw: Any) -> Callable[[Path], Any]:
    def run(ws: Path) -> Any:
        return nbft.compare({"base": tiny()} if models is None else models, tasks, **{"progress": False, **kw})

    return run


case("compare", "no models", _compare({}), ValueError, r"needs at least one model, e.g. \{'base': model\}")
case("compare", "models as a list", _compare([1]), TypeError, r"models must be a dict \{column name: model\}")
case("compare", "an unknown task", _compare(tasks=["qaa"]), LookupError, r"Did you mean 'qa'")
case("compare", "no tasks", _compare(tasks=[]), TaskError, r"no tasks given")
case("compare", "tasks as a number", _compare(tasks=5), TaskError, r"tasks must be task names")
case("compare", "a target not among the tasks", _compare(target="sentiment"), TaskError, r"Add it to tasks=")
case("compare", "n=0", _compare(n=0), ValueError, r"EvalConfig.n must be a positive integer")
case("compare", "a misspelt setting", _compare(batchsize=4), TypeError, r"unknown setting 'batchsize'.*batch_size")
case("compare", "config as a dict", _compare(config={"n": 2}), TypeError, r"config must be an nbft.EvalConfig")
case(
    "compare",
    "a model folder that does not exist",
    _compare({"base": "./no/model"}, n=2),
    ModelNotFoundError,
    r"no such folder: ./no/model",
)
case(
    "compare",
    "a model without its tokenizer",
    _compare({"base": tiny()[0]}, n=2),
    ValueError,
    r"without a tokenizer: pass tokenizer=",
)
case("compare", "a model that is None", _compare({"base": None}, n=2), TypeError, r"cannot evaluate None")
case(
    "compare",
    "a Hub-only task offline",
    _compare(tasks=["summarize"], n=2),
    SourceUnavailableError,
    r"Offline, use the wheel-backed tasks",
)
case(
    "compare",
    "training_data for an unknown column",
    _compare(training_data={"tuned": []}),
    ValueError,
    r"not among the models \['base'\]",
)
case(
    "compare",
    "an unfinished run directory as a model",
    lambda ws: nbft.compare({"base": tiny(), "tuned": str(run_copy(ws, "stopped"))}, ["qa"], n=2, progress=False),
    FileNotFoundError,
    r"without a final model/ .*nbft.resume",
)
case(
    "compare",
    "Task.from_data with a missing field",
    lambda ws: Task.from_data([{"q": "a", "a": "b"}] * 10, "qa/1"),
    TemplateError,
    r"needs the field 'question'",
)
case(
    "compare",
    "an unknown metric",
    lambda ws: Task.from_data(QA, "qa/1", metric="bleurt"),
    LookupError,
    r"unknown metric 'bleurt'",
)
case(
    "compare",
    "Task.from_data with one example (no test split)",
    lambda ws: Task.from_data([QA[0]], "qa/1"),
    TaskError,
    r"empty test split .*give more examples",
)
case(
    "compare",
    "Task.from_data with a None field",
    lambda ws: Task.from_data(qa_rows(question=None), "qa/1"),
    TemplateError,
    r"row 4 .*'question' is missing",
)
case(
    "report",
    "export_html into a folder",
    lambda ws: report.export_html(_table(), ws / "exports"),
    FileExistsError,
    r"is a folder: .*Give a file path",
)
case(
    "report",
    "export_html into a run directory",
    lambda ws: report.export_html(_table(), run_copy(ws, "stopped")),
    FileExistsError,
    r"is a folder",
)
case(
    "report",
    "export_markdown into a folder",
    lambda ws: report.export_markdown(_table(), ws / "exports"),
    FileExistsError,
    r"Give a file path",
)
case(
    "report",
    "export_csv into a file",
    lambda ws: report.export_csv(_table(), ws / "mydata.jsonl"),
    FileExistsError,
    r"is a file: give a folder",
)
case(
    "report",
    "a dict that is not a results dict",
    lambda ws: report.table_frame({"x": 1}),
    ValueError,
    r"not an nbft results dict .*compare_models",
)
case(
    "report",
    "weight_change of different architectures",
    lambda ws: report.weight_change(tiny()[0], tiny("t5")[0]),
    ValueError,
    r"share no parameter .*base it was trained from",
)


def _escaped_html(ws: Path) -> Path:
    return report.export_html(_table(), ws / "report.html")


def _no_raw_markup(path: Path, ws: Path) -> None:
    text = path.read_text()
    assert "<script>" not in text and "<img src=x" not in text and "&lt;script&gt;" in text


case(
    "report",
    "task and model names with HTML are escaped",
    _escaped_html,
    None,
    check=_no_raw_markup,
    writes=("report.html",),
)
case(
    "report",
    "markdown escapes HTML in names",
    lambda ws: report.export_markdown(_table()),
    None,
    check=lambda r, ws: "<script>" not in r and "&lt;script&gt;" in r,
)

_TABLE: list[Any] = []


def _table() -> Any:
    if not _TABLE:
        rows = [{"question": f"q{i} <script>alert(1)</script>", "answer": f"a{i}"} for i in range(30)]
        task = Task.from_data(rows, "qa/1", name="qa<script>")
        _TABLE.append(nbft.compare({"base<script>": tiny(), "tuned<img src=x>": tiny()}, [task], n=3, progress=False))
    return _TABLE[0]


# --- CLI
for args, says in [
    (("demo", "--steps", "0"), r"--steps: must be >= 1, got 0"),
    (("demo", "--steps", "many"), r"expected a whole number"),
    (("demo", "--n", "-2"), r"--n: must be >= 1"),
    (("demo", "--target", "summarize", "--model", "tiny"), r"need the Hugging Face Hub.*--target sentiment"),
    (("demo", "--target", "sentimnt"), r"Did you mean 'sentiment'"),
    (("demo", "--model", "./no/such/model"), r"model folder ./no/such/model does not exist"),
    (("demox",), r"invalid choice: 'demox'"),
    (("train",), r"give a config file .*--print-config"),
    (("train", "no-such.yaml"), r"config file not found.*--print-config"),
    (("train", "--set", "nothing"), r"give a config file"),
    (("models", "--jsn"), r"unrecognized arguments: --jsn"),
]:
    case("cli", "nbft " + " ".join(args), lambda ws, a=args: cli(*a), None, check=refused_by_cli(says))


def _cli_with_config(body: str, *extra: str, says: str) -> Callable[[Path], Any]:
    def run(ws: Path) -> Any:
        return cli("train", file(ws, "train.yaml", body), *extra)

    return run


for body, extra, says in [
    ("model: tiny\ndata: sentiment\ntrain: {learning_rate: .inf}\n", (), r"learning_rate must be a finite number"),
    ("model: tiny\ndata: sentiment\ntrain: {batch_size: true}\n", (), r"batch_size: expected an integer"),
    ("model: tiny\ndata: sentimnt\n", (), r"Did you mean 'sentiment'"),
    ("model: ./no/model\ndata: sentiment\n", (), r"folder not found: ./no/model"),
    ("model: tiny\ndata: sentiment\nmodle: x\n", (), r"Did you mean 'model'"),
    ("model: tiny\ndata: ./missing.jsonl\n", (), r"file not found"),
    ("model: tiny\ndata: sentiment\n", ("--more-steps", "3"), r"--more-steps continues a completed run: add --resume"),
    ("model: tiny\ndata: sentiment\n", ("--more-steps", "0"), r"--more-steps: must be >= 1"),
    ("- a\n- b\n", (), r"must be a mapping of fields"),
    (
        "model: tiny\ndata: sentiment\ntrain: {lr: 0.001}\n",
        (),
        r"train.lr: unknown TrainConfig field. Did you mean 'learning_rate'",
    ),
    (
        "model: tiny\ndata: sentiment\neval: {tasks: [qa, summarize]}\n",
        (),
        r"\['summarize'\] need the Hugging Face Hub",
    ),
    ("model: tiny\ndata: sentiment\ntrain: {seed: 1.5}\n", (), r"train.seed: expected an integer, got 1.5"),
    ("model: tiny\ndata: sentiment\noutput_dir: mydata.jsonl\n", (), r"output_dir mydata.jsonl is a file; set"),
    ("model: tiny\ndata: [unclosed\n", (), r"not valid YAML"),
]:
    case(
        "cli",
        f"nbft train with {body.strip()[:40]!r} {' '.join(extra)}".strip(),
        _cli_with_config(body, *extra, says=says),
        None,
        check=refused_by_cli(says),
    )


def _cli_resume_completed(ws: Path) -> Any:
    run_dir = run_copy(ws, "completed")
    return cli("train", file(ws, "t.yaml", f"model: tiny\ndata: sentiment\noutput_dir: {run_dir}\n"), "--resume")


case(
    "cli",
    "nbft train --resume of a completed run",
    _cli_resume_completed,
    None,
    check=refused_by_cli(r"holds a completed run: .*--resume --more-steps N"),
)


# --- widgets
def _widgets() -> Any:
    pytest.importorskip("ipywidgets")
    import nbft.widgets as w

    return w


case(
    "widgets",
    "TrainPanel with a config dict",
    lambda ws: _widgets().TrainPanel(*fresh(), records(8), config={"max_steps": 2}),
    TypeError,
    r"TrainConfig\(\*\*",
)
case(
    "widgets",
    "TrainPanel with a (model, tokenizer) pair",
    lambda ws: _widgets().TrainPanel(fresh(), None, records(8)),
    TypeError,
    r"unpack it",
)
case(
    "widgets",
    "TrainPanel.from_run_dir of a missing run",
    lambda ws: _widgets().TrainPanel.from_run_dir(ws / "nope"),
    FileNotFoundError,
    r"nbft.runs\('runs'\)",
)
case(
    "widgets",
    "TrainPanel.resume with nothing to resume",
    lambda ws: _widgets().TrainPanel(*fresh(), records(8), runs_folder=ws / "runs-here").resume(),
    RuntimeError,
    r"nothing to resume",
)
case(
    "widgets",
    "TrainPanel.wait before a run",
    lambda ws: _widgets().TrainPanel(*fresh(), records(8), runs_folder=ws / "runs-here").wait(),
    RuntimeError,
    r"click Train",
)
case(
    "widgets",
    "DatasetBuilder with an unknown task",
    lambda ws: _widgets().DatasetBuilder(task="qaa"),
    LookupError,
    r"Did you mean 'qa'",
)
case(
    "widgets",
    "DatasetBuilder with a bad split",
    lambda ws: _widgets().DatasetBuilder(task="qa", split=(2, 0, 0)),
    ValueError,
    r"summing to 1",
)
case(
    "widgets",
    "DatasetBuilder(n=-5)",
    lambda ws: _widgets().DatasetBuilder(task="qa", n=-5),
    ValueError,
    r"n=1000 \(0: all\)",
)
case(
    "widgets",
    "DatasetBuilder(max_length=0)",
    lambda ws: _widgets().DatasetBuilder(task="qa", max_length=0),
    ValueError,
    r"max_length=512",
)
case(
    "widgets",
    "DatasetBuilder.export before Build",
    lambda ws: _widgets().DatasetBuilder(task="qa").export("x"),
    RuntimeError,
    r"click Build first",
)


def _export_into_user_folder(ws: Path) -> Any:
    builder = _widgets().DatasetBuilder(QA, task="qa", tokenizer=tiny()[1], debounce=None)
    builder.templates.value = ("qa/1",)
    builder.build()
    return builder.export(str(ws / "exports"), "disk")


case(
    "widgets",
    "DatasetBuilder.export over a user's folder",
    _export_into_user_folder,
    FileExistsError,
    r"did not write.*overwrite=True",
)
case(
    "widgets",
    "ComparePanel with no models",
    lambda ws: _widgets().ComparePanel({}, ["qa"]),
    ValueError,
    r"give at least the base model",
)
case(
    "widgets",
    "ComparePanel with models as a list",
    lambda ws: _widgets().ComparePanel([1], ["qa"]),
    TypeError,
    r"models must be a dict",
)
case(
    "widgets",
    "ComparePanel with an unknown task",
    lambda ws: _widgets().ComparePanel({"base": tiny()}, ["qaa"]),
    LookupError,
    r"Did you mean 'qa'",
)
case(
    "widgets",
    "ComparePanel with a target outside the tasks",
    lambda ws: _widgets().ComparePanel({"base": tiny()}, ["qa"], target="sentiment"),
    ValueError,
    r"not among the tasks",
)
case(
    "widgets",
    "compare_runs of a folder that is not a run",
    lambda ws: _widgets().compare_runs([ws / "exports"]),
    FileNotFoundError,
    r"not an nbft run directory",
)


# --- magics
def _usage_error() -> type[BaseException]:
    pytest.importorskip("IPython")
    from IPython.core.error import UsageError

    return UsageError


def _magic_case(name: str, line: str, cell: str | None, says: str) -> None:
    def run(ws: Path) -> Any:
        error = _usage_error()
        try:
            return magic(name, line, cell)
        except error as exc:
            raise _Usage(str(exc)) from None

    body = f" (cell {cell!r})" if cell is not None else ""
    case("magics", f"%{'%' if cell is not None else ''}{name} {line}{body}".strip(), run, _Usage, says)


class _Usage(Exception):
    """An IPython UsageError, re-raised under a name the catalogue can import without IPython."""


for name, line, cell, says in [
    ("nbft_template", "t/1", "{{ a }}", r"--target"),
    ("nbft_template", "t/1 --target b", "", r"the cell is empty"),
    ("nbft_template", "t/1 --target b", "{{ a ", r"syntax error on line 1"),
    ("nbft_template", "t/1 --target a", "{{ a }}", r"shows its target field 'a'"),
    ("nbft_template", "t/1 --target b --choices", "{{ a }}", r"--choices"),
    ("nbft_templates", "qaa", None, r"Did you mean 'qa'"),
    ("nbft_templates", "qa sentiment", None, r"at most one task name"),
    ("nbft_tasks", "--online", None, r"the only option is --offline"),
    ("nbft_models", "extra", None, r"takes no arguments"),
    ("nbft", "runz", None, r"runs"),
    ("nbft", "runs a b", None, r"at most one folder"),
    ("nbft", "runs /no/such/folder", None, r"no folder '/no/such/folder'"),
    ("nbft", "stop", None, r"no run is training"),
    ("nbft", "gpu now", None, r"takes no arguments"),
]:
    _magic_case(name, line, cell, says)


# --- the test


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Files with (size, mtime) and folders by name: equal trees mean nothing was written or deleted."""
    if root.is_file():
        st = root.stat()
        return {"": (st.st_size, st.st_mtime_ns)}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
        else:
            out[p.relative_to(root).as_posix() + "/"] = (0, 0)
    return out


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = tmp_path / "ws"
    (ws / "exports").mkdir(parents=True)
    (ws / "exports" / "notes.txt").write_text("my notes")
    (ws / "mydata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QA))
    monkeypatch.chdir(ws)  # relative paths (./no/such/model) resolve here
    _MADE.clear()
    return ws


def _raised_by_nbft(exc: BaseException) -> bool:
    """The innermost frame that raised is nbft's own code (not a library's): the error was anticipated."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(NBFT_ROOT)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.area}: {c.name}" for c in CASES])
def test_bad_input(case: Case, workspace: Path) -> None:
    setup_done = _tree(workspace)
    result = None
    if case.error is None:
        result = case.run(workspace)
        if case.check is not None:
            case.check(result, workspace)
    else:
        with pytest.raises(case.error) as info:
            case.run(workspace)
        message = str(info.value)
        assert re.search(case.says, message, re.S), f"the message does not name the fix:\n{message}"
        if info.type is _Usage:
            assert "\n" not in message, "a magic's error is one line"
        else:
            assert _raised_by_nbft(info.value), f"raised from inside a library, not by nbft: {info.value!r}"
    after = _tree(workspace)
    for path, stat in setup_done.items():
        assert after.get(path) == stat, f"{path} was changed or deleted"
    for made, snapshot in _MADE:  # what the case set up for itself (a copied run, an input file) is untouched
        assert _tree(made) == snapshot, f"{made} was changed: {set(_tree(made).items()) ^ set(snapshot.items())}"
    made_roots = [m.relative_to(workspace).as_posix() for m, _ in _MADE]
    allowed = [*case.writes, *made_roots, "inputs/", "runs/"]
    created = [
        p
        for p in after
        if p not in setup_done
        and not any(p.rstrip("/") == a.rstrip("/") or p.startswith(a.rstrip("/") + "/") for a in allowed)
    ]
    assert not created, f"files were written: {created}"


def test_the_catalogue_is_large_and_every_case_is_an_error_or_a_correct_result() -> None:
    counts: dict[str, int] = {}
    for c in CASES:
        counts[c.outcome] = counts.get(c.outcome, 0) + 1
    assert len(CASES) >= 120, counts
    assert set(counts) <= {"clear error", "correct behaviour"}
    assert len({(c.area, c.name) for c in CASES}) == len(CASES), "case names are unique"
    areas = {c.area for c in CASES}
    assert {
        "data",
        "templates",
        "mixing",
        "tokenization",
        "config",
        "finetune",
        "resume",
        "compare",
        "cli",
        "widgets",
        "magics",
    } <= areas
