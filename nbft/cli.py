"""The ``nbft`` command line: ``nbft models``, ``nbft demo``, ``nbft sweep``, ``nbft train CONFIG``, ``nbft push RUN
REPO``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from nbft import __version__


def _cmd_models(args: argparse.Namespace) -> int:
    from nbft.models import KNOWN_MODELS, model_status

    rows = [model_status(name) for name in KNOWN_MODELS]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    online = "reachable" if rows and rows[0]["online"] else "not reachable"
    print(f"Hugging Face Hub: {online}")
    print(f"{'model':<40} {'type':<8} {'cached':<7} {'offline fallback'}")
    for row in rows:
        fallback = row["offline_fallback"] or "-"
        print(f"{row['name']:<40} {row['task_type']:<8} {'yes' if row['cached'] else 'no':<7} {fallback}")
    print("\nA model is usable when it is cached, the Hub is reachable, or it has an offline fallback.")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nbft.demo import run_demo

    result = run_demo(target=args.target, steps=args.steps, out_dir=args.out, model=args.model, n=args.n,
                      replay=args.replay, replay_from=args.replay_from, seeds=args.seeds, balance=args.balance,
                      echo=print)  # fmt: skip
    out = Path(result["out_dir"])
    paths = [Path(p) for p in result["files"].values()]
    names = sorted(str(p.relative_to(out)) if p.is_relative_to(out) else str(p) for p in paths)
    print(f"\nwrote {out}: " + ", ".join(names))  # the tuned model is inside its run: target-only/seed-<s>/model
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from nbft.report import figure_to_png
    from nbft.sweeps import sweep

    grid: dict[str, list[object]] = {}
    for key, values in (("learning_rate", args.lr), ("steps", args.steps), ("replay", args.replay)):
        if values:
            grid[key] = list(values)
    if args.balance:
        grid["balance"] = [v == "on" for v in args.balance]
    result = sweep(grid, model=args.model, target=args.target, others=args.tasks, seeds=tuple(range(args.seeds)),
                   replay_from=args.replay_from, out_dir=args.out, **({"n": args.n} if args.n else {}))  # fmt: skip
    print(result.to_text())
    png = result.out_dir / "sweep.png"
    png.write_bytes(figure_to_png(result.figure()))
    print(f"\nwrote {result.out_dir / 'sweep.json'} and {png}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from nbft.job import EXAMPLE, load_job, run_job

    if args.print_config:
        print(EXAMPLE, end="")
        return 0
    if args.config is None:
        raise ValueError("give a config file (nbft train CONFIG), or write an example with nbft train --print-config")
    job = load_job(args.config, overrides=args.set)  # every field is checked before anything is loaded or written
    result = run_job(job, resume=args.resume, echo=print, more_steps=args.more_steps)
    return 0 if result["status"] in ("completed", "stopped") else 1


def _cmd_push(args: argparse.Namespace) -> int:
    from nbft.hub import push_to_hub

    result = push_to_hub(args.run, args.repo, private=not args.public, dry_run=args.dry_run)
    visibility = "private" if result.private else "public"
    if result.dry_run:
        print(f"would upload {len(result.files)} files to {result.repo_id} ({visibility}):")
    else:
        print(f"uploaded {len(result.files)} files to {result.repo_id} ({visibility}): {result.url}")
    for name in result.files:
        print(f"  {name}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument gives one line (what is wrong and where to look), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} -h`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nbft", description="Instruction fine-tuning: build datasets, full fine-tune, compare base vs tuned."
    )
    parser.add_argument("--version", action="version", version=f"nbft {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("models", help="list known models and whether each is cached, online or has an offline fallback")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("demo", help="the whole job offline: datasets, base eval, full fine-tune, tuned eval, report")
    p.add_argument("--target", default="sentiment", help="the task to fine-tune on (default: sentiment)")
    p.add_argument(
        "--steps", type=_positive_int, default=None, help="optimizer steps (default: the demo's tuned default)"
    )
    p.add_argument(
        "--out", default=None,
        help="folder for report.html, metrics.json, plots and the runs (default runs/demo-TIME); the tuned model is "
        "OUT/target-only/seed-0/model. The same --out resumes an interrupted demo: finished runs are skipped",
    )  # fmt: skip
    p.add_argument(
        "--model", default=None, help="model name or path (default: SmolLM2-135M-Instruct; 'tiny' for a smoke run)"
    )
    p.add_argument(
        "--n", type=_positive_int, default=None, help="evaluation examples per task (default: the demo's default)"
    )
    p.add_argument(
        "--replay", type=float, nargs="+", default=[], metavar="SHARE",
        help="add a variant per share in (0, 1): the same base and target examples, plus that share replayed from "
        "the other tasks' train splits (e.g. --replay 0.1): the table shows what replay does to forgetting",
    )  # fmt: skip
    p.add_argument(
        "--replay-from", nargs="+", default=None, metavar="TASK",
        help="the other tasks replayed by --replay (default: all but the last); the rest are held out, and forgetting "
        "is reported for replayed and held-out tasks apart",
    )  # fmt: skip
    p.add_argument(
        "--seeds", type=_positive_int, default=1, metavar="N",
        help="train every variant with N seeds (the same base and examples): each number is the mean over seeds with "
        "a CI over seeds and examples, and the table shows the seed range (e.g. --seeds 3)",
    )  # fmt: skip
    p.add_argument(
        "--balance", action=argparse.BooleanOptionalAction, default=None,
        help="the same number of target training examples per label (default: on for a labelled target)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "sweep",
        help="a grid of training settings x seeds from one base: one table, gain against held-out forgetting",
        description="Fine-tune one base model per grid point and seed (e.g. --lr 1e-4 3e-4 --replay 0 0.1 --seeds 3), "
        "compare all variants in one table, and plot the in-domain gain against forgetting on held-out tasks with "
        "the Pareto front. Run it again with the same --out to resume an interrupted sweep.",
    )
    p.add_argument("--lr", type=float, nargs="+", default=None, metavar="RATE", help="learning rates to try")
    p.add_argument("--steps", type=_positive_int, nargs="+", default=None, metavar="N", help="optimizer steps to try")
    p.add_argument("--replay", type=float, nargs="+", default=None, metavar="SHARE", help="replay shares in [0, 1)")
    p.add_argument(
        "--balance", choices=("on", "off"), nargs="+", default=None, help="label-balanced sampling of the target"
    )
    p.add_argument("--seeds", type=_positive_int, default=3, metavar="N", help="training seeds per variant (default 3)")
    p.add_argument("--target", default="sentiment", help="the task to fine-tune on (default: sentiment)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="the tasks that measure forgetting")
    p.add_argument(
        "--replay-from", nargs="+", default=None, metavar="TASK", help="tasks replayed (default: all but the last)"
    )
    p.add_argument("--model", default=None, help="model name or path (default: SmolLM2-135M-Instruct; 'tiny')")
    p.add_argument("--n", type=_positive_int, default=None, help="test examples of the target task (default 100)")
    p.add_argument("--out", default=None, help="the sweep folder (default runs/sweep-TIME); the same one resumes")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "train",
        help="full fine-tune from a YAML/JSON config (also under accelerate launch -m nbft train CONFIG)",
        description="Full fine-tune from a YAML/JSON config. The same file runs in one process, under "
        "`accelerate launch -m nbft train CONFIG` (DDP or FSDP) and with nbft.launch in a notebook.",
    )
    p.add_argument("config", nargs="?", help="path to the config file (YAML or JSON)")
    p.add_argument("--print-config", action="store_true", help="print a commented example config and exit")
    p.add_argument("--resume", action="store_true", help="continue the stopped run in the config's output_dir")
    p.add_argument(
        "--more-steps", type=_positive_int, default=None, metavar="N",
        help="with --resume: train a completed run N steps further",
    )  # fmt: skip
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override a field, e.g. train.max_steps=10"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "push",
        help="upload a run's model, model card (with its comparison) and report.html to the Hugging Face Hub",
        description="Upload a run's final model, its model card (the last comparison as prose and model-index "
        "metadata) and report.html to a Hub repository, created private unless --public.",
    )
    p.add_argument("run", help="the run directory (or its model/ folder)")
    p.add_argument("repo", help="the Hub repository, owner/name")
    p.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    p.add_argument("--dry-run", action="store_true", help="list the files a push would upload; upload nothing")
    p.set_defaults(func=_cmd_push)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # nbft's own notices at INFO; the libraries' only from WARNING (no "INFO matplotlib.font_manager" in the demo)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("nbft").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, LookupError, OSError, TypeError) as exc:
        # Bad input (or a missing file, model or network): one clear line, not a traceback (-v shows it).
        if args.verbose:
            raise
        print(f"nbft {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else still gets one line; -v shows the traceback
        if args.verbose:
            raise
        print(
            f"nbft {args.command}: error: {type(exc).__name__}: {exc} (run with -v for the traceback)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
