"""Evaluation across tasks: tasks as data, metrics from libraries, batched generation, base-vs-tuned comparison.

Example::

    from nbft.evaluate import compare, get_task, list_tasks
    table = compare({"base": (model, tok)}, ["sentiment", "qa"], n=50)
"""

from nbft.evaluate.compare import ComparisonTable, ModelEvaluation, build_prompt, compare, evaluate_model, prompt_hash
from nbft.evaluate.generation import generate, score_choices
from nbft.evaluate.metrics import Metric, MetricError, UserMetric, get_metric, list_metrics
from nbft.evaluate.tasks import Task, TaskError, get_task, list_tasks, register_task, split_dataset

__all__ = [
    "ComparisonTable",
    "Metric",
    "MetricError",
    "ModelEvaluation",
    "Task",
    "TaskError",
    "UserMetric",
    "build_prompt",
    "compare",
    "evaluate_model",
    "generate",
    "get_metric",
    "get_task",
    "list_metrics",
    "list_tasks",
    "prompt_hash",
    "register_task",
    "score_choices",
    "split_dataset",
]
