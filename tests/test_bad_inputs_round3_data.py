"""Bad inputs, round 3 (issue 16, the data half): a run never lands in a user's folder, exports never overwrite a
dataset nbft did not write, split names never leave their folder, and the last silent results and raw library
exceptions of the data path become clear nbft errors.

The cases use the catalogue of ``test_bad_inputs.py`` (its ``Case``, its workspace holding a user's files, and its
check that nothing outside what the call may write was written or deleted).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest
import test_bad_inputs as catalogue
from _train_data import records
from test_bad_inputs import (  # noqa: F401 (workspace: the fixture)
    QA,
    SENT,
    Case,
    _warned,
    cfg,
    cli,
    file,
    fresh,
    pairs,
    qa_rows,
    refused_by_cli,
    settled,
    workspace,
)

from nbft import report as nbft_report
from nbft.data import DataError, build_instruction_dataset, mix, save_dataset
from nbft.evaluate import Task, TaskError
from nbft.templates import PromptTemplate, TemplateError
from nbft.train import finetune

CASES: list[Case] = []


def case(area: str, name: str, run: Any, error: Any, says: str = "", **kw: Any) -> None:
    CASES.append(Case(area, name, run, error, says, **kw))


# --- 1. a run never lands in a folder of the user's


def users_folder(ws: Path) -> Path:
    """A folder of the user's: notes, and ``data/`` and ``tokenizer/`` subfolders of their own."""
    root = ws / "project"
    (root / "data").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    (root / "notes.txt").write_text("mine")
    (root / "data" / "reviews.csv").write_text("text,label\ngood,positive\n")
    (root / "tokenizer" / "tokenizer.json").write_text('{"my": "tokenizer"}')
    return settled(root)


case(
    "finetune",
    "run_dir is a folder of the user's files (data/, tokenizer/)",
    lambda ws: finetune(*fresh(), records(8), config=cfg(), run_dir=users_folder(ws)),
    FileExistsError,
    r"holds files that are not an nbft run \(data/, notes.txt, tokenizer/\): a run needs an empty or new folder.*"
    r"Choose a new run_dir",
)
case(
    "finetune",
    "run_dir is a folder of the user's files, overwrite=True",
    lambda ws: finetune(*fresh(), records(8), config=cfg(), run_dir=users_folder(ws), overwrite=True),
    FileExistsError,
    r"not an nbft run .*overwrite=True replaces only an earlier nbft run",
)
case(
    "cli",
    "nbft train with output_dir a folder of the user's files",
    lambda ws: cli("train", file(ws, "t.yaml", f"model: tiny\ndata: sentiment\noutput_dir: {users_folder(ws)}\n")),
    None,
    check=refused_by_cli(
        r"output_dir .*project holds files that are not an nbft run \(data/, notes.txt, tokenizer/\)"
        r": a run needs an empty or new folder; set another output_dir"
    ),
)


# --- 2. a DatasetBuilder export never replaces a dataset it did not write
def _another_dataset(ws: Path) -> Path:
    sentiment = datasets.DatasetDict({"train": datasets.Dataset.from_list(SENT)})
    return settled(save_dataset(sentiment, ws / "data" / "sentiment", "jsonl"))


def _qa_builder() -> Any:
    from nbft.widgets import DatasetBuilder

    builder = DatasetBuilder(QA, task="qa", debounce=None)
    builder.templates.value = ("qa/1",)
    builder.build()
    return builder


case(
    "widgets",
    "DatasetBuilder export of a qa build into another dataset's folder",
    lambda ws: (_another_dataset(ws), _qa_builder().export(str(ws / "data" / "sentiment"), "jsonl")),
    FileExistsError,
    r"data/sentiment already holds a dataset \(train.jsonl\) that this builder did not write since it was opened: "
    r"choose another path, or replace it with export\(..., overwrite=True\)",
    writes=("data/",),  # the folder that holds the other dataset (made by the case; the dataset itself is checked)
)


# --- 3. split names never leave the target folder
for fmt in ("disk", "jsonl"):
    case(
        "data",
        f"save_dataset of a DatasetDict with a split named '../../x' ({fmt})",
        lambda ws, fmt=fmt: save_dataset(
            datasets.DatasetDict({"train": pairs(), "../../x": pairs()}), ws / "out" / "a" / "b", fmt
        ),
        DataError,
        r"a split named '../../x', which is not a plain name: its files would be written outside .*b.*Rename the split",
    )


