"""The cost of watching: tokens/s of the same run with and without a TrainPanel (live plot, progress, quiet scope).

Both variants call ``nbft.finetune(..., background=True)`` on the same randomly initialised model (seed 0), the same
tokenized examples and the same config; only the observers differ. Runs alternate (A B A B ...) so that load from
other jobs on a shared machine hits both alike, and the ratio of the medians is the result.

Tokens/s is measured on the wall clock between the first and the last ``on_step`` event (by an observer that runs
after the panel's), so it includes the time the panel's observers take in the training thread, which the engine's
own ``tokens_per_second`` (step compute only) would not.

On a machine shared with other jobs the A/B ratio is noisy (the same run varies by 2x), so the script also times the
panel's observers directly: the seconds spent inside them in the training thread, as a share of the run's wall time.
That share is the panel's cost, and it does not depend on what else the machine is doing as much.

    python benchmarks/panel_overhead.py                 # ~3 minutes on 2 CPU cores
    python benchmarks/panel_overhead.py --repeats 5 --steps 80 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def make_model(hidden: int, layers: int, vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=1024, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def make_examples(n: int, vocab: int) -> list[dict[str, list[int]]]:
    import torch

    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        p = int(torch.randint(100, 300, (1,), generator=g))
        c = int(torch.randint(15, 40, (1,), generator=g))
        prompt = torch.randint(3, vocab, (p,), generator=g).tolist()
        completion = torch.randint(3, 103, (c,), generator=g).tolist()
        rows.append({"input_ids": prompt + completion, "labels": [-100] * p + completion})
    return rows


class Timed:
    """Forwards an observer's event methods and adds up the time spent in them."""

    def __init__(self, observer, totals: dict[str, float]) -> None:
        self._observer = observer
        self._totals = totals

    def __getattr__(self, name: str):
        method = getattr(self._observer, name)
        if not name.startswith("on_"):
            return method

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                # the end of the run (final redraw, static copy) comes after the last step: no tokens/s lost there
                key = "end of run" if name == "on_train_end" else type(self._observer).__name__
                self._totals[key] = self._totals.get(key, 0.0) + time.perf_counter() - t0

        return timed


class WallClock:
    """Real tokens per wall-clock second between the first and the last step event."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.tokens = 0

    def on_step(self, state) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now  # the first step's own time (warm-up) is left out
        else:
            self.tokens += state.tokens
        self.last = now

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / (self.last - self.first) if self.first is not None and self.last > self.first else 0.0


def one_run(variant: str, args, examples, workdir: Path, k: int) -> dict:
    from nbft.train import TrainConfig, finetune

    model = make_model(args.hidden, args.layers, args.vocab)
    config = TrainConfig(max_steps=args.steps, batch_size=args.batch, learning_rate=3e-4, seed=0)
    clock = WallClock()
    run_dir = workdir / f"{variant}-{k}"
    t0 = time.perf_counter()
    if variant == "panel":
        from nbft.widgets import TrainPanel

        panel = TrainPanel(model, None, examples, config=config, run_dir=run_dir)
        inside: dict[str, float] = {}
        own = panel._observers
        panel._observers = lambda: [*(Timed(o, inside) for o in own()), clock]  # the panel's, timed; then the clock
        panel.train()
        run = panel.wait()
        redraws = panel.plot.redraws
    else:
        run = finetune(model, None, examples, config=config, observers=[clock], run_dir=run_dir, background=True)
        run.wait()
        redraws = 0
        inside = {}
    return {
        "variant": variant,
        "tokens_per_second": clock.tokens_per_second,
        "engine_tokens_per_second": run.summary.get("tokens_per_second"),
        "wall_s": time.perf_counter() - t0,
        "redraws": redraws,
        "final_loss": run.final_loss,
        "observer_s": inside,
        "observer_share": sum(v for k, v in inside.items() if k != "end of run") / (clock.last - clock.first)
        if clock.first
        else 0.0,
        "train_wall_s": clock.last - clock.first if clock.first else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant, alternating")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import tempfile

    import torch
    import transformers

    examples = make_examples(args.steps * args.batch, args.vocab)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for variant in ("plain", "panel") if k % 2 == 0 else ("panel", "plain"):
                r = one_run(variant, args, examples, Path(tmp), k)
                results.append(r)
                inside = ", ".join(f"{name} {s:.2f} s" for name, s in r["observer_s"].items())
                print(
                    f"{variant:6s} run {k}: {r['tokens_per_second']:8.0f} tok/s (wall clock), "
                    f"{r['wall_s']:.1f} s, {r['redraws']} redraws, loss {r['final_loss']:.4f}"
                    + (f"; in the panel's observers: {inside}; during the steps "
                       f"{r['observer_share']:.1%} of the wall time" if inside else ""),
                    flush=True,
                )  # fmt: skip
    median = {
        v: statistics.median(r["tokens_per_second"] for r in results if r["variant"] == v) for v in ("plain", "panel")
    }
    ratio = median["panel"] / median["plain"]
    losses = {v: {r["final_loss"] for r in results if r["variant"] == v} for v in ("plain", "panel")}
    print(
        f"\nmedian tokens/s: without panel {median['plain']:.0f}, with TrainPanel {median['panel']:.0f}: "
        f"ratio {ratio:.3f} ({(1 - ratio) * 100:+.1f}% cost; goal: within 5%)"
    )
    shares = [r["observer_share"] for r in results if r["variant"] == "panel"]
    print(f"time in the panel's observers, share of the steps' wall time: median {statistics.median(shares):.1%}, "
          f"max {max(shares):.1%} (the panel's cost measured directly)")  # fmt: skip
    print(f"same losses in every run: {losses['plain'] == losses['panel'] and len(losses['plain']) == 1}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": results,
                                         "median": median, "ratio": ratio}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
