"""The tests' shared data (tests/_train_data.py) depends on its seed only, never on the global random generators."""

from __future__ import annotations

import random

import torch
from _train_data import records


def test_records_with_one_seed_are_the_same_whatever_the_global_generators_did():
    first = records(12, seed=3)
    torch.rand(100), random.random()  # a model built, a shuffle: the global generators move on
    torch.manual_seed(123)
    assert records(12, seed=3) == first
    assert records(12, seed=4) != first
    lengths = {len(r["prompt"].split()) for r in records(200)}
    assert min(lengths) >= 5 and len(lengths) > 5  # "Classify:", 3-14 words, "Answer:": varied lengths