# --- 4. a key given twice in a config
for name, body, says in [
    (
        "train: given twice",
        "model: tiny\ndata: sentiment\ntrain: {max_steps: 2}\neval: {n: 3}\ntrain:\n  learning_rate: 0.1\n",
        r"train.yaml: not valid YAML: the key 'train' is given twice \(lines 3 and 5\); only the last would count: "
        r"keep one",
    ),
    (
        "max_steps given twice in one line",
        "model: tiny\ndata: sentiment\ntrain: {max_steps: 2, max_steps: 3}\n",
        r"the key 'max_steps' is given twice \(line 3\)",
    ),
]:
    case(
        "cli",
        f"nbft train with a config whose {name}",
        lambda ws, body=body: cli("train", file(ws, "train.yaml", body)),
        None,
        check=refused_by_cli(says),
    )
case(
    "cli",
    "nbft train with a JSON config whose model is given twice",
    lambda ws: cli("train", file(ws, "train.json", '{"model": "tiny", "data": "sentiment", "model": "x"}')),
    None,
    check=refused_by_cli(r"train.json: the key 'model' is given twice in one object .*keep one"),
)


# --- 5. splits that come out empty are said
def _said(*patterns: str) -> Any:
    def check(warnings: list[str], ws: Path) -> None:
        for pattern in patterns:
            assert any(re.search(pattern, w) for w in warnings), warnings

    return check


case(
    "data",
    "50 identical rows: said (one example is kept, the splits are empty)",
    lambda ws: _warned(
        lambda: build_instruction_dataset([{"question": "What is 2 plus 2?", "answer": "4"}] * 50, "qa")
    ),
    None,
    check=_said(
        r"dropped 49 exact duplicate examples of 50 \(equal answer, question, ignoring case and spacing\): 1 distinct",
        r"only 1 distinct example \(50 before dropping duplicates\): .* gives train 1, validation 0, test 0, so "
        r"validation and test are empty",
    ),
)
case(
    "data",
    "2 examples give empty validation and test splits: said",
    lambda ws: _warned(lambda: build_instruction_dataset(QA[:2], "qa")),
    None,
    check=_said(
        r"only 2 distinct examples: the split \(0.8, 0.1, 0.1\) gives train 2, validation 0, test 0, so validation "
        r"and test are empty .*Add data \(at least 6 distinct examples\), or set split="
    ),
)
case(
    "data",
    "many duplicates dropped: said",
    lambda ws: _warned(lambda: build_instruction_dataset(QA[:10] * 3, "qa")),
    None,
    check=_said(r"dropped 20 exact duplicate examples of 30 .*: 10 distinct remain"),
)


# --- 6. a template that renders 100 MB
def _big(instruction: str) -> PromptTemplate:
    return PromptTemplate(id="big/1", task="qa", instruction=instruction, target="answer")


for name, instruction, says in [
    ("'x' * 10**8", "{{ 'x' * 10**8 }} {{ question }}", r"a value of 1 x 100,000,000 items"),
    ("a loop of 100000 long lines", "{% for i in range(100000) %}{{ question }} {{ question }}{% endfor %}", r"so far"),
    ("question.ljust(10**8)", "{{ question.ljust(10**8) }}", r"ljust\(100,000,000\)"),
]:
    case(
        "templates",
        f"a template that renders 100 MB: {name}",
        lambda ws, instruction=instruction: build_instruction_dataset(QA, _big(instruction)),
        TemplateError,
        r"row 1 .*template 'big/1' renders more than 1,000,000 characters for one example \(.*"
        + says
        + r".*\), the limit nbft.templates.MAX_RENDERED_CHARS; a prompt that long is a template mistake",
    )


# --- 7. mix() of parts with different columns
_QA_TRAIN = build_instruction_dataset(QA, "qa")["train"]
_AS_TEXT = _QA_TRAIN.rename_column("prompt", "text").map(lambda r: {"task": "other"})
case(
    "mixing",
    "mix of parts with different columns (prompt / text)",
    lambda ws: mix({"qa": _QA_TRAIN, "other": _AS_TEXT}),
    DataError,
    r"mix\(\): the datasets have different columns \('qa' has \['prompt', 'completion', .*\]; 'other' has "
    r"\['text', 'completion', .*\]\), so the mixture would have no \['prompt'\] column. Give every dataset the same "
    r"columns: .*rename_column\('text', 'prompt'\)",
)


