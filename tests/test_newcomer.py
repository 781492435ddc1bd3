"""The newcomer's first hour (issue 42): each point checked where it can fail, fast (tiny models, no Gemma).

1. a rerun of an experiment with the same settings and no ``--resume`` is one ``error:`` line naming ``--resume``
   and ``--out``, before any model loads; other settings get their own run folder (the settings tag);
   ``explain`` into a folder with rows is refused the same way;
4. ``explain --out DIR --resume`` takes the model and every setting not given again from DIR's config.json;
5. ``explain`` saves its scores, so ``superscopes report`` on the run is coloured;
6. / 7. ``--help`` shows defaults and the full description under ``superscopes run NAME``; every script's
   default ``--out`` is ``runs/<name>``; ``superscopes --help`` lists ``plan``; the README's experiments table
   names exactly the ``superscopes run`` names;
8. the two ``past_key_values`` deprecation messages are dropped at the call and nothing else is;
   progress bars are off where stderr is not a TTY, and restored after;
9. a result frame's repr keeps ``interpretation`` when it is too wide;
10. the README's result columns are a real result's columns, in order; docs/results_superscopes.md names
   only files and Python names that exist.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest

from superscopes_nn.output.cli import main
from superscopes_nn.testing.tiny_models import save_tiny_checkpoint, tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_newcomer")
    save_tiny_checkpoint(d, "llama", seed=3)
    return str(d)


def _no_model(*a, **k):
    raise AssertionError("a model was loaded")


# ------------------------------------------------------------------ 1. reruns


def test_a_rerun_with_the_same_settings_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import superscopes_nn

    monkeypatch.setattr(superscopes_nn, "load_model", _no_model)
    held = tmp_path / "fig3_gemma-3-270m_official--layers-4--limit-2_source_rows"
    held.mkdir()
    (held / "rows.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(SystemExit) as stop:
        main(["run", "superscopes_fig3", "--limit", "2", "--layers", "4", "--out", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {held} already holds finished rows")
    assert "--resume" in err and "--out" in err
    # other settings (--limit 3) never meet those rows: the parse passes and the run goes on to load its model
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["run", "superscopes_fig3", "--limit", "3", "--layers", "4", "--out", str(tmp_path)])
    # the same settings with --resume go on too
    with pytest.raises(AssertionError, match="a model was loaded"):
        main(["run", "superscopes_fig3", "--limit", "2", "--layers", "4", "--out", str(tmp_path), "--resume"])


def test_the_settings_tag_names_what_differs_from_the_defaults():
    from experiments.common import parser
    from experiments.run_folders import rows_dir

    p = parser("d.", out="runs/x", layers_help="layers")
    p.add_argument("--prompts", default=None)
    assert p.parse_args([]).settings == "" and p.parse_args(["--model", "gemma-3-270m"]).settings == ""
    assert p.parse_args(["--out", "elsewhere", "--max-batch-size", "3", "--progress"]).settings == ""
    args = p.parse_args(["--limit", "2", "--layers", "4", "--model", "smollm2-135m"])
    assert args.settings == "--layers-4--limit-2--model-smollm2-135m"
    assert rows_dir("runs/x", "x", args) == Path("runs/x/x--layers-4--limit-2--model-smollm2-135m_rows")
    one, two = (p.parse_args(["--prompts", f"/data/{n}/p.tsv"]).settings for n in "ab")
    assert one != two and "_" not in one  # a path is cleaned and hashed, never ambiguous


def test_explain_into_a_folder_with_rows_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from superscopes_nn.structure import models

    out = tmp_path / "run"
    out.mkdir()
    (out / "rows.jsonl").write_text('{"a": 1}\n')
    monkeypatch.setattr(models, "load_model", _no_model)
    assert main(["explain", "Pink Floyd", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "--out" in err


# ------------------------------------------------------------------ 4. / 5. explain: resume and scores


def test_explain_resumes_with_its_own_settings_and_saves_scores_the_report_shows(model_dir, tmp_path, monkeypatch,
                                                                                  capsys):
    from superscopes_nn.structure import models

    out = tmp_path / "pf"
    assert main(["explain", "Pink Floyd", "--sites", "residual", "--layers", "0,1", "--alphas", "1", "--model",
                 model_dir, "--max-new-tokens", "3", "--out", str(out), "--no-progress"]) == 0
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 2 and all("score_source_cosine" in s for s in scores)
    loaded, real = [], models.load_model
    monkeypatch.setattr(models, "load_model", lambda name, **kw: loaded.append(name) or real(name, **kw))
    assert main(["explain", "Pink Floyd", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert loaded == [model_dir]  # the run's own model, not the default one
    assert sum(1 for _ in open(out / "rows.jsonl")) == 2  # nothing recomputed
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "background:rgb" in page and "no score column" not in page
    assert "target site residual" in page and "threshold 0.3" in page


# ------------------------------------------------------------------ 6. / 7. help, names, folders


def test_superscopes_help_lists_plan(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert re.search(r"^\s+plan\s", capsys.readouterr().out, re.M)


def test_every_script_help_has_its_run_name_defaults_and_whole_description(capsys):
    import experiments
    from experiments.common import first_paragraph

    for name, module in experiments.EXPERIMENTS.items():
        with pytest.raises(SystemExit) as stop:
            main(["run", name, "--help"])
        assert stop.value.code == 0
        raw = capsys.readouterr().out
        out = " ".join(raw.split())
        assert out.startswith(f"usage: superscopes run {name} "), (name, out[:80])
        description = " ".join(raw.split("\n\n")[1].split())  # argparse: usage, description, options
        assert description[-1] in ".?)", (name, description)  # a whole sentence, never cut
        assert f"(default: runs/{name})" in out and "(default: 64)" in out, name  # one folder scheme
    fig3 = first_paragraph(importlib.import_module(experiments.EXPERIMENTS["superscopes_fig3"]).__doc__)
    assert fig3.endswith("each beside its chance level.")
    with pytest.raises(SystemExit):
        main(["run", "superscopes_fig3", "--help"])
    assert "38 min" in capsys.readouterr().out


def test_the_readme_experiments_table_shows_the_run_names():
    import experiments

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| paper | command |"):]
    table = table[: table.index("\n\n")]
    named = set(re.findall(r"superscopes run (\w+)", table)) | set(re.findall(r"`(superscopes_\w+)`", table))
    assert named == set(experiments.EXPERIMENTS)


# ------------------------------------------------------------------ 8. quiet generate, bars


def test_only_the_two_deprecation_messages_are_dropped(caplog):
    from superscopes_nn.core.quiet import quiet_generate

    log = logging.getLogger("transformers.utils.generic")
    with caplog.at_level(logging.WARNING, logger="transformers.utils.generic"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with quiet_generate():
                log.warning("`past_key_values`/`cache_params` are deprecated. Use `cache` instead.")
                log.warning("some other transformers message")
                warnings.warn("`past_key_values` is deprecated and will be removed in version 6.0.0 for "
                              "`X.generate`. Use `cache` instead.", FutureWarning)
                warnings.warn("another FutureWarning", FutureWarning)
        log.warning("`past_key_values`/`cache_params` are deprecated. Use `cache` instead.")  # outside: shown
    assert [str(w.message) for w in seen] == ["another FutureWarning"]
    assert [r.getMessage() for r in caplog.records] == [
        "some other transformers message", "`past_key_values`/`cache_params` are deprecated. Use `cache` instead."]


def test_a_sweep_prints_no_deprecation_noise(capfd):
    from superscopes_nn import sweep

    m = tiny_model("llama", seed=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        sweep(m, "Pink Floyd", layers=[0, 1], alphas=[1, 2], max_new_tokens=2, progress=False)
    assert not [w for w in seen if "past_key_values" in str(w.message)]
    assert "past_key_values" not in capfd.readouterr().err


def test_bars_are_off_without_a_tty_and_restored_after():
    import io

    from transformers.utils import logging as hf_logging

    from superscopes_nn.core.quiet import bars_only_on_a_tty

    before = hf_logging.is_progress_bar_enabled()
    with bars_only_on_a_tty(io.StringIO()):
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled() == before

    class Tty(io.StringIO):
        def isatty(self):
            return True

    with bars_only_on_a_tty(Tty()):
        assert hf_logging.is_progress_bar_enabled() == before


# ------------------------------------------------------------------ 9. / 10. the frame and the docs


def test_a_results_repr_keeps_interpretation_and_the_readme_lists_its_columns():
    from superscopes_nn import Amplify, Source, Target, patchscope

    m = tiny_model("llama", seed=1)
    res = patchscope(m, [(Source("Pink Floyd", layer=1), Target("The currency of x", layer=2), Amplify(3))],
                     max_new_tokens=2)
    with pd.option_context("display.max_columns", 6, "display.width", 80):
        assert "interpretation" in repr(res)
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    listed = re.search(r"Results are tidy DataFrames, one row per patch: `([^`]*)`", text)[1]
    assert [c.strip() for c in listed.split(",")] == list(res.columns)


def _expand(name: str) -> list[str]:
    m = re.search(r"\{([^}]*)\}", name)
    return [name] if not m else [x for part in m[1].split(",") for x in _expand(name[: m.start()] + part +
                                                                                    name[m.end():])]


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", ["docs/results_superscopes.md"])
def test_the_docs_name_only_what_exists(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    missing = []
    for name in re.findall(r"`([^`\s]+)`", text):
        for n in _expand(name):
            if re.fullmatch(r"(superscopes_nn|experiments|benchmarks|tests|scripts|docs)/[\w/.-]+\.\w+", n):
                missing += [] if (ROOT / n).exists() else [n]
            elif re.fullmatch(r"(superscopes_nn|experiments)(\.\w+)+", n):
                missing += [] if _resolves(n) else [n]
    assert missing == []


@pytest.mark.parametrize("module", ["experiments.superscopes.fig3", "experiments.hopping_too_late.backpatching"])
def test_a_paper_script_run_as_a_module_names_itself_in_its_usage(module):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: python -m {module} ")


def test_a_quick_run_at_the_default_out_gets_its_own_folder(tmp_path, monkeypatch):
    from experiments.common import parser

    monkeypatch.chdir(tmp_path)
    p = parser("d.", out="runs/x", layers_help="layers")
    assert p.parse_args([]).out == "runs/x"  # the full run at the defaults: the folder the docs name
    quick = p.parse_args(["--limit", "2", "--layers", "4"])
    assert quick.out == "runs/x--layers-4--limit-2" and quick.settings == "--layers-4--limit-2"
    assert p.parse_args(["--limit", "2", "--out", "mine"]).out == "mine"  # an explicit --out as given
    # a finished quick run is refused again in its own folder, and never blocks the full run
    held = tmp_path / "runs" / "x--layers-4--limit-2" / "x--layers-4--limit-2_rows"
    held.mkdir(parents=True)
    (held / "rows.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(SystemExit) as stop:
        p.parse_args(["--limit", "2", "--layers", "4"])
    assert stop.value.code == 2
    assert p.parse_args([]).out == "runs/x"
