"""Execute the rlhf-lab notebooks headless with the "Rust (rlhf-lab)" kernel and fail loudly.

    .venv/bin/python kernel/run_notebooks.py [NOTEBOOK ...] [--inplace] [--html DIR] [--out DIR]
    .venv/bin/python kernel/run_notebooks.py [NOTEBOOK ...] --html-only --html DIR   (no kernel: export only)
    .venv/bin/python kernel/run_notebooks.py --self-test

- Runs every cell with nbclient (allow_errors=True so that *all* problems of a notebook are collected,
  then reported): a cargo compile error, a panic, a failed `assert!` in an assertion cell, any `error`
  output, or a stderr stream that carries a compiler error makes the run fail, and the error text is
  printed here (nbconvert alone hides evcxr's compile errors).
- Adds a static SVG (`image/svg+xml`, rendered by kaleido) next to every plotly figure so the notebooks
  read on GitHub and in HTML exports without any JavaScript or CDN.
- Writes the executed notebooks to --out (default target/notebooks) or back in place (--inplace), an
  optional offline HTML export per notebook (--html), and per-cell timings to <out>/timings.json.
- The HTML exports need no network: the LaTeX of the markdown cells is converted to MathML at export time
  by latex2mathml (browsers render MathML natively), and the template's CDN scripts are left out (MathJax
  always; require.js and the mermaid loader unless a notebook needs them). A formula that does not convert
  stays as its `$…$` source, is listed, and fails the export. `--html-only` re-exports already-executed
  notebooks without a kernel.
"""

from __future__ import annotations

import argparse
import copy
import html
import json
import os
import re
import secrets
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
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


# --- offline math: LaTeX → MathML at export time ---------------------------------------------------------
# nbconvert's HTML template typesets `$…$` with MathJax from a CDN, so offline the formulas stay LaTeX source.
# Instead, every math span of a markdown cell is swapped for an alphanumeric placeholder (which the markdown
# renderer leaves alone; MathML put into the markdown itself would be mangled), the notebook is exported,
# and the placeholders are replaced by the MathML that latex2mathml made of each span.

# Small, documented rewrites for what latex2mathml (3.81) gets wrong; applied before converting, reported per
# export. (name, pattern, replacement, why). latex2mathml does not raise on what it does not know (`\foo`
# comes out as `<mi>\foo</mi>`, `\text{a\_b}` as the text `a\_b`): `_mathml_problem` catches that, so a new
# unsupported construct is reported as a failure instead of being rendered wrong.
MATH_REWRITES: list[tuple[str, re.Pattern[str], object, str]] = [
    (
        "\\sim -> \\thicksim",
        re.compile(r"\\sim(?![A-Za-z])"),
        r"\\thicksim",
        "latex2mathml maps \\sim to the ASCII tilde `~` as an identifier; \\thicksim is the relation U+223C ∼, "
        "which is what MathJax shows for \\sim",
    ),
    (
        "text-mode escapes",
        re.compile(r"(\\(?:text|textrm|texttt|textit|textbf|textsf|mbox)\s*\{)([^{}]*)(\})"),
        lambda m: m.group(1) + re.sub(r"\\([_#%$])", r"\1", m.group(2)) + m.group(3),
        "latex2mathml copies the argument of \\text{…} verbatim, so `\\texttt{ref\\_logits}` showed its backslash; "
        "\\_ \\# \\% \\$ become the bare character there",
    ),
    (
        "aligned -> split",
        re.compile(r"\\(begin|end)\{aligned\}"),
        r"\\\1{split}",
        "latex2mathml has no `aligned` (its `&` came out as a bare <mi>&</mi>); `split` is the same right/left "
        "column pairs, unnumbered",
    ),
]

# A top-level environment that MathJax would typeset without `$` delimiters (nbconvert's rule: any name).
MATH_ENV = re.compile(r"\\begin\{([A-Za-z]+\*?)\}")
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
FENCE_LINE = re.compile(r"[ \t]*(`{3,}|~{3,})")
BACKTICKS = re.compile(r"`+")


@dataclass
class MathSpan:
    token: str  # the placeholder put into the markdown
    cell: int  # index of the markdown cell in the notebook
    original: str  # the span as written, delimiters included
    tex: str  # what was converted (after MATH_REWRITES)
    display: bool
    mathml: str | None = None  # None: conversion failed, `error` says why
    error: str | None = None
    rewrites: tuple[str, ...] = ()


