"""Shared helpers of the Superscopes reproduction scripts (figures 1-3, Alexander)."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from experiments.run_args import add_resume, store_kwargs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "out" / "superscopes"
PAPER_LAYERS = 40  # Llama-2-13b-chat


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ data


def read_fig3_tsv(path: Path | str) -> list[tuple[str, str]]:
    """``[(prompt, paper_last_token)]`` from the TSV (``#`` lines are comments)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Figure 3 prompt file not found: {path}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip():
            raise ValueError(f"{path}:{n}: expected 'prompt<TAB>paper_last_token', got {line!r}")
        out.append((parts[0].strip(), parts[1].strip()))
    if not out:
        raise ValueError(f"no prompts in {path}")
    return out


def load_fig3_prompts(path: Path | str | None = None) -> list[tuple[str, str]]:
    """The 48 Figure 3 prompts: ``path``, else ``superscopes_nn.datasets.load_fig3_prompts()``
    (``superscopes_fig3_prompts.tsv`` in the shared data folder)."""
    if path is None:
        from superscopes_nn.datasets import load_fig3_prompts as lib_loader

        return [(str(p), str(t)) for p, t in lib_loader()]
    return read_fig3_tsv(path)


# ------------------------------------------------------------------ CLI


def parse_layers(spec: str | None, n_layers: int, default: Sequence[int]) -> list[int]:
    """``"1-7"``, ``"all"``, ``"0,2,4"`` or None (= ``default``), clipped to the model's depth."""
    if spec is None:
        layers = list(default)
    elif spec.strip().lower() == "all":
        layers = list(range(n_layers))
    else:
        layers = []
        for part in spec.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    a, b = part.split("-", 1)
                    layers.extend(range(int(a), int(b) + 1))
                else:
                    layers.append(int(part))
            except ValueError:
                raise ValueError(f"bad --layers {spec!r}: use e.g. '1-7', '0,2,4' or 'all'") from None
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range for a model with {n_layers} layers (valid 0..{n_layers - 1})")
    if not layers:
        raise ValueError(f"empty layer list from --layers {spec!r}")
    return sorted(set(layers))


def scaled_range(paper_lo: int, paper_hi: int, n_layers: int, paper_n: int = PAPER_LAYERS) -> list[int]:
    """Paper layers ``paper_lo..paper_hi`` of a ``paper_n``-layer model mapped onto ``n_layers``
    (floor of the low end, ceil of the high end: at least the scaled span, never empty)."""
    lo = math.floor(paper_lo * n_layers / paper_n)
    hi = math.ceil(paper_hi * n_layers / paper_n)
    return list(range(max(0, lo), min(n_layers - 1, max(hi, lo + 1)) + 1))


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="gemma-3-270m", help="embedded model name or HF id/path")
    p.add_argument("--layers", default=None, help="e.g. 1-7, 0,2,4 or all (default: the paper's, scaled)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output directory (CSV + PNG)")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return add_resume(p)


def get_model(name: str, model=None):
    if model is not None:
        return model
    from superscopes_nn import load_model

    t0 = time.perf_counter()
    m = load_model(name)
    log(f"loaded {name} in {time.perf_counter() - t0:.1f} s")
    return m


def n_layers_of(model) -> int:
    from superscopes_nn.architectures import num_layers

    return num_layers(model._module.config)


def score(df: pd.DataFrame, cosine: Callable | None = None, embedder=None, references=None) -> pd.DataFrame:
    from superscopes_nn.superscopes import add_scores

    return add_scores(df, embedder=embedder, references=references, cosine=cosine)


