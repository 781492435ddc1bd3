"""The HTML explorer (superscopes_nn.output.report): pure-Python checks + one real headless-browser test.

The browser test needs Debian's chromium at /usr/bin/chromium and the `playwright` Python
package (scripts/install_browser.sh installs both; playwright's own browser download is never
used).  It writes a screenshot to tests/artifacts/report.png (git-ignored).
"""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from superscopes_nn.output.report import choose_cells, main, write_report, write_report_from_run

PROMPTS = ["Alexander the Great", "Marie Curie"]
SITES = ["mlp_out", "residual"]
LAYERS = [0, 1, 2]
ALPHAS = [1.0, 2.0, 4.0]
XSS = "<script>window.__pwned = 1</script>"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("SUPERSCOPES_CHROMIUM", "/usr/bin/chromium")


def _score(p, s, layer, a):
    """Deterministic scores with known winners: a tie at L1 of the first prompt/site."""
    if (p, s, layer) == (0, 0, 1):
        return 0.5 if a in (2.0, 4.0) else 0.1  # tie between alpha 2 and 4 -> 2 wins
    return round(((p * 7 + s * 3 + layer * 5 + int(a) * 11) % 13) / 6.5 - 1.0, 3)


@pytest.fixture
def df():
    rows = []
    for (pi, prompt), (si, site), layer, a in itertools.product(
        enumerate(PROMPTS), enumerate(SITES), LAYERS, ALPHAS
    ):
        text = f"{prompt.split()[-1]} / {site} / L{layer} a{a:g}"
        if (pi, si, layer, a) == (0, 0, 0, 1.0):
            text = XSS + " & <b>not bold</b>"
        rows.append(dict(
            source_prompt=prompt, source_token=prompt.split()[-1], source_position=3,
            source_layer=layer, site=site, target_layer=layer, alpha=a,
            target_prompt="Syria: Country in the Middle East, x", interpretation=text,
            target_position=8, target_site=site, mapping="amplify", mapping_key=f"amplify:{a!r}",  # a row's key
            score_source_cosine=_score(pi, si, layer, a), token_ids=[1, 2, 3],
        ))
    return pd.DataFrame(rows)


CONFIG = {"model": "toy-model", "prompts": PROMPTS, "sites": SITES, "layers": LAYERS, "alphas": ALPHAS,
          "note": "</script><script>window.__pwned = 2</script>", "versions": {"superscopes_nn": "0.1.0"}}

CELL_RE = re.compile(r'<td class="cell([^"]*)" data-prompt="([^"]*)" data-site="([^"]*)" '
                     r'data-layer="([^"]*)" data-col="([^"]*)"')


def _cells(page: str):
    """(classes, prompt, site, layer, col) per td.cell, attribute values unescaped."""
    return [(m[0].split(), html.unescape(m[1]), html.unescape(m[2]), m[3], m[4]) for m in CELL_RE.findall(page)]


def _expected_chosen(df, columns="alpha", threshold=0.3):
    """Per grid row, the best cell (ties: smallest), if it is above the threshold (score_source_cosine's 0.3)."""
    out = set()
    for (p, s, layer), g in df.groupby(["source_prompt", "site", "source_layer"]):
        best = g["score_source_cosine"].max()
        if threshold is None or best > threshold:
            out.add((p, s, f"{layer}", f"{g[g.score_source_cosine == best][columns].min():g}"))
    return out


# ----------------------------------------------------------------------------- pure Python


def test_writes_html_with_one_cell_per_combo(df, tmp_path):
    out = write_report(df, tmp_path / "sub" / "r.html", config=CONFIG)
    assert out == tmp_path / "sub" / "r.html" and out.is_file()
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    cells = _cells(page)
    assert len(cells) == len(PROMPTS) * len(SITES) * len(LAYERS) * len(ALPHAS) == 36
    assert len({c[1:] for c in cells}) == 36
    assert page.count('<table class="grid"') == len(PROMPTS) * len(SITES)
    # self-contained: no external resources
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "@import" not in page and "url(http" not in page