def _fenced_ranges(src: str) -> list[tuple[int, int]]:
    """[start, end) of every fenced code block (``` or ~~~, CommonMark: an unclosed fence runs to the end)."""
    ranges, pos, fence, start = [], 0, None, 0
    for line in src.splitlines(keepends=True):
        m = FENCE_LINE.match(line)
        if fence is None:
            if m:
                fence, start = m.group(1), pos
        elif m and line.strip() == m.group(1) and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
            ranges.append((start, pos + len(line)))
            fence = None
        pos += len(line)
    if fence is not None:
        ranges.append((start, len(src)))
    return ranges


def _find_unescaped(src: str, delim: str, start: int, stop: int) -> int:
    """Index of the next `delim` in src[start:stop] that is not backslash-escaped, or -1."""
    i = start
    while i < stop:
        if src[i] == "\\":
            i += 2
        elif src.startswith(delim, i):
            return i if i + len(delim) <= stop else -1
        else:
            i += 1
    return -1


def _paragraph_end(src: str, i: int) -> int:
    m = PARAGRAPH_BREAK.search(src, i)
    return m.start() if m else len(src)


def math_spans(src: str) -> list[tuple[int, int, str, bool]]:
    """(start, end, tex, display) of every math span in a markdown source, in order.

    Display: `$$…$$` (may span lines), `\\\\[…\\\\]`, a top-level `\\begin{env}…\\end{env}`; inline: `$…$`
    and `\\\\(…\\\\)` within one paragraph. Not math: `\\$`, anything in a backtick code span or a fenced
    code block. The delimiters are nbconvert's (its markdown renderer hands these spans to MathJax)."""
    spans, fences, i, n = [], _fenced_ranges(src), 0, len(src)
    while i < n:
        fence = next((f for f in fences if f[0] <= i < f[1]), None)
        if fence:
            i = fence[1]
            continue
        c = src[i]
        if c == "\\":
            # `\\[ … \\]`, `\\( … \\)`: LaTeX delimiters as written in markdown (the backslash escaped)
            for opener, closer, display in (("\\\\[", "\\\\]", True), ("\\\\(", "\\\\)", False)):
                if src.startswith(opener, i):
                    stop = n if display else _paragraph_end(src, i)
                    j = _find_unescaped(src, closer, i + 3, stop)
                    if j > i + 3:
                        spans.append((i, j + 3, src[i + 3 : j], display))
                        i = j + 3
                        break
            else:
                m = MATH_ENV.match(src, i)
                end = src.find(f"\\end{{{m.group(1)}}}", m.end()) if m else -1
                if m and end >= 0:
                    end += len(f"\\end{{{m.group(1)}}}")
                    spans.append((i, end, src[i:end], True))
                    i = end
                else:
                    i += 2  # an escaped character: `\$` stays a dollar sign
            continue
        if c == "`":
            run = BACKTICKS.match(src, i).end() - i
            close = re.compile(rf"(?<!`)`{{{run}}}(?!`)").search(src, i + run, _paragraph_end(src, i))
            i = close.end() if close else i + run  # an unmatched run of backticks is literal text
            continue
        if c == "$":
            if src.startswith("$$", i):
                j = _find_unescaped(src, "$$", i + 2, n)
                if j > i + 2:
                    spans.append((i, j + 2, src[i + 2 : j], True))
                    i = j + 2
                else:
                    i += 2
                continue
            j = _find_unescaped(src, "$", i + 1, _paragraph_end(src, i))
            if j > i + 1:
                spans.append((i, j + 1, src[i + 1 : j], False))
                i = j + 1
            else:
                i += 1
            continue
        i += 1
    return spans


def _mathml_problem(mathml: str) -> str | None:
    """Why latex2mathml's output is not usable MathML, or None. It does not raise on an unknown macro."""
    try:
        root = ET.fromstring(mathml)
    except ET.ParseError as exc:
        return f"not well-formed MathML ({exc})"
    for el in root.iter():
        text = el.text or ""
        if re.fullmatch(r"\\[A-Za-z]+\*?", text.strip()):
            return f"unsupported macro {text.strip()}"
        if re.search(r"\\[A-Za-z_#%$&{}]", text):  # TeX source left in the output, e.g. `\_` inside \text{}
            return f"LaTeX left in the MathML: {text.strip()!r}"
    return None


def tex_to_mathml(tex: str, display: bool) -> tuple[str | None, str | None, str, tuple[str, ...]]:
    """(mathml, error, rewritten tex, names of the MATH_REWRITES applied)."""
    from latex2mathml.converter import convert

    used = []
    for name, pattern, repl, _why in MATH_REWRITES:
        rewritten = pattern.sub(repl, tex)
        if rewritten != tex:
            tex = rewritten
            used.append(name)
    try:
        mathml = convert(tex.strip(), display="block" if display else "inline")
    except Exception as exc:  # latex2mathml raises its own exceptions, and IndexError etc. on bad input
        return None, f"{type(exc).__name__}: {exc}".rstrip(": "), tex, tuple(used)
    problem = _mathml_problem(mathml)
    return (None, problem, tex, tuple(used)) if problem else (mathml, None, tex, tuple(used))