def save_csv(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    if "token_ids" in out:
        out["token_ids"] = [json.dumps(list(map(int, t))) if isinstance(t, (list, tuple)) else t for t in out.token_ids]
    out.to_csv(path, index=False)
    return path


def read_saved_csv(path) -> pd.DataFrame:
    """A CSV written by :func:`save_csv`, back as a sweep DataFrame without score columns
    (empty interpretations stay ``""``; error rows get ``interpretation`` None)."""
    df = pd.read_csv(path, keep_default_na=False, na_values={"error": [""]})
    df = df.drop(columns=[c for c in df.columns if c.startswith("score_")])
    df["interpretation"] = [None if isinstance(e, str) and e else t for t, e in zip(df.interpretation, df.error)]
    df["token_ids"] = [json.loads(t) if isinstance(t, str) and t.startswith("[") else t for t in df.token_ids]
    return df


# ------------------------------------------------------------------ figures


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid_figure(df: pd.DataFrame, path: Path, title: str, value: str = "score_source_cosine",
                text_width: int = 22) -> Path:
    """Layers (rows) x alpha (columns) heatmap of ``value`` with the interpretation in each cell."""
    plt = _mpl()
    import numpy as np

    layers = sorted(df.source_layer.unique())
    alphas = sorted(df.alpha.unique())
    val = np.full((len(layers), len(alphas)), np.nan)
    txt = [["" for _ in alphas] for _ in layers]
    li = {l: i for i, l in enumerate(layers)}
    ai = {a: j for j, a in enumerate(alphas)}
    for r in df.itertuples(index=False):
        i, j = li[r.source_layer], ai[r.alpha]
        val[i, j] = getattr(r, value)
        t = r.interpretation if isinstance(r.interpretation, str) else "(error)"
        t = " ".join("".join(c if c.isprintable() else "·" for c in t).split())
        txt[i][j] = (t[: text_width - 1] + "…") if len(t) > text_width else t
    fig, ax = plt.subplots(figsize=(1.9 * len(alphas) + 2, 0.55 * len(layers) + 1.6))
    im = ax.imshow(val, cmap="viridis", vmin=0, vmax=max(0.6, float(np.nanmax(val)) if np.isfinite(val).any() else 1),
                   aspect="auto")
    for i in range(len(layers)):
        for j in range(len(alphas)):
            v = val[i, j]
            ax.text(j, i, f"{txt[i][j]}\n{v:.2f}" if np.isfinite(v) else txt[i][j], ha="center", va="center",
                    fontsize=6.5, color="white" if not np.isfinite(v) or v < 0.35 else "black")
    ax.set_xticks(range(len(alphas)), [f"α={a:g}" for a in alphas])
    ax.set_yticks(range(len(layers)), [f"layer {l}" for l in layers])
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=value.replace("score_", "") + " (MiniLM)", fraction=0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def bars_figure(table: pd.DataFrame, path: Path, title: str, n_prompts: int) -> Path:
    """Grouped bars: successes per layer, Patchscopes (alpha 1) vs Superscopes (alpha 3..15)."""
    plt = _mpl()
    import numpy as np

    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(table) + 2), 3.6))
    ax.bar(x - 0.2, table.patchscopes, 0.4, label="Patchscopes (α=1)", color="#8c8c8c")
    ax.bar(x + 0.2, table.superscopes, 0.4, label="Superscopes (α∈3..15)", color="#d62728")
    ax.set_xticks(x, [str(l) for l in table.source_layer])
    ax.set_xlabel("layer (MLP output)")
    ax.set_ylabel(f"successes (of {n_prompts} prompts)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ one-prompt grid (figs 1, 2, Alexander)


def run_single_prompt(name: str, prompt: str, token: str, site: str, alphas: Sequence[float],
                      default_layers: Callable[[int], list[int]], argv=None, model=None, cosine=None,
                      embedder=None, description: str = "", target_layer: int | None = None) -> dict:
    """Run one (prompt, token) over layers x alphas, score, write CSV + grid PNG, print a summary."""
    from superscopes_nn.superscopes import detect_alpha, rule_agreement, superscope

    p = base_parser(description or f"Superscopes {name}: {prompt!r}, token {token!r}, {site}")
    p.add_argument("--target-layer", type=int, default=target_layer,
                   help="target layer (default: the source layer)")
    p.add_argument("--from-csv", default=None, help="re-score a saved CSV instead of running the sweep")
    args = p.parse_args(argv)
    out = Path(args.out)
    tag = Path(str(args.model)).name
    if args.from_csv:
        df = read_saved_csv(args.from_csv)
        n = int(df.source_layer.max()) + 1
        layers = sorted(int(l) for l in df.source_layer.unique())
        t_run = float("nan")
    else:
        m = get_model(args.model, model)
        n = n_layers_of(m)
        layers = parse_layers(args.layers, n, default_layers(n))
        t0 = time.perf_counter()
        df = superscope(m, prompt, site=site, layers=layers, alphas=alphas, token=token,
                        target_layer=args.target_layer, max_new_tokens=args.max_new_tokens,
                        max_batch_size=args.batch_size, progress=args.progress,
                        **store_kwargs(args, out, f"{name}_{tag}"))
        t_run = time.perf_counter() - t0
        save_csv(df, out / f"{name}_{tag}_raw.csv")  # unscored: re-score with --from-csv
    t0 = time.perf_counter()
    df = score(df, cosine=cosine, embedder=embedder)
    t_score = time.perf_counter() - t0
    csv = save_csv(df, out / f"{name}_{tag}.csv")
    png = grid_figure(df, out / f"{name}_{tag}.png",
                      f"{prompt!r} token {df.source_token.iat[0]!r}, {site}, {tag} ({n} layers)")
    best = detect_alpha(df)
    agree = rule_agreement(df)
    log(f"{name}: {prompt!r} token {df.source_token.iat[0]!r} site {site} layers {layers} alphas "
        f"{[float(a) for a in alphas]}: {len(df)} rows, sweep {t_run:.1f} s, scoring {t_score:.1f} s")
    for r in best.itertuples(index=False):
        base = df[(df.source_layer == r.source_layer) & (df.alpha == 1.0)]
        b = f"α=1 {base.score_source_cosine.iat[0]:.2f} {base.interpretation.iat[0]!r}; " if len(base) else ""
        log(f"  layer {r.source_layer:2d}: {b}best α={r.alpha:g} cos {r.score:.2f} {r.interpretation!r}")
    log(f"  detection rules agree (source_cosine vs stability) on {agree['agree']}/{agree['groups']} layers")
    log(f"wrote {csv} and {png}")
    return {"df": df, "best": best, "csv": csv, "png": png, "layers": layers, "sweep_s": t_run,
            "score_s": t_score, "agreement": agree}
