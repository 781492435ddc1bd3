"""The explorer page's static parts (CSS, the filter script, the HTML skeleton) for :mod:`superscopes_nn.output.report`.

Kept apart so ``report.py`` holds only the logic that fills them; the page is self-contained
(no network) and its script only toggles visibility.
"""

import base64
import hashlib
import json

CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 1.2em 2em; color: #222; background: #fff; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.2em 0 .3em; }
.meta { color: #555; margin-bottom: .8em; }
.controls { display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap;
            padding: .6em .8em; background: #f4f4f4; border-radius: 6px; }
.controls label { font-weight: 600; }
.controls select { margin-left: .4em; max-width: 28em; }
.legend { display: flex; align-items: center; gap: .5em; }
.legend .bar { width: 160px; height: 14px; border: 1px solid #aaa; background: linear-gradient(to right, LEGEND_STOPS); }
.grid-block .sub { color: #555; font-size: .9em; margin-bottom: .4em; }
table.grid { border-collapse: collapse; margin-bottom: 1em; }
table.grid th { background: #eee; padding: .3em .6em; font-weight: 600; white-space: nowrap;
                border: 1px solid #ccc; }
table.grid td { border: 1px solid #ccc; padding: .35em .5em; vertical-align: top;
                max-width: 15em; min-width: 7em; font-size: .88em; white-space: pre-wrap;
                overflow-wrap: anywhere; }
td.cell:hover { filter: brightness(.93); }
td.cell.chosen { outline: 3px solid #111; outline-offset: -3px; font-weight: 600; }
td.cell .star { color: #b8860b; margin-right: .2em; }
td.cell .tok { color: #666; font-size: .85em; }
td.cell.error { color: #a00; font-style: italic; }
td.missing { background: repeating-linear-gradient(45deg, #fafafa, #fafafa 4px, #eee 4px, #eee 8px); }
td.pick { white-space: nowrap; color: #444; background: #fcfcfc; }
details.config { margin-top: 1.5em; }
details.config summary { cursor: pointer; font-weight: 600; }
details.config pre { background: #f6f8fa; padding: .8em; border-radius: 6px; overflow: auto; max-height: 40em; }
.hidden { display: none; }
"""

# Filters grids client-side: a grid is shown when both select boxes match it
# (or are set to "all").
JS = """
(function () {
  var promptSel = document.getElementById("prompt-filter");
  var siteSel = document.getElementById("site-filter");
  function apply() {
    var p = promptSel.value, s = siteSel.value, shown = 0;
    document.querySelectorAll(".grid-block").forEach(function (block) {
      var ok = (p === "*" || block.dataset.prompt === p) && (s === "*" || block.dataset.site === s);
      block.classList.toggle("hidden", !ok);
      if (ok) { shown += 1; }
    });
    document.getElementById("shown-count").textContent = shown;
  }
  promptSel.addEventListener("change", apply);
  siteSel.addEventListener("change", apply);
  apply();
})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
<div class="meta">{meta}</div>
<div class="controls">
  <label>Prompt<select id="prompt-filter">{prompt_options}</select></label>
  <label>Site<select id="site-filter">{site_options}</select></label>
  <span><span id="shown-count">0</span> grid(s) shown</span>
  {legend}
</div>
<main id="grids">
{grids}
</main>
<details class="config" id="config-block">
<summary>Run config</summary>
<pre id="config">{config_pretty}</pre>
</details>
<script type="application/json" id="config-json">{config_json}</script>
<script>{js}</script>
</body>
</html>
"""


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #


# Pastel diverging scale (low -> mid -> high), readable with black text.
LOW_RGB, MID_RGB, HIGH_RGB = (239, 138, 98), (247, 247, 247), (103, 169, 207)


def safe_json(obj) -> str:
    """JSON that can sit inside <script>: '<', '>' and '&' as \\u escapes (so no '</')."""
    text = json.dumps(obj, ensure_ascii=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def colour(score: float | None, vmin: float, vmax: float) -> str | None:
    """CSS colour on the low-mid-high scale, or None for a missing score."""
    if score is None:
        return None
    t = 0.5 if vmax <= vmin else (score - vmin) / (vmax - vmin)
    t = min(1.0, max(0.0, t))
    lo, hi, u = (LOW_RGB, MID_RGB, t * 2) if t < 0.5 else (MID_RGB, HIGH_RGB, t * 2 - 1)
    r, g, b = (round(a + (c - a) * u) for a, c in zip(lo, hi))
    return f"rgb({r},{g},{b})"


def csp(js: str) -> str:
    digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode()
    return (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
            f"script-src 'sha256-{digest}'")
