"""Bad inputs, round 3 (issue 16, the data half): a run never lands in a user's folder, exports never overwrite a
dataset nbft did not write, split names never leave their folder, and the last silent results and raw library
exceptions of the data path become clear nbft errors.

The cases use the catalogue of ``test_bad_inputs.py`` (its ``Case``, its workspace holding a user's files, and its
check that nothing outside what the call may write was written or deleted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_bad_inputs as catalogue
from _train_data import records
from test_bad_inputs import Case, cfg, cli, file, fresh, refused_by_cli, settled, workspace  # noqa: F401 (fixture)

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


# --- the test


@pytest.mark.parametrize("case", CASES, ids=[f"{c.area}: {c.name}" for c in CASES])
def test_bad_input_round3(case: Case, workspace: Path) -> None:  # noqa: F811 (the fixture)
    catalogue.test_bad_input(case, workspace)
