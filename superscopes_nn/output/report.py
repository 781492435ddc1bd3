"""A self-contained HTML explorer of a Superscopes / Patchscopes sweep.

A sweep patches one hidden state into a target prompt for every
``source_layer`` x amplification ``alpha`` (or ``target_layer``) and lets the
model "explain" it by generating text.  Researchers read such a sweep as a
grid: source layers down, the swept variable across, the generated text in each
cell, coloured by a score.  This module writes that grid as ONE HTML file: no
server, no network (inline CSS/JS only), open it straight from disk.

Quick start::

    from superscopes_nn.output.report import write_report, write_report_from_run

    # from a results DataFrame (one row per patch)
    write_report(df, "sweep.html", config=cfg, score_column="score_source_cosine")

    # from a run directory holding config.json + rows.jsonl
    write_report_from_run("runs/demo")              # -> runs/demo/report.html

    # on the command line (wired in as ``superscopes report``)
    #   superscopes report runs/demo --out sweep.html --score score_source_cosine

What the page shows:

* one grid per (source prompt, site), chosen with the two select boxes at the top;
* each cell: the interpretation text (HTML-escaped), background coloured by the
  score column (the first ``score_*`` column by default), a tooltip with the
  exact score and the row's details;
* the *chosen* cell of every grid row -- Superscopes' automatic amplifier
  detection: the column with the highest score, ties broken towards the
  smallest value -- outlined and marked with a star (computed here, in Python)
  only where that score is above the success threshold (``threshold``; for
  ``score_source_cosine`` by default the run's ``threshold`` or
  :data:`~superscopes_nn.science.superscopes.SUCCESS_THRESHOLD`); a row whose best
  cell is below it says so in its "chosen" column instead;
* above each grid: the source token(s), the target prompt, target layer and
  target site, and the threshold;
* the run's ``config.json`` as a collapsible, pretty-printed JSON block.

For tests and scripts every grid is ``<table class="grid" data-prompt data-site>``
and every cell ``<td class="cell" data-prompt data-site data-layer data-col>``
(plus class ``chosen``).  All model text goes through :func:`html.escape`; a
Content-Security-Policy only lets the page's own script (by hash) run.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path

import pandas as pd

from .report_page import CSS, HIGH_RGB, JS, LOW_RGB, MID_RGB, PAGE, colour, csp, safe_json
from .report_scores import SCORE_PREFIX, default_threshold, finite_score, merge_scores
from ..core.store import load_run
from ..science.superscopes import detect_alpha

REQUIRED_COLUMNS = (
    "source_prompt", "source_token", "source_position", "source_layer", "site",
    "target_layer", "alpha", "target_prompt", "interpretation",
)
GRID_COLUMNS = ("alpha", "target_layer")

# The page template (CSS, JS, PAGE) lives in report_page.py; write_report() fills it.

def _esc(value) -> str:
    """HTML-escape anything (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _fmt_num(value) -> str:
    """Compact, exact-enough label for a layer / alpha: 2.0 -> '2', 0.5 -> '0.5'."""
    if isinstance(value, str):
        return value
    f = float(value)
    if math.isfinite(f) and f.is_integer():
        return str(int(f))
    return repr(f)


def _text(value) -> str:
    """Interpretation text as a string (None/NaN -> '', lists joined)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        return " | ".join(str(v) for v in value)
    return str(value)


def _ordered_unique(series: pd.Series) -> list:
    return list(dict.fromkeys(series.tolist()))


# --------------------------------------------------------------------------- #
# Validation and choosing
# --------------------------------------------------------------------------- #

def _validate(df: pd.DataFrame, score_column: str | None, columns: str) -> str | None:
    """Check the frame; return the score column to use (or None)."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if columns not in GRID_COLUMNS:
        raise ValueError(f"columns must be one of {', '.join(GRID_COLUMNS)}, got {columns!r}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results are missing column(s): {', '.join(missing)}")
    if df.empty:
        raise ValueError("results are empty: nothing to report")
    if score_column is None:
        return next((c for c in df.columns if str(c).startswith(SCORE_PREFIX)), None)
    if score_column not in df.columns:
        scores = [c for c in df.columns if str(c).startswith(SCORE_PREFIX)]
        raise ValueError(f"score column {score_column!r} not in results (score columns: {scores or 'none'})")
    if not pd.api.types.is_numeric_dtype(df[score_column]):
        raise ValueError(f"score column {score_column!r} is not numeric")
    return score_column


def _cell_scores(df: pd.DataFrame, score_column: str | None, columns: str) -> pd.Series:
    """Mean score per (prompt, site, layer, col) cell, NaN where no score."""
    keys = ["source_prompt", "site", "source_layer", columns]
    if score_column is None:
        return pd.Series(dtype=float)
    return df.groupby(keys, sort=False)[score_column].mean()


def choose_cells(df: pd.DataFrame, score_column: str | None = None, columns: str = "alpha",
                 threshold: float | None = None) -> set[tuple]:
    """The chosen (prompt, site, layer, col) cells: per grid row, the column with the
    highest score, ties broken towards the smallest column value (e.g. smallest alpha),
    if that score is above ``threshold`` (None: any score).

    The choice is :func:`superscopes_nn.science.superscopes.detect_alpha` on the cells' mean
    scores (the grid column standing in for ``alpha``). Rows without any finite score
    choose nothing.  ``score_column=None`` uses the first ``score_*`` column; with no
    score column at all nothing is chosen.
    """
    score_column = _validate(df, score_column, columns)
    if score_column is None:
        return set()
    cells = _cell_scores(df, score_column, columns).dropna()
    if cells.empty:
        return set()
    by = ["source_prompt", "site", "source_layer"]
    table = cells.rename("cell_score").reset_index().rename(columns={columns: "alpha"})
    picked = detect_alpha(table, score="cell_score", by=by)
    return {(r.source_prompt, r.site, r.source_layer, r.alpha) for r in picked.itertuples(index=False)
            if not math.isnan(r.alpha) and (threshold is None or r.score > threshold)}


# --------------------------------------------------------------------------- #
# HTML pieces
# --------------------------------------------------------------------------- #

def _tooltip(rows: pd.DataFrame, score_cols: list[str]) -> str:
    lines = []
    for _, r in rows.iterrows():
        lines.append(
            f"token {r['source_token']!r} @ {r['source_position']}, {r['site']} L{r['source_layer']}"
            f" -> target L{r['target_layer']}, alpha {_fmt_num(r['alpha'])}"
        )
        for c in score_cols:
            s = finite_score(r[c])
            lines.append(f"{c}: {'n/a' if s is None else repr(s)}")
        lines.append(f"target prompt: {r['target_prompt']}")
        if "error" in r.index and _text(r["error"]):
            lines.append(f"error: {_text(r['error'])}")
    return "\n".join(lines)


def _cell_html(rows: pd.DataFrame, key: tuple, score: float | None, is_chosen: bool,
               scale: tuple[float, float], score_cols: list[str]) -> str:
    prompt, site, layer, col = key
    classes = "cell chosen" if is_chosen else "cell"
    texts = []
    for _, r in rows.iterrows():
        text = _text(r["interpretation"])
        if not text and "error" in r.index and _text(r["error"]):
            classes += " error"
            text = f"error: {_text(r['error'])}"
        tok = f'<span class="tok">[{_esc(r["source_token"])}]</span> ' if len(rows) > 1 else ""
        texts.append(tok + _esc(text))
    star = '<span class="star">&#9733;</span>' if is_chosen else ""
    fill = colour(score, *scale)
    style = f' style="background:{fill}"' if fill else ""
    score_attr = "" if score is None else f' data-score="{score!r}"'
    return (
        f'<td class="{classes}" data-prompt="{_esc(prompt)}" data-site="{_esc(site)}" '
        f'data-layer="{_fmt_num(layer)}" data-col="{_fmt_num(col)}"{score_attr}{style} '
        f'title="{_esc(_tooltip(rows, score_cols))}">{star}{"<br>".join(texts)}</td>'
    )


def _targets_line(grid: pd.DataFrame) -> str:
    """Where the grid's vectors were written: target layer(s) and target site(s)."""
    same = (grid["target_layer"] == grid["source_layer"]).all()
    layers = "= source layer" if same else ", ".join(_fmt_num(v) for v in sorted(grid["target_layer"].unique()))
    sites = _ordered_unique(grid["target_site"]) if "target_site" in grid.columns else [None]
    named = ", ".join("the source's own site" if s is None or (isinstance(s, float) and math.isnan(s)) else str(s)
                      for s in sites)
    return f"target layer {layers} &middot; target site {_esc(named)}"


def _grid_html(grid: pd.DataFrame, prompt: str, site: str, columns: str, score_column: str | None,
               cell_scores: pd.Series, chosen: set, scale: tuple[float, float], score_cols: list[str],
               threshold: float | None = None) -> str:
    layers = sorted(grid["source_layer"].unique())
    cols = sorted(grid[columns].unique())
    col_label = "&alpha; = " if columns == "alpha" else "target L"
    head = "".join(f"<th>{col_label}{_esc(_fmt_num(c))}</th>" for c in cols)
    pick_head = "<th>chosen</th>" if score_column else ""
    by_cell = dict(tuple(grid.groupby(["source_layer", columns], sort=False)))
    body = []
    for layer in layers:
        tds, pick, best = [], "", None
        for col in cols:
            rows = by_cell.get((layer, col))
            if rows is None:
                tds.append('<td class="missing" title="no result (unfinished run?)"></td>')
                continue
            key = (prompt, site, layer, col)
            score = finite_score(cell_scores.get(key)) if score_column else None
            tds.append(_cell_html(rows, key, score, key in chosen, scale, score_cols))
            if key in chosen:
                pick = f"&#9733; {col_label}{_esc(_fmt_num(col))}"
            if score is not None and (best is None or score > best[0]):
                best = (score, col)
        if not pick and best is not None and threshold is not None:
            pick = f"none &gt; {threshold:g} (best {best[0]:.2f} at {col_label}{_esc(_fmt_num(best[1]))})"
        pick_td = f'<td class="pick">{pick}</td>' if score_column else ""
        body.append(f'<tr><th>L{_esc(_fmt_num(layer))}</th>{"".join(tds)}{pick_td}</tr>')
    tokens = ", ".join(repr(t) for t in _ordered_unique(grid["source_token"]))
    targets = " | ".join(_text(t) for t in _ordered_unique(grid["target_prompt"]))
    attrs = f'data-prompt="{_esc(prompt)}" data-site="{_esc(site)}"'
    return (
        f'<section class="grid-block" {attrs}>\n'
        f"<h2>{_esc(prompt)} &mdash; {_esc(site)}</h2>\n"
        f'<div class="sub">source token(s): {_esc(tokens)} &middot; target prompt: {_esc(targets)} &middot; '
        f'{_targets_line(grid)}{"" if threshold is None else f" &middot; threshold {threshold:g}"}</div>\n'
        f'<table class="grid" {attrs}>\n'
        f"<thead><tr><th>layer</th>{head}{pick_head}</tr></thead>\n"
        f"<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n</section>"
    )


def _options(values: list, selected) -> str:
    opts = ['<option value="*">(all)</option>']
    for v in values:
        sel = " selected" if v == selected else ""
        opts.append(f'<option value="{_esc(v)}"{sel}>{_esc(v)}</option>')
    return "".join(opts)


def _legend(score_column: str | None, scale: tuple[float, float], threshold: float | None = None) -> str:
    if score_column is None:
        return '<span class="legend">no score column: cells uncoloured</span>'
    lo, hi = scale
    return (
        f'<span class="legend" id="legend"><b>{_esc(score_column)}</b>'
        f'<span id="legend-min">{lo:.3g}</span><span class="bar"></span>'
        f'<span id="legend-max">{hi:.3g}</span>'
        + ("<span>&#9733; = best per row (ties: smallest)</span></span>" if threshold is None else
           f"<span>&#9733; = best per row above the threshold {threshold:g} (ties: smallest)</span></span>")
    )


def _meta(df: pd.DataFrame, config: dict | None, columns: str) -> str:
    parts = []
    if config and config.get("model"):
        parts.append(f"model <b>{_esc(config['model'])}</b>")
    parts.append(f"{len(df)} rows")
    parts.append(f"rows = source layer, columns = {_esc(columns)}")
    return " &middot; ".join(parts)


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #

def render_report(df: pd.DataFrame, config: dict | None = None, score_column: str | None = None,
                  columns: str = "alpha", title: str | None = None, threshold: float | None = None) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    score_column = _validate(df, score_column, columns)
    if threshold is None:
        threshold = default_threshold(score_column, config)
    score_cols = [c for c in df.columns if str(c).startswith(SCORE_PREFIX)]
    if score_column and score_column not in score_cols:
        score_cols.insert(0, score_column)
    cell_scores = _cell_scores(df, score_column, columns)
    finite = [s for s in (finite_score(v) for v in cell_scores.tolist()) if s is not None]
    scale = (min(finite), max(finite)) if finite else (0.0, 0.0)
    chosen = choose_cells(df, score_column, columns, threshold) if score_column else set()

    prompts = _ordered_unique(df["source_prompt"])
    sites = _ordered_unique(df["site"])
    grids = [
        _grid_html(grid, prompt, site, columns, score_column, cell_scores, chosen, scale, score_cols,
                   threshold if score_column else None)
        for (prompt, site), grid in df.groupby(["source_prompt", "site"], sort=False)
    ]
    if title is None:
        model = (config or {}).get("model")
        title = f"Superscopes sweep: {model}" if model else "Superscopes sweep"
    config_obj = config if config is not None else {}
    return PAGE.format(
        csp=csp(JS),
        title=_esc(title),
        css=CSS.replace("LEGEND_STOPS", ", ".join(f"rgb{c}" for c in (LOW_RGB, MID_RGB, HIGH_RGB))),
        meta=_meta(df, config, columns),
        prompt_options=_options(prompts, prompts[0]),
        site_options=_options(sites, None),
        legend=_legend(score_column, scale, threshold),
        grids="\n".join(grids),
        config_pretty=_esc(json.dumps(config_obj, indent=2, ensure_ascii=False, default=str)),
        config_json=safe_json(config_obj),
        js=JS,
    )


def write_report(df: pd.DataFrame, path, config: dict | None = None, score_column: str | None = None,
                 columns: str = "alpha", title: str | None = None, threshold: float | None = None) -> Path:
    """Write the self-contained HTML explorer of a results frame to ``path``.

    ``columns`` is the grid's column variable, ``"alpha"`` or ``"target_layer"``;
    grid rows are ``source_layer``; one grid per (source_prompt, site).
    ``score_column`` colours the cells and picks the chosen cell per row
    (default: the first ``score_*`` column, if any); only a cell above ``threshold`` is starred
    (default: :func:`default_threshold`).  Returns the path written.
    """
    page = render_report(df, config=config, score_column=score_column, columns=columns, title=title,
                         threshold=threshold)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def write_report_from_run(run_dir, path=None, score_column: str | None = None, columns: str = "alpha") -> Path:
    """Read ``run_dir/config.json`` + ``run_dir/rows.jsonl``, write the report.

    Default output: ``run_dir/report.html``.  Raises FileNotFoundError naming the
    missing path, ValueError naming a bad file or missing column.
    """
    df, config = load_run(run_dir)
    df = merge_scores(df, run_dir)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{Path(run_dir) / 'rows.jsonl'} is missing column(s): {', '.join(missing)}")
    out = Path(run_dir) / "report.html" if path is None else Path(path)
    return write_report(df, out, config=config, score_column=score_column, columns=columns)


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise _ArgumentError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="superscopes report", description="Write the self-contained HTML explorer of a run directory.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory with config.json and rows.jsonl")
    p.add_argument("--out", default=None, help="output HTML path (default: RUN_DIR/report.html)")
    p.add_argument("--score", default=None, metavar="COLUMN",
                   help="score column colouring the cells (default: first score_* column)")
    p.add_argument("--columns", default="alpha", choices=GRID_COLUMNS, help="grid column variable")
    return p


def main(argv: list[str] | None = None) -> int:
    """``superscopes report RUN_DIR [--out PATH] [--score COLUMN] [--columns alpha|target_layer]``."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        ns = build_parser().parse_args(argv)
        path = write_report_from_run(ns.run_dir, ns.out, score_column=ns.score, columns=ns.columns)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except (_ArgumentError, FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
