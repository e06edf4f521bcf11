"""Share a run on the Hugging Face Hub: its model, its model card (with the comparison as ``model-index`` metadata)
and ``report.html``, in one commit through ``huggingface_hub``.

:func:`push_to_hub` is the one way in (``nbft push RUN REPO`` on the command line). Offline (``HF_HUB_OFFLINE`` set,
or the Hub not reachable) it says so before anything is prepared; ``dry_run=True`` needs no network and returns the
files a push would upload.

Example::

    import nbft.hub
    nbft.hub.push_to_hub("runs/sentiment-1", "me/smollm2-sentiment", dry_run=True).files
    # ['README.md', 'config.json', 'generation_config.json', 'model.safetensors', 'report.html', ...]
    nbft.hub.push_to_hub("runs/sentiment-1", "me/smollm2-sentiment")            # private by default
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from nbft.data import OfflineError

__all__ = ["Push", "push_to_hub"]

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


@dataclasses.dataclass
class Push:
    """What :func:`push_to_hub` did (or, with ``dry_run``, would do)."""

    repo_id: str
    files: list[str]
    """Paths in the repository, sorted."""
    private: bool
    dry_run: bool
    url: str | None = None
    """The commit's URL (``None`` for a dry run)."""


def _check_online() -> None:
    """Raise :class:`~nbft.data.OfflineError` when the Hub cannot be reached, saying why and what to do."""
    from huggingface_hub import is_offline_mode

    from nbft import _registry

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE or is_offline_mode():
        raise OfflineError(
            "cannot push: HF_HUB_OFFLINE is set, so huggingface_hub makes no network calls. Unset it on a machine "
            "that reaches huggingface.co and push again (nothing was prepared or uploaded); push_to_hub(..., "
            "dry_run=True) lists the files without the network"
        )
    if not _registry.hub_reachable():
        raise OfflineError(
            "cannot push: the Hugging Face Hub (huggingface.co) is not reachable from this machine. Copy the run "
            "directory to a connected machine and push from there (nothing was prepared or uploaded); "
            "push_to_hub(..., dry_run=True) lists the files without the network"
        )


def _run_dir_and_model(run: Any) -> tuple[Path, Path]:
    """(run directory, final model folder) of a ``Run``, a run directory or a run's ``model/`` folder."""
    if hasattr(run, "run_dir"):
        if getattr(run, "status", None) in ("pending", "running"):
            raise RuntimeError("the run is still training: push it once it has ended (run.wait())")
        run_dir = Path(run.run_dir)
    elif isinstance(run, str | os.PathLike):
        run_dir = Path(run)
        if run_dir.name == "model" and (run_dir.parent / "run.json").is_file():
            run_dir = run_dir.parent
    else:
        raise TypeError(f"push a Run, a run directory or its model/ folder, not {type(run).__name__}")
    if not (run_dir / "run.json").is_file():
        raise FileNotFoundError(
            f"{run_dir} is not an nbft run directory (no run.json); list the runs with nbft.runs('runs')"
        )
    model_dir = run_dir / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{run_dir} has no final model/ (the run did not complete): resume it (nbft.resume), or save it with "
            "run.save(), then push"
        )
    return run_dir, model_dir


def _upload_list(run_dir: Path, model_dir: Path, staging: Path) -> dict[str, Path]:
    """``{path in repo: local file}``: the model folder (weights, tokenizer, card) and ``report.html``."""
    files = {
        p.relative_to(model_dir).as_posix(): p
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
    }
    report = run_dir / "report.html"
    comparison = run_dir / "comparison.json"
    if report.is_file():
        files["report.html"] = report
    elif comparison.is_file():  # compared in a notebook: render the report from the recorded results
        from nbft import report as rendering
        from nbft.run_dirs import load_history

        results = json.loads(comparison.read_text())
        results.pop("compared_as", None)
        history = [h for h in load_history(run_dir) if h.get("step") is not None]
        files["report.html"] = rendering.export_html(
            results, staging / "report.html", history=history, title=f"nbft: {run_dir.name}"
        )
    else:
        logger.warning("%s has no comparison yet: pushing the model and its card without report.html", run_dir)
    return dict(sorted(files.items()))


def push_to_hub(
    run: Any,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
) -> Push:
    """Upload a run's final model, its model card and ``report.html`` to the Hub repository ``repo_id`` (created,
    private by default, if it does not exist), in one commit.

    ``run``: a ``Run`` that has ended, a run directory or its ``model/`` folder. The card carries the last
    comparison of the run (``nbft.compare``) as prose and ``model-index`` metadata. ``report.html`` is the run's own
    (``nbft demo``, ``nbft train``) or is rendered from its ``comparison.json``. ``dry_run=True`` returns the file
    list and uploads nothing (no network needed). Offline, a clear :class:`~nbft.data.OfflineError` comes first.

    Example::

        push_to_hub("runs/sentiment-1", "me/smollm2-sentiment", dry_run=True).files
        push_to_hub(run, "me/smollm2-sentiment").url
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id must be 'owner/name', e.g. 'me/smollm2-sentiment'; got {repo_id!r}")
    if not dry_run:
        _check_online()  # before anything is prepared
    run_dir, model_dir = _run_dir_and_model(run)
    with tempfile.TemporaryDirectory(prefix="nbft-push-") as staging:
        files = _upload_list(run_dir, model_dir, Path(staging))
        if dry_run:
            return Push(repo_id, list(files), private, dry_run=True)
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
        info = api.create_commit(
            repo_id, operations=operations, commit_message=commit_message or f"nbft: {run_dir.name}"
        )
    return Push(repo_id, list(files), private, dry_run=False, url=getattr(info, "commit_url", None) or str(info))