# --- 8, 9. values pyarrow cannot store: named by column, row and value
case(
    "data",
    "an int among texts (list of dicts)",
    lambda ws: build_instruction_dataset(qa_rows(question=5), "qa"),
    DataError,
    r"row 4 of the data \(index 3 of your list\): column 'question' holds 5 \(a number\), but its other rows hold "
    r"text \(29 of 30\); a column holds one type.*str\(r\['question'\]\)",
)
case(
    "data",
    "an int among texts (Task.from_data)",
    lambda ws: Task.from_data(qa_rows(question=5), "qa/1"),
    TaskError,
    r"row 4 of the data \(index 3 of your list\): column 'question' holds 5 \(a number\)",
)
case(
    "data",
    "an int among texts (DataFrame)",
    lambda ws: build_instruction_dataset(pd.DataFrame(qa_rows(question=5)), "qa"),
    DataError,
    r"row 4 of the data \(DataFrame index 3\): column 'question' holds 5.*df\['question'\].astype\(str\)",
)
for where, make, error in [
    ("list of dicts", lambda: build_instruction_dataset(qa_rows(question="bad \ud800 text"), "qa"), DataError),
    ("Task.from_data", lambda: Task.from_data(qa_rows(question="bad \ud800 text"), "qa/1"), TaskError),
]:
    case(
        "data",
        f"a lone surrogate in a text ({where})",
        lambda ws, make=make: make(),
        error,
        r"row 4 of the data \(index 3 of your list\): column 'question' holds '\\ud800' at character 5 .*a lone "
        r"surrogate, which is not valid Unicode text.*encode\('utf-8', 'replace'\)",
    )


# --- 10. a CSV that is only a header
case(
    "data",
    "CSV with a header and no rows",
    lambda ws: build_instruction_dataset(file(ws, "header.csv", "question,answer\n"), "qa"),
    DataError,
    r"header.csv has a header \(question, answer\) and no rows, so no examples: add them below the header",
)


# --- 11. row numbers name the line of the user's file
_MULTILINE = "".join(f'"What is\n{i}?",{i}\n' for i in range(10))  # each record spans two lines
for name, content, says in [
    (
        "None in line 22 of a CSV (multi-line records before it)",
        "question,answer\n" + _MULTILINE + ",5\n" + "".join(f"q{i},{i}\n" for i in range(20)),
        r"^line 22 of rows.csv: template 'qa/1': field 'question' is missing",
    ),
    (
        "null in line 21 of a JSONL file (blank lines before it)",
        "".join(f'{{"question": "q{i}", "answer": "a{i}"}}\n\n' for i in range(10))
        + '{"question": null, "answer": "x"}\n',
        r"^line 21 of rows.jsonl: template 'qa/1': field 'question' is missing",
    ),
    (
        "an empty answer in line 11 of a JSONL file",
        "".join(f'{{"question": "q{i}", "answer": "a{i}"}}\n' for i in range(10))
        + '{"question": "x", "answer": " "}\n',
        r"1 of 11 examples have an empty completion \(field 'answer'; line 11 of rows.jsonl\)",
    ),
]:
    suffix = ".csv" if "CSV" in name else ".jsonl"
    case(
        "data",
        name,
        lambda ws, content=content, suffix=suffix: build_instruction_dataset(file(ws, "rows" + suffix, content), "qa"),
        (DataError, TemplateError),
        says,
    )


# --- 12. a UTF-16 CSV
for name, content, says in [
    (
        "with a byte-order mark",
        "question,answer\ncaf\xe9,b\n".encode("utf-16"),
        "it starts with a UTF-16 byte-order mark",
    ),
    ("without one", "question,answer\ncaf\xe9,b\n".encode("utf-16-le"), "half of its bytes are zero"),
]:
    case(
        "data",
        f"UTF-16 CSV {name}",
        lambda ws, content=content: build_instruction_dataset(file(ws, "utf16.csv", content), "qa"),
        DataError,
        rf"utf16.csv is UTF-16 text \({says}\), not UTF-8: re-save it as UTF-8 "
        r".*pd.read_csv\(path, encoding='utf-16'\)",
    )


