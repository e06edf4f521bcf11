"""A shareable result without network: the comparison in the run's model card (prose and ``model-index`` metadata,
read back with huggingface_hub's own parser), the files a push would upload, the offline error, and the upload
calls (``HfApi`` replaced by a recorder)."""

from __future__ import annotations

import json

import datasets
import pytest
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

import nbft.hub
from nbft import _registry
from nbft.cli import main
from nbft.data import OfflineError
from nbft.evaluate import Task
from nbft.models import load_model, tiny_random
from nbft.report import _md, compare, forgetting_summary
from nbft.train import TrainConfig, finetune


def _tasks() -> list[Task]:
    sent = [{"text": f"review {i}", "label": ["negative", "positive"][i % 2]} for i in range(30)]
    qa = [{"question": f"what is {i}?", "answer": str(i)} for i in range(30)]

    def splits(rows):
        return datasets.DatasetDict(
            {"train": datasets.Dataset.from_list(rows[:20]), "test": datasets.Dataset.from_list(rows[20:])}
        )

    return [
        Task("toy-sentiment", splits(sent), "sentiment/1", max_new_tokens=2),
        Task("toy-qa", splits(qa), "qa/1", max_new_tokens=3),
    ]


def _online(monkeypatch) -> None:
    """As on a connected machine: the tests' HF_HUB_OFFLINE=1 (conftest) lifted for huggingface_hub and nbft."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A completed run, compared with its base on two tasks (the run given as a live Run handle)."""
    root = tmp_path_factory.mktemp("hub")
    tasks = _tasks()
    base, tok = tiny_random("llama", seed=0)
    tuned, _ = tiny_random("llama", seed=0)
    data = [{"prompt": tasks[0].prompt(r), "completion": tasks[0].reference(r)} for r in tasks[0].load()["train"]]
    run = finetune(tuned, tok, data, config=TrainConfig(max_steps=3, batch_size=4, learning_rate=3e-3),
                   run_dir=root / "sentiment-run")  # fmt: skip
    table = compare({"base": (base, tok), "tuned": run}, tasks, target="toy-sentiment", n=6, n_boot=200)
    return root, run, table


def test_compared_run_card_has_model_index_that_the_hub_parser_reads(compared):
    root, _, table = compared
    readme = root / "sentiment-run" / "model" / "README.md"
    meta = metadata_load(readme)
    assert "nbft" in meta["tags"], "the card's other metadata stays"
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "sentiment-run"
    got = {(r.dataset_type, r.metric_type): r for r in results}
    for task in table.tasks:
        score = table.results["scores"][task]["tuned"]
        key = score["keys"][0]
        assert got[(task, key)].metric_value == pytest.approx(score["metrics"][key], abs=0.005)
        assert got[(task, key)].dataset_split == "test"
        delta = next(d for d in table.results["deltas"] if d["task"] == task and d["model"] == "tuned"
                     and d["metric"] == key)  # fmt: skip
        assert got[(task, f"delta_{key}")].metric_value == pytest.approx(delta["delta"], abs=0.005)
        assert "95% CI" in got[(task, f"delta_{key}")].metric_name
    forgetting = table.results["forgetting"][0]
    assert got[("nbft/forgetting", "G")].metric_value == pytest.approx(forgetting["G"], abs=0.005)
    assert got[("nbft/forgetting", "BWT")].metric_value == pytest.approx(forgetting["BWT"], abs=0.005)
    # the prose: the cross-task table and the forgetting summary
    card = ModelCard.load(readme)
    first_line = forgetting_summary(table).splitlines()[0]
    # the prose is markdown: names and brackets come escaped, as export_markdown writes them
    assert "## Evaluation" in card.text and _md(first_line)[:40] in card.text
    assert len(card.data.eval_results) == len(results)
    saved = json.loads((root / "sentiment-run" / "comparison.json").read_text())
    assert saved["columns"] == table.columns and saved["compared_as"] == "tuned"


def test_a_later_save_of_the_run_keeps_the_evaluation(compared, tmp_path):
    _, run, table = compared
    assert "Evaluation" in run.card_sections
    path = run.save(tmp_path / "copy")
    _, results = model_index_to_eval_results(metadata_load(path / "README.md")["model-index"])
    assert {r.dataset_type for r in results} == {*table.tasks, "nbft/forgetting"}