def test_model_text_is_escaped(df, tmp_path):
    page = write_report(df, tmp_path / "r.html", config=CONFIG).read_text(encoding="utf-8")
    assert XSS not in page and "window.__pwned = 1</script>" not in page
    assert html.escape(XSS) in page
    assert "<b>not bold</b>" not in page
    # only the page's own two script tags (JSON config + the filter code)
    assert page.count("<script") == 2
    # config embedded safely: no '</' inside the JSON block, and it round-trips
    block = re.search(r'<script type="application/json" id="config-json">(.*?)</script>', page, re.S)[1]
    assert "</" not in block
    assert json.loads(block) == CONFIG
    assert html.escape(json.dumps(CONFIG, indent=2)) in page


def test_chosen_cell_is_max_score_ties_to_smallest_alpha(df, tmp_path):
    expected = _expected_chosen(df)
    assert ("Alexander the Great", "mlp_out", "1", "2") in expected  # the planted tie
    page = write_report(df, tmp_path / "r.html").read_text(encoding="utf-8")
    chosen = {c[1:] for c in _cells(page) if "chosen" in c[0]}
    assert chosen == expected
    below = len(PROMPTS) * len(SITES) * len(LAYERS) - len(chosen)
    assert 0 < below < len(PROMPTS) * len(SITES) * len(LAYERS)  # the fixture has rows on both sides of 0.3
    assert page.count("&#9733;") >= len(chosen)
    assert page.count("none &gt; 0.3 (best ") == below  # a below-threshold best is never starred, and says so
    assert "threshold 0.3" in page and "target layer = source layer" in page and "target site mlp_out" in page
    api = {(p, s, str(layer), f"{a:g}") for p, s, layer, a in choose_cells(df, threshold=0.3)}
    assert api == expected
    every = {(p, s, str(layer), f"{a:g}") for p, s, layer, a in choose_cells(df)}  # no threshold: every row's best
    assert every == _expected_chosen(df, threshold=None) and len(every) == len(PROMPTS) * len(SITES) * len(LAYERS)
    lower = write_report(df, tmp_path / "t.html", threshold=-2).read_text(encoding="utf-8")
    assert {c[1:] for c in _cells(lower) if "chosen" in c[0]} == every


def test_columns_target_layer(df, tmp_path):
    df = df.copy()
    df["target_layer"] = df["alpha"].map({1.0: 3, 2.0: 5, 4.0: 7})
    page = write_report(df, tmp_path / "r.html", columns="target_layer").read_text(encoding="utf-8")
    cells = _cells(page)
    assert len(cells) == 36 and {c[4] for c in cells} == {"3", "5", "7"}
    assert "target L5" in page
    assert {c[1:] for c in cells if "chosen" in c[0]} == _expected_chosen(df, "target_layer")


def test_no_score_column_means_no_colour_no_chosen(df, tmp_path):
    page = write_report(df.drop(columns="score_source_cosine"), tmp_path / "r.html").read_text(encoding="utf-8")
    cells = _cells(page)
    assert len(cells) == 36 and not any("chosen" in c[0] for c in cells)
    assert "background:rgb" not in page


def test_colour_legend_and_tooltip(df, tmp_path):
    page = write_report(df, tmp_path / "r.html", score_column="score_source_cosine").read_text(encoding="utf-8")
    lo, hi = df["score_source_cosine"].min(), df["score_source_cosine"].max()
    assert f'<span id="legend-min">{lo:.3g}</span>' in page
    assert f'<span id="legend-max">{hi:.3g}</span>' in page
    assert page.count('style="background:rgb(') == 36
    assert "score_source_cosine: 0.5" in page  # exact score in the tooltip