# --- 13. markdown export: names are text, never markup
_MD_TABLE: list[Any] = []


def _markdown_of_odd_names(ws: Path) -> str:
    if not _MD_TABLE:
        import nbft

        rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(30)]
        task = Task.from_data(rows, "qa/1", name="qa|*x*")
        models = {"base": catalogue.tiny(), "tuned|_v2_`x`<b>": catalogue.tiny()}
        _MD_TABLE.append(nbft.compare(models, [task], n=3, progress=False))
    return nbft_report.export_markdown(_MD_TABLE[0])


def _plain_names(md: str, ws: Path) -> None:
    forgetting = md.split("**Forgetting.**")[1].split("\n\n")[0]
    assert "tuned\\|\\_v2\\_\\`x\\`&lt;b&gt;:" in forgetting, forgetting
    assert "<b>" not in md and "tuned|_v2_" not in md, md
    rows = [ln for ln in md.splitlines() if ln.startswith("|") and "qa" in ln]
    assert rows and all("qa\\|\\*x\\*" in ln for ln in rows), rows
    header = md.splitlines()[0]
    cells = [c for c in re.split(r"(?<!\\)\|", header) if c.strip()]
    assert len(cells) == len(md.splitlines()[2].strip("|").split(" | ")), "a name's | never adds a column"


case(
    "report",
    "markdown escapes markdown in model and task names (table, forgetting line)",
    _markdown_of_odd_names,
    None,
    check=_plain_names,
)


# --- the test


@pytest.mark.parametrize("case", CASES, ids=[f"{c.area}: {c.name}" for c in CASES])
def test_bad_input_round3(case: Case, workspace: Path) -> None:  # noqa: F811 (the fixture)
    catalogue.test_bad_input(case, workspace)


def test_dataset_builder_export_path_follows_the_task_and_the_panel_asks_before_replacing(tmp_path, monkeypatch):
    pytest.importorskip("ipywidgets")
    from nbft.widgets import DatasetBuilder

    monkeypatch.chdir(tmp_path)
    other = save_dataset(datasets.DatasetDict({"train": datasets.Dataset.from_list(SENT)}), "data/sentiment", "jsonl")
    before = catalogue._tree(other)
    both = [{**s, **q} for s, q in zip(SENT, QA, strict=True)]  # columns for either task
    builder = DatasetBuilder(both, task="sentiment", debounce=None)
    builder.build()
    assert builder.export_path.value == "data/sentiment"
    builder.task.value = "qa"  # the path follows the task (the user has not edited it)
    assert builder.export_path.value == "data/qa"
    builder.templates.value = ("qa/1",)
    builder.export_button.click()  # the sentiment build is not the qa task's: nothing is written
    assert "click Build first" in builder.status_label.value and not Path("data/qa").exists()
    builder.build()
    builder.export_path.value = "data/sentiment"  # edited by the user: a later task change leaves it alone
    builder.export_button.click()
    assert builder.export_button.description == "Replace" and "click Replace" in builder.export_label.value
    assert catalogue._tree(other) == before, "asked first: nothing replaced"
    assert builder.dataset is not None, "the refusal keeps the built dataset"
    builder.export_format.value = "parquet"  # a changed export is a new question
    assert builder.export_button.description == "Export"
    builder.export_format.value = "jsonl"
    builder.export_button.click()
    builder.export_button.click()  # confirmed
    assert "wrote" in builder.export_label.value and builder.export_button.description == "Export"
    assert "What is 0 plus 0?" in (other / "train.jsonl").read_text()
    builder.export_button.click()  # this builder wrote it since it was opened: no question
    assert "wrote" in builder.export_label.value
    builder.task.value = "sentiment"
    assert builder.export_path.value == "data/sentiment"
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    builder.export_path.value = str(user)
    builder.task.value = "qa"
    builder.templates.value = ("qa/1",)  # the settings of the build again (else the export is refused as stale)
    builder.export_button.click()
    builder.export_button.click()  # a folder of the user's files is never replaced from the panel
    assert (user / "notes.txt").read_text() == "mine" and sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert "files nbft did not write" in builder.status_label.value