def test_comparing_again_replaces_the_evaluation_and_leaves_other_models_alone(compared, tmp_path):
    root, _, _ = compared
    base, tok = tiny_random("llama", seed=0)
    own = tmp_path / "mine"
    base.save_pretrained(own)
    tok.save_pretrained(own)
    (own / "README.md").write_text("# my own card\n")
    loaded = load_model(root / "sentiment-run" / "model")  # a model object: which run it belongs to is a guess
    table = compare({"mine": str(own), "tuned": str(root / "sentiment-run"), "object": loaded}, _tasks()[1:], n=4,
                    n_boot=100)  # fmt: skip
    assert (own / "README.md").read_text() == "# my own card\n", "a card nbft did not write is never changed"
    recorded = json.loads((root / "sentiment-run" / "comparison.json").read_text())
    assert recorded["compared_as"] == "tuned", "only the run directory given as such is written, not a model object"
    readme = root / "sentiment-run" / "model" / "README.md"
    _, results = model_index_to_eval_results(metadata_load(readme)["model-index"])
    assert "toy-sentiment" not in {r.dataset_type for r in results}, "the newest comparison replaces the old one"
    assert {r.dataset_type for r in results} == {"toy-qa", "nbft/forgetting"}
    assert ModelCard.load(readme).text.count("## Evaluation") == 1
    assert table.reference == "mine"


def test_dry_run_lists_the_files_without_network(compared, monkeypatch):
    root, _, _ = compared
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a dry run needs no network
    push = nbft.hub.push_to_hub(root / "sentiment-run", "me/toy", dry_run=True)
    model_files = [p.name for p in (root / "sentiment-run" / "model").iterdir() if not p.name.startswith(".")]
    assert push.files == sorted([*model_files, "report.html"]) and push.private and push.dry_run
    assert {"README.md", "model.safetensors", "config.json"} <= set(push.files)
    assert not (root / "sentiment-run" / "report.html").exists(), "the report is rendered aside, not into the run"
    assert nbft.hub.push_to_hub(root / "sentiment-run" / "model", "me/toy", dry_run=True).files == push.files


def test_offline_push_says_so_before_anything_is_prepared(compared, monkeypatch):
    root, _, _ = compared

    def prepared(*args, **kwargs):
        raise AssertionError("nothing may be prepared offline")

    monkeypatch.setattr(nbft.hub, "_upload_list", prepared)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE is set"):
        nbft.hub.push_to_hub(root / "sentiment-run", "me/toy")
    _online(monkeypatch)
    monkeypatch.setattr(_registry, "hub_reachable", lambda: False)
    with pytest.raises(OfflineError, match="not reachable"):
        nbft.hub.push_to_hub(root / "sentiment-run", "me/toy")
    with pytest.raises(ValueError, match="owner/name"):
        nbft.hub.push_to_hub(root / "sentiment-run", "toy")


def test_push_creates_a_private_repo_and_uploads_the_listed_files(compared, monkeypatch):
    import huggingface_hub

    _, run, _ = compared
    calls: dict[str, object] = {}

    class RecordingApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["create_repo"] = (repo_id, kwargs)

        def create_commit(self, repo_id, operations, commit_message):
            calls["commit"] = (repo_id, [op.path_in_repo for op in operations], commit_message)
            report = next(op for op in operations if op.path_in_repo == "report.html")
            calls["report"] = open(report.path_or_fileobj, encoding="utf-8").read()  # noqa: SIM115
            return type("Info", (), {"commit_url": "https://huggingface.co/me/toy/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    _online(monkeypatch)
    monkeypatch.setattr(_registry, "hub_reachable", lambda: True)
    expected = nbft.hub.push_to_hub(run, "me/toy", dry_run=True).files
    assert run.push_to_hub("me/toy", dry_run=True).files == expected  # the method is the function
    push = nbft.hub.push_to_hub(run, "me/toy")
    assert calls["create_repo"] == ("me/toy", {"private": True, "exist_ok": True})
    assert calls["commit"] == ("me/toy", expected, "nbft: sentiment-run")
    recorded = json.loads((run.run_dir / "comparison.json").read_text())
    assert calls["report"].startswith("<!doctype html>"), "report.html rendered from the recorded comparison"
    assert all(f"<h3>{task}</h3>" in calls["report"] for task in recorded["tasks"])
    assert push.url == "https://huggingface.co/me/toy/commit/1" and push.files == expected


def test_cli_push(compared, monkeypatch, capsys):
    root, _, _ = compared
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(root / "sentiment-run"), "me/toy", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would upload" in out and "(private)" in out and "  report.html" in out
    assert main(["push", str(root / "sentiment-run"), "me/toy"]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
