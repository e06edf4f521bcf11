"""Log-likelihood scoring of one-token labels: one forward per prompt against one forward per (prompt, choice) pair.

The demo's sentiment rows score every test prompt against ``negative``/``neutral``/``positive`` (one token each for
SmolLM2). :func:`nbft.evaluate.generation.score_choices` reads all three from the prompt's last position; the general
path runs the prompt once per choice. Same prompts, same batch size, same run: the script prints both times, the
ratio and the largest difference between the two score arrays.

    python benchmarks/choice_scoring.py           # SmolLM2-135M-Instruct (offline fallback), 100 sentiment prompts
    python benchmarks/choice_scoring.py --tiny    # seconds: a tiny random model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (seconds)")
    ap.add_argument("--n", type=int, default=100, help="test prompts (default 100, the demo's)")
    ap.add_argument("--batch-size", type=int, default=32, help="the demo's evaluation batch size")
    args = ap.parse_args()

    import numpy as np

    from nbft.evaluate import get_task
    from nbft.evaluate.generation import score_choices
    from nbft.models import resolve_model

    model, tok, label, _ = resolve_model("tiny" if args.tiny else None)
    task = get_task("sentiment")
    rows = list(task.load()["test"])[: args.n]
    chat = bool(getattr(tok, "chat_template", None))
    prompts = [task.prompt(r, tok, chat=chat) for r in rows]  # as the evaluation builds them
    choices = list(task.choices)
    times = {}
    scores = {}
    for shared in (True, False, True):  # the first call warms up; the last one is timed
        t0 = time.perf_counter()
        scores[shared] = score_choices(model, tok, prompts, choices, batch_size=args.batch_size, chat=chat,
                                       progress=False, one_forward_per_prompt=shared)  # fmt: skip
        times[shared] = time.perf_counter() - t0
    diff = float(np.abs(scores[True] - scores[False]).max())
    same = float((scores[True].argmax(1) == scores[False].argmax(1)).mean())
    print(f"{label}: {len(prompts)} prompts x {len(choices)} one-token choices, batch {args.batch_size}, chat={chat}")
    print(f"  one forward per (prompt, choice): {times[False]:.2f} s")
    print(f"  one forward per prompt:           {times[True]:.2f} s   ({times[False] / times[True]:.2f}x faster)")
    print(f"  largest score difference {diff:.2e}; same argmax on {same:.0%} of prompts")


if __name__ == "__main__":
    main()
