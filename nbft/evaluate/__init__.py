"""Evaluation across tasks: tasks as data, metrics from libraries, batched generation, a runner that returns a plain
results dict, and the statistics of Δ and forgetting. Rendering lives in :mod:`nbft.report`, which this package
never imports.

========================  ====================================================================================
module                    does one thing
========================  ====================================================================================
``tasks``                 the Task record, its splits (``load``/``sample``/``train``/``from_data``), the registry
``metrics``               metric adapters over libraries (rouge_score, sacrebleu, scikit-learn, seqeval)
``generation``            batched greedy generation and log-likelihood scoring of choices
``overlap``               which test examples a tuned model's training data holds (exact and 13-gram)
``stats``                 bootstrap CIs, paired Δ, forgetting (G, BWT′, AF, worst drop) on plain data
``scoring``               ``score``: one model, one task, a list of examples → a plain dict (fast, reusable)
``runner``                ``evaluate_model``, ``compare_models``: test sets, models, overlap, → the results dict
``results``               assembles that dict: CIs, paired Δs, forgetting, notes
``monitor``               ``ForgettingMonitor``: the tasks scored during training (an engine observer)
``text_probe``            ``general_text_loss``: loss per token on public-domain prose, a probe without labels
========================  ====================================================================================

Example::

    from nbft.evaluate import compare_models, get_task, score
    s = score(model, tok, "qa", get_task("qa").sample(16))          # plain dict: value, metrics, outputs...
    results = compare_models({"base": (model, tok)}, ["sentiment", "qa"], n=50)
    # nbft.compare(...) returns the same results wrapped in a ComparisonTable (nbft.report) for display
"""

from nbft.evaluate import stats
from nbft.evaluate.generation import generate, score_choices
from nbft.evaluate.metrics import Metric, MetricError, UserMetric, get_metric, list_metrics
from nbft.evaluate.monitor import ForgettingMonitor
from nbft.evaluate.overlap import find_overlap, training_source
from nbft.evaluate.runner import compare_models, evaluate_model
from nbft.evaluate.scoring import prompt_hash, score
from nbft.evaluate.tasks import Task, TaskError, get_task, list_tasks, register_task, split_dataset
from nbft.evaluate.text_probe import TextProbeError, general_text_loss

__all__ = [
    "ForgettingMonitor",
    "Metric",
    "MetricError",
    "Task",
    "TaskError",
    "TextProbeError",
    "UserMetric",
    "compare_models",
    "evaluate_model",
    "find_overlap",
    "general_text_loss",
    "generate",
    "get_metric",
    "get_task",
    "list_metrics",
    "list_tasks",
    "prompt_hash",
    "register_task",
    "score",
    "score_choices",
    "split_dataset",
    "stats",
    "training_source",
]
