"""Classification diagnostics: which labels a model predicts, against the references (plain data).

A fine-tune can raise accuracy while shifting the label prior (answering "neutral" to half the examples where the
references hold a third). :func:`label_diagnostics` gives the predicted-label distribution beside the references'
and the confusion matrix (scikit-learn); :func:`prior_shift` names the labels predicted more than ``threshold``
points more often than the references hold them.

Example:
    >>> d = label_diagnostics(["pos", "neu", "neu", None], ["pos", "neu", "neg", "neg"], ["neg", "neu", "pos"])
    >>> d["predicted_share"]["neu"], d["reference_share"]["neu"], d["confusion"][0]
    (50.0, 25.0, [0, 1, 0, 1])
    >>> prior_shift(d, threshold=15)
    [{'label': 'neu', 'predicted': 50.0, 'reference': 25.0, 'shift': 25.0}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["NO_LABEL", "PRIOR_SHIFT_POINTS", "label_diagnostics", "pool", "prior_shift"]

NO_LABEL = "(no label)"
"""The predicted "label" of a generated answer that names none of the task's labels."""
PRIOR_SHIFT_POINTS = 15.0
"""A label predicted this many points (of 100) more often than the references hold it is a label-prior shift."""


def label_diagnostics(
    predictions: Sequence[str | None], references: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    """Predicted and reference label shares (% of examples) and the confusion matrix (rows: references in
    ``labels`` order; columns: predictions, then :data:`NO_LABEL`).

    ``predictions`` are labels (``None`` or any text outside ``labels`` counts as no label).
    """
    from sklearn.metrics import confusion_matrix

    labels = list(labels)
    columns = [*labels, NO_LABEL]
    pred = [p if p in labels else NO_LABEL for p in predictions]
    refs = list(references)
    n = len(refs)
    if n:
        matrix = confusion_matrix(refs, pred, labels=columns)[: len(labels)].tolist()
    else:
        matrix = [[0] * len(columns) for _ in labels]
    return {
        "labels": labels,
        "predicted_labels": columns,
        "n": n,
        "confusion": [[int(v) for v in row] for row in matrix],
        "predicted_share": {c: 100.0 * pred.count(c) / n if n else 0.0 for c in columns},
        "reference_share": {c: 100.0 * refs.count(c) / n if n else 0.0 for c in labels},
    }


def pool(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One diagnostics dict from several (the runs of one variant, each on the same examples): counts summed."""
    first = parts[0]
    n = sum(p["n"] for p in parts)
    matrix = [[sum(p["confusion"][i][j] for p in parts) for j in range(len(first["predicted_labels"]))]
              for i in range(len(first["labels"]))]  # fmt: skip

    def share(key: str, names: Sequence[str]) -> dict[str, float]:
        return {c: sum(p[key][c] * p["n"] for p in parts) / n if n else 0.0 for c in names}

    return {
        **first,
        "n": n,
        "confusion": matrix,
        "predicted_share": share("predicted_share", first["predicted_labels"]),
        "reference_share": share("reference_share", first["labels"]),
    }


def prior_shift(diagnostics: Mapping[str, Any], threshold: float = PRIOR_SHIFT_POINTS) -> list[dict[str, Any]]:
    """The labels predicted more than ``threshold`` points more often than the references hold them."""
    out = []
    for label in diagnostics["labels"]:
        predicted = diagnostics["predicted_share"][label]
        reference = diagnostics["reference_share"][label]
        if predicted - reference > threshold:
            out.append({"label": label, "predicted": predicted, "reference": reference, "shift": predicted - reference})
    return out
