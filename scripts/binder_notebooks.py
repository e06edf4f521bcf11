"""Run notebooks headless with nbclient, as a documentation site or CI does, and check what they leave behind.

Used by ``scripts/binder_check.sh`` inside the Binder environment (only nbclient, nbformat and the standard library:
what that environment has). For each notebook: execute it in its own working folder, save the executed copy, and
check that it has a PNG figure and an HTML table, and that every cell showing a widget view also holds a static
result (the panels' ``nbft-static`` output), so a reader without a kernel sees results. Then print the peak resident
memory of the kernels and fail if it went over ``--limit-mb``.

Example::

    python scripts/binder_notebooks.py --out /tmp/executed --limit-mb 2048 notebooks/*.ipynb
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def problems(nb) -> list[str]:
    """What a reader without a kernel would miss in an executed notebook (empty when nothing)."""
    found = []
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    data = [o.get("data", {}) for o in outputs if o.get("output_type") in ("display_data", "execute_result")]
    if not any("image/png" in d for d in data):
        found.append("no PNG figure")
    if not any("<table" in d.get("text/html", "") for d in data):
        found.append("no HTML table")
    for i, cell in enumerate(nb.cells):
        outs = [o.get("data", {}) for o in cell.get("outputs", [])]
        views = [d for d in outs if WIDGET_VIEW in d]
        static = [d for d in outs if "nbft-static" in d.get("text/html", "")]
        if views and not static:
            found.append(f"cell {i} shows a widget view with no static result: {cell.source.splitlines()[0]!r}")
    return found


def main(argv: list[str] | None = None) -> int:
    import nbclient
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for the executed notebooks")
    parser.add_argument("--limit-mb", type=float, default=2048)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    failed = False
    for path in args.notebooks:
        workdir = args.out / path.stem
        workdir.mkdir(parents=True, exist_ok=True)
        nb = nbformat.read(path, as_version=4)
        t0 = time.monotonic()
        try:
            nbclient.NotebookClient(
                nb, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
            ).execute()
            found = problems(nb)
        except Exception as exc:  # a failing cell: say which, and go on with the next notebook
            found = [f"{type(exc).__name__}: {str(exc)[-2000:]}"]
        nbformat.write(nb, args.out / path.name)
        seconds = time.monotonic() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest kernel so far
        print(f"{path.name}: {'ok' if not found else 'FAILED'} in {seconds:.0f} s; kernel peak so far {peak_mb:.0f} MB")
        for line in found:
            print(f"  {line}")
        failed |= bool(found)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    own_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: kernels {peak_mb:.0f} MB, runner {own_mb:.0f} MB (cap {args.limit_mb:.0f} MB)")
    if peak_mb > args.limit_mb:
        print(f"over the cap: a kernel peaked at {peak_mb:.0f} MB > {args.limit_mb:.0f} MB")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
