"""Execute the rlhf-lab notebooks headless with the "Rust (rlhf-lab)" kernel and fail loudly.

    .venv/bin/python kernel/run_notebooks.py [NOTEBOOK ...] [--inplace] [--html DIR] [--out DIR]

- Runs every cell with nbclient (allow_errors=True so that *all* problems of a notebook are collected,
  then reported): a cargo compile error, a panic, a failed `assert!` in an assertion cell, any `error`
  output, or a stderr stream that carries a compiler error makes the run fail, and the error text is
  printed here (nbconvert alone hides evcxr's compile errors).
- Adds a static SVG (`image/svg+xml`, rendered by kaleido) next to every plotly figure so the notebooks
  read on GitHub and in HTML exports without any JavaScript or CDN.
- Writes the executed notebooks to --out (default target/notebooks) or back in place (--inplace), an
  optional offline HTML export per notebook (--html), and per-cell timings to <out>/timings.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
KERNEL = "rlhf-lab"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
# evcxr reports compile errors as `error[E0425]: …` / `error: …` text; panics as "panicked at".
COMPILE_ERROR = re.compile(r"^error(\[E\d+\])?:", re.M)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    return ANSI.sub("", text)


def add_svg(nb) -> int:
    """Attach an SVG rendering to each plotly output; returns the number of figures."""
    import plotly.io as pio

    figures = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY_MIME in data:
                fig = data[PLOTLY_MIME]
                if isinstance(fig, str):
                    fig = json.loads(fig)
                    data[PLOTLY_MIME] = fig
                layout = fig.get("layout", {})
                svg = pio.to_image(
                    fig,
                    format="svg",
                    width=layout.get("width") or 760,
                    height=layout.get("height") or 440,
                )
                data["image/svg+xml"] = svg.decode()
                figures += 1
    return figures


def coalesce_streams(nb) -> None:
    """Merge consecutive stream outputs of the same name (evcxr sends a panic line by line)."""
    for cell in nb.cells:
        merged = []
        for out in cell.get("outputs", []):
            if (
                merged
                and out.output_type == "stream"
                and merged[-1].output_type == "stream"
                and merged[-1].name == out.name
            ):
                merged[-1].text += out.text
            else:
                merged.append(out)
        if cell.cell_type == "code":
            cell.outputs = merged


def problems(nb) -> list[str]:
    """Every error output, compiler error, panic, or unexecuted code cell, as readable text."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        head = f"cell {i} ({cell.get('id', '?')}): {cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ''}"
        if cell.get("execution_count") is None:
            found.append(f"{head}\n  not executed")
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                tb = plain("\n".join(out.get("traceback", [])[1:]))
                found.append(f"{head}\n  {out.get('ename', 'error')}: {plain(out.get('evalue', ''))}\n{tb}")
            elif out.output_type == "stream" and out.get("name") == "stderr":
                text = out.get("text", "")
                if COMPILE_ERROR.search(text) or "panicked at" in text:
                    # the panic message, without the backtrace
                    text = plain(text).split("stack backtrace:")[0].strip()
                    found.append(f"{head}\n  stderr:\n{text}")
    return found


def run(path: Path, args) -> dict:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=args.timeout,
        startup_timeout=120,
        allow_errors=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    cell_times = []
    start = time.time()

    # nbclient has no per-cell hook that sees timings in all versions: wrap the cell executor.
    original = client.async_execute_cell

    async def timed(cell, cell_index, *a, **kw):
        t0 = time.time()
        result = await original(cell, cell_index, *a, **kw)
        if cell.cell_type == "code":
            cell_times.append({"cell": cell_index, "seconds": round(time.time() - t0, 2)})
            first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            print(f"  [{cell_index:2d}] {time.time() - t0:7.1f} s  {first[:70]}", flush=True)
        return result

    client.async_execute_cell = timed
    aborted = None
    try:
        client.execute()
    except Exception as exc:  # a cell timeout or a dead kernel: report it like any other failure
        aborted = f"run aborted: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    wall = time.time() - start
    coalesce_streams(nb)
    figures = add_svg(nb)
    found = problems(nb)
    if aborted:
        found.insert(0, aborted)

    dest = path if args.inplace else Path(args.out) / path.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    if args.html:
        from nbconvert import HTMLExporter

        html_dir = Path(args.html)
        html_dir.mkdir(parents=True, exist_ok=True)
        body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
        (html_dir / (path.stem + ".html")).write_text(body)
    return {
        "notebook": path.name,
        "wall_seconds": round(wall, 1),
        "first_cell_seconds": cell_times[0]["seconds"] if cell_times else None,
        "figures": figures,
        "problems": found,
        "cells": cell_times,
    }


def self_test(args) -> int:
    """Prove the runner fails on what it claims to: a compile error and a failed assertion cell."""
    import tempfile

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Rust (rlhf-lab)", "language": "rust"}
    nb.cells = [
        nbformat.v4.new_code_cell('let x: u32 = "not a number";'),
        nbformat.v4.new_code_cell('assert!(1 + 1 == 3, "deliberate assertion failure");'),
        nbformat.v4.new_code_cell('println!("still running");'),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "self-test.ipynb"
        nbformat.write(nb, path)
        args.inplace, args.html, args.out = False, None, tmp
        r = run(path, args)
    text = "\n".join(r["problems"])
    checks = {
        "compile error reported": "mismatched types" in text,
        "failed assertion reported": "deliberate assertion failure" in text,
        "later cells still run": len(r["cells"]) == 3,
    }
    for name, ok in checks.items():
        print(f"self-test: {'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


def main() -> int:
    # The Makefile points cargo at the machine cache's target dir; evcxr runs cargo inside its own
    # EVCXR_TMPDIR and looks for each cell's library there, so the kernels must not inherit it.
    os.environ.pop("CARGO_TARGET_DIR", None)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--inplace", action="store_true", help="write executed notebooks back (to commit them)")
    ap.add_argument("--out", default=str(ROOT / "target" / "notebooks"))
    ap.add_argument("--html", help="also export offline HTML reports into this directory")
    ap.add_argument("--timeout", type=int, default=3000, help="seconds per cell (the cold first cell compiles tch, polars, plotly)")
    ap.add_argument("--self-test", action="store_true", help="check that a broken notebook fails the run")
    args = ap.parse_args()
    if args.self_test:
        return self_test(args)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))

    results = []
    total = time.time()
    for p in paths:
        print(f"notebook {p.name}", flush=True)
        r = run(p.resolve(), args)
        status = "FAILED" if r["problems"] else "ok"
        print(f"  -> {status}: {r['wall_seconds']} s (first cell {r['first_cell_seconds']} s), {r['figures']} figures", flush=True)
        for msg in r["problems"]:
            print("  " + msg.replace("\n", "\n  "), file=sys.stderr)
        results.append(r)
    summary = {"total_seconds": round(time.time() - total, 1), "notebooks": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "timings.json").write_text(json.dumps(summary, indent=2))
    failed = [r["notebook"] for r in results if r["problems"]]
    print(f"notebooks: {len(results) - len(failed)}/{len(results)} ok in {summary['total_seconds']} s")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