def mathify(nb) -> tuple[object, dict[str, MathSpan]]:
    """A copy of `nb` whose markdown math spans are placeholders, and the table placeholder → MathSpan."""
    nb = copy.deepcopy(nb)
    sources = "".join(cell.source for cell in nb.cells)
    nonce = secrets.token_hex(4)
    while f"MATH{nonce}" in sources:
        nonce = secrets.token_hex(4)
    table: dict[str, MathSpan] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        src, out, last = cell.source, [], 0
        for start, end, tex, display in math_spans(src):
            # letters and digits only (no `_` or `*` for the markdown renderer to act on); the closing `X`
            # keeps token 1 from being a prefix of token 12
            token = f"MATH{nonce}N{len(table)}X"
            mathml, error, converted, used = tex_to_mathml(tex, display)
            table[token] = MathSpan(token, index, src[start:end], converted, display, mathml, error, used)
            out += [src[last:start], token]
            last = end
        cell.source = "".join(out) + src[last:]
    return nb, table


def fill_math(body: str, table: dict[str, MathSpan]) -> str:
    """Replace the placeholders in the exported HTML: MathML in text; inside a tag (a heading's `id` and
    anchor `href` are made from its text) the source encoded as nbconvert encodes a heading id, so the
    anchors stay what they were with MathJax; for a formula that did not convert, its source as text."""
    from urllib.parse import quote

    if not table:
        return body
    token = re.compile("|".join(re.escape(t) for t in table))

    def in_tag(m: re.Match[str]) -> str:
        # nbconvert.filters.strings._convert_header_id, applied to the span (it works character by character)
        def as_id(t: re.Match[str]) -> str:
            return html.escape(quote(table[t.group(0)].original.replace(" ", "-"), safe="?/:@!$&'()*+,;="))

        return token.sub(as_id, m.group(0))

    body = re.sub(r"<[^<>]*>", in_tag, body)
    return token.sub(lambda t: table[t.group(0)].mathml or html.escape(table[t.group(0)].original), body)


# nbconvert's lab page without MathJax (the formulas are MathML already). Its other CDN scripts are kept
# only where a notebook needs them: require.js when an output carries JavaScript that may call it, the
# mermaid loader when there is a mermaid diagram. Plotly figures reach the HTML as their static SVG.
OFFLINE_TEMPLATE = "rlhf-lab-offline.html.j2"
OFFLINE_TEMPLATE_SOURCE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}
{%- if resources.rlhf_lab_requirejs -%}{{ super() }}{%- endif -%}
{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}
{%- if resources.rlhf_lab_mermaid -%}{{ super() }}{%- endif -%}
{%- endblock html_head_js_mermaidjs -%}
"""
CDN_SCRIPT = re.compile(r"<script[^>]*\ssrc=[\"']https?://[^\"']*mathjax", re.I)


def _needs_requirejs(nb) -> bool:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/javascript" in data or "<script" in str(data.get("text/html", "")):
                return True
    return False


def _needs_mermaid(nb) -> bool:
    return any(
        (cell.cell_type == "markdown" and re.search(r"^[ \t]*(```|~~~)[ \t]*mermaid", cell.source, re.M))
        or any("text/vnd.mermaid" in out.get("data", {}) for out in cell.get("outputs", []))
        for cell in nb.cells
    )


def export_html(nb, name: str) -> tuple[str, dict]:
    """The offline HTML page of an executed notebook and its math report {converted, failed, failures}."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    marked, table = mathify(nb)
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({OFFLINE_TEMPLATE: OFFLINE_TEMPLATE_SOURCE})],
        template_file=OFFLINE_TEMPLATE,
    )
    resources = {"rlhf_lab_requirejs": _needs_requirejs(nb), "rlhf_lab_mermaid": _needs_mermaid(nb)}
    body, _ = exporter.from_notebook_node(marked, resources=resources)
    failures = [
        {
            "notebook": name,
            "cell": s.cell,
            "formula": s.original,
            # a placeholder the markdown renderer did not keep: the formula would be missing from the page
            "error": s.error if t in body else "placeholder lost in export",
        }
        for t, s in table.items()
        if s.mathml is None or t not in body
    ]
    body = fill_math(body, table)
    if CDN_SCRIPT.search(body):
        raise RuntimeError(f"{name}: the HTML export still loads MathJax from a CDN (nbconvert template changed?)")
    report = {
        "converted": len(table) - len(failures),
        "failed": len(failures),
        "failures": failures,
        "rewrites": sorted({r for s in table.values() for r in s.rewrites}),
    }
    return body, report