def test_missing_columns_and_bad_arguments_are_named(df, tmp_path):
    with pytest.raises(ValueError, match="interpretation"):
        write_report(df.drop(columns="interpretation"), tmp_path / "r.html")
    with pytest.raises(ValueError, match="score_nope"):
        write_report(df, tmp_path / "r.html", score_column="score_nope")
    with pytest.raises(ValueError, match="columns"):
        write_report(df, tmp_path / "r.html", columns="layer")
    with pytest.raises(ValueError, match="empty"):
        write_report(df.iloc[:0], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def _write_run(run_dir: Path, df: pd.DataFrame, config=CONFIG):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    df.to_json(run_dir / "rows.jsonl", orient="records", lines=True)
    return run_dir


def test_run_dir_round_trip(df, tmp_path):
    run = _write_run(tmp_path / "run", df)
    out = write_report_from_run(run)
    assert out == run / "report.html"
    page = out.read_text(encoding="utf-8")
    assert len(_cells(page)) == 36
    assert {c[1:] for c in _cells(page) if "chosen" in c[0]} == _expected_chosen(df)
    assert "toy-model" in page
    other = write_report_from_run(run, tmp_path / "x" / "o.html", columns="target_layer")
    assert other.is_file()


def test_run_dir_errors_name_the_path_or_column(df, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        write_report_from_run(tmp_path / "nope")
    run = _write_run(tmp_path / "run", df)
    (run / "rows.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="rows.jsonl"):
        write_report_from_run(run)
    run = _write_run(tmp_path / "run2", df.drop(columns="site"))
    with pytest.raises(ValueError, match="site"):
        write_report_from_run(run)
    (run / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        write_report_from_run(run)


def test_main_cli(df, tmp_path, capsys):
    run = _write_run(tmp_path / "run", df)
    out = tmp_path / "cli.html"
    assert main([str(run), "--out", str(out), "--score", "score_source_cosine", "--columns", "alpha"]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.is_file()
    for argv, needle in [([str(tmp_path / "missing")], "missing"),
                         ([str(run), "--score", "score_nope"], "score_nope"),
                         ([str(run), "--columns", "bad"], "--columns"),
                         ([], "RUN_DIR")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and err.startswith("error:") and len(err.strip().splitlines()) == 1
        assert "Traceback" not in err


# ----------------------------------------------------------------------------- real browser


@pytest.mark.browser
def test_in_headless_chromium(df, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (scripts/install_browser.sh)")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found (scripts/install_browser.sh installs Debian's chromium)")
    page_path = write_report(df, tmp_path / "report.html", config=CONFIG)
    console_errors, page_errors = [], []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=args, headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = ctx.new_page()
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")

            # default view: the first prompt, all sites
            per_grid = len(LAYERS) * len(ALPHAS)
            assert page.locator("td.cell:visible").count() == len(SITES) * per_grid
            assert page.locator(f'table.grid[data-prompt="{PROMPTS[0]}"]:visible').count() == len(SITES)
            assert page.locator(f'table.grid[data-prompt="{PROMPTS[1]}"]:visible').count() == 0
            assert page.locator("td.cell.chosen:visible").count() == len(
                [c for c in _expected_chosen(df) if c[0] == PROMPTS[0]])

            # the injected script is shown as text and never ran
            assert page.evaluate("typeof window.__pwned") == "undefined"
            xss_cell = page.locator('td.cell[data-prompt="Alexander the Great"][data-site="mlp_out"]'
                                    '[data-layer="0"][data-col="1"]')
            assert XSS in xss_cell.inner_text()
            assert page.locator("td.cell b").count() == 0

            # filters: another prompt, then one site, then everything
            page.select_option("#prompt-filter", PROMPTS[1])
            assert page.locator(f'table.grid[data-prompt="{PROMPTS[0]}"]:visible').count() == 0
            assert page.locator(f'table.grid[data-prompt="{PROMPTS[1]}"]:visible').count() == len(SITES)
            page.select_option("#site-filter", "residual")
            assert page.locator("table.grid:visible").count() == 1
            assert page.locator("td.cell:visible").count() == per_grid
            assert page.locator("#shown-count").inner_text() == "1"
            page.select_option("#prompt-filter", "*")
            page.select_option("#site-filter", "*")
            assert page.locator("td.cell:visible").count() == len(PROMPTS) * len(SITES) * per_grid

            # the config block opens and shows the JSON
            page.click("#config-block summary")
            assert '"model": "toy-model"' in page.locator("#config").inner_text()
            assert page.evaluate("JSON.parse(document.getElementById('config-json').textContent).model") == "toy-model"
            page.click("#config-block summary")

            # screenshot of the default view for humans
            page.select_option("#prompt-filter", PROMPTS[0])
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)

            assert page.evaluate("typeof window.__pwned") == "undefined"
            assert console_errors == [] and page_errors == []
            assert all(u.startswith(("file:", "data:")) for u in requests), requests
        finally:
            ctx.close()
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


# ------------------------------------------------------------------ one reader, one alpha chooser (from test_one_path)

from superscopes_nn.core import store  # noqa: E402
from superscopes_nn.core.specs import RESULT_COLUMNS  # noqa: E402
from superscopes_nn.output import report  # noqa: E402
from superscopes_nn.science import superscopes  # noqa: E402


def _one_record(layer: int, alpha: float, score: float) -> dict:
    rec = dict.fromkeys(RESULT_COLUMNS)
    rec.update(source_prompt="Pink Floyd", source_position=1, source_token="loyd", source_layer=layer,
               site="mlp_out", target_prompt="T x", target_position=1, target_layer=layer, target_site="mlp_out",
               mapping="amplify", mapping_key=f"amplify:{alpha!r}", alpha=alpha, model="m", target_model="m",
               interpretation=f"L{layer} a{alpha:g}", token_ids=[1], score_source_cosine=score)
    return rec


def test_report_reads_a_torn_rows_jsonl_through_the_store(tmp_path):
    assert report.load_run is store.load_run
    records = [_one_record(layer, a, 0.1 * layer + a / 100) for layer in (0, 1) for a in (1.0, 3.0)]
    (tmp_path / "config.json").write_text(json.dumps({"model": "m"}))
    text = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "rows.jsonl").write_text(text + json.dumps(_one_record(2, 6.0, 0.9))[:57])  # a kill mid-append
    page = report.write_report_from_run(tmp_path).read_text(encoding="utf-8")
    assert page.count('<td class="cell') == 4  # the torn row is not there, the 4 whole ones are
    assert "L2 a6" not in page and "L1 a3" in page
    df, config = store.load_run(tmp_path)
    assert len(df) == 4 and config == {"model": "m"}


def test_choose_cells_is_detect_alpha(monkeypatch):
    df = pd.DataFrame([_one_record(layer, a, s) for layer, a, s in
                       [(0, 1.0, 0.2), (0, 3.0, 0.5), (0, 6.0, 0.5), (1, 1.0, 0.9), (1, 3.0, float("nan"))]])
    calls = []
    real = superscopes.detect_alpha

    def spy(frame, score, by):
        calls.append((score, list(by)))
        return real(frame, score, by)

    monkeypatch.setattr(report, "detect_alpha", spy)
    chosen = report.choose_cells(df)
    assert calls == [("cell_score", ["source_prompt", "site", "source_layer"])]
    assert chosen == {("Pink Floyd", "mlp_out", 0, 3.0), ("Pink Floyd", "mlp_out", 1, 1.0)}  # tie -> smaller alpha
    picked = real(df, "score_source_cosine", ["source_prompt", "site", "source_layer"])
    assert {(r.source_prompt, r.site, r.source_layer, r.alpha) for r in picked.itertuples()} == chosen