def write_html(nb, path: Path, html_dir: Path) -> dict:
    """Export `nb` to html_dir/<stem>.html; prints and returns the math report."""
    html_dir.mkdir(parents=True, exist_ok=True)
    body, report = export_html(nb, path.name)
    (html_dir / (path.stem + ".html")).write_text(body)
    rewrites = f" (rewrites: {', '.join(report['rewrites'])})" if report["rewrites"] else ""
    print(f"  -> html {html_dir / (path.stem + '.html')}: math {report['converted']} converted, "
          f"{report['failed']} failed{rewrites}", flush=True)
    for f in report["failures"]:
        print(f"  math FAILED {f['notebook']} cell {f['cell']}: {f['formula']!r}: {f['error']}", file=sys.stderr)
    return report


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
        math = write_html(nb, path, Path(args.html))
        found += [f"math: cell {f['cell']}: {f['formula']!r} kept as LaTeX: {f['error']}" for f in math["failures"]]
    return {
        "notebook": path.name,
        "wall_seconds": round(wall, 1),
        "first_cell_seconds": cell_times[0]["seconds"] if cell_times else None,
        "figures": figures,
        "problems": found,
        "cells": cell_times,
    }


def html_only(paths: list[Path], html_dir: Path) -> int:
    """Export already-executed notebooks to offline HTML, no kernel; 1 if a formula did not convert."""
    converted = failed = 0
    for p in paths:
        print(f"notebook {p.name}", flush=True)
        report = write_html(nbformat.read(p, as_version=4), p, html_dir)
        converted, failed = converted + report["converted"], failed + report["failed"]
    print(f"html: {len(paths)} notebooks exported to {html_dir}; math {converted} converted, {failed} failed")
    return 1 if failed else 0


def math_self_test() -> int:
    """Prove the HTML export renders math offline: no kernel, seconds. Run first by --self-test."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "## The weight $\\sigma(\\hat r)$\n\n"
            "Inline $\\frac{a}{b} + x_t^2 < 1$ costs \\$5, $y \\sim \\pi(\\cdot \\mid \\texttt{ref\\_x})$,\n"
            "while `$x$` is code and so is\n\n"
            "```\n$y$ and $$z$$\n```\n\n"
            "$$\\mathbb{E}_{\\tau}\\Big[\\sum_{t=0}^{T} \\log \\pi(a_t \\mid s_t)\\Big]$$\n\n"
            "\\begin{aligned} a &= b \\\\ c &= d \\end{aligned}"
        ),
        nbformat.v4.new_markdown_cell("A broken formula $\\frac{1}{$ stays as written."),
    ]
    body, report = export_html(nb, "math-self-test.ipynb")
    text = re.sub(r"<math\b.*?</math>", "", body, flags=re.S)  # the page without its formulas
    checks = {
        "formulas become MathML (5 converted)": report["converted"] == 5 and body.count("<math") == 5,
        "display math is a block": body.count('display="block"') == 2,
        "rewrites: aligned is a table, \\sim the relation ∼, \\_ in \\texttt a bare _": "<mtable" in body
        and "<mo>&#x0223C;</mo>" in body
        and ">ref_x</mtext>" in body,
        "no MathJax, nothing from a CDN": not re.search(r"<script[^>]*\ssrc=|text/x-mathjax-config|cdnjs", body),
        "escaped \\$5 stays text": "$5" in text,
        "code span keeps $x$": "<code>$x$</code>" in body,
        "fenced code keeps $y$ and $$z$$": "$y$ and $$z$$" in text,
        "heading id as without the conversion, no MathML in a tag": 'id="The-weight-$%5Csigma(%5Chat-r)$"' in body
        and not re.search(r"<[^<>]*<math", body),
        "failed formula reported, kept as text": report["failed"] == 1
        and report["failures"][0]["cell"] == 1
        and "$\\frac{1}{$" in text,
        "no placeholder left": not re.search(r"MATH[0-9a-f]{8}N\d+X", body),
    }
    for name, ok in checks.items():
        print(f"self-test: {'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


def self_test(args) -> int:
    """Prove the runner fails on what it claims to: a compile error and a failed assertion cell."""
    import tempfile

    if math_self_test() != 0:
        print("self-test: math export failed; kernel part not run", file=sys.stderr)
        return 1

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
    ap.add_argument("--html-only", action="store_true", help="only export the (already executed) notebooks to --html; no kernel")
    ap.add_argument("--self-test", action="store_true", help="check the offline math export, then that a broken notebook fails the run")
    args = ap.parse_args()
    if args.self_test:
        return self_test(args)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    if args.html_only:
        if not args.html:
            ap.error("--html-only needs --html DIR")
        return html_only(paths, Path(args.html))

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
