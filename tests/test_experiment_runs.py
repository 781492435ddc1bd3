"""Experiments keep every finished patched row on disk and resume (issue 4).

The library side: ``run_rows``/``patchscope``/``sweep`` with ``run_dir`` give the same
frame as without, stop mid-run (Ctrl-C) without losing finished chunks, and resume
running only the missing rows. The script side: each experiment script's rows land in
``OUT/<name><settings>_rows`` (the settings that differ from the defaults, issue 42); a crash (rows.jsonl
cut short) followed by ``--resume`` gives the same CSV as the uninterrupted run; a rerun with the same
settings without ``--resume`` is refused in one line before the model loads, and other settings get
their own run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import superscopes_nn.engine.rows as R
import superscopes_nn.engine.run as P
from superscopes_nn import ENTITY_PROMPT, Target, run_rows, sweep, sweep_rows

FIXTURE = Path(__file__).parent / "fixtures" / "two_hop_multihop_small.jsonl"
KW = dict(max_new_tokens=3, max_batch_size=4)


@pytest.fixture(scope="module")
def rows(model):
    return sweep_rows(model, ["Alexander the Great", "Pink Floyd"], layers=[0, 1, 2], alphas=[1, 4],
                      target=Target(ENTITY_PROMPT))  # 12 rows -> 3 chunks of 4


def jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def test_run_dir_gives_the_same_frame_and_writes_config(model, rows, tmp_path):
    plain = run_rows(model, rows, **KW)
    stored = run_rows(model, rows, run_dir=tmp_path / "r", config={"note": "x"}, **KW)
    assert stored.token_ids.tolist() == plain.token_ids.tolist()
    assert stored.interpretation.tolist() == plain.interpretation.tolist()
    assert len(jsonl(tmp_path / "r" / "rows.jsonl")) == len(rows)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["note"] == "x" and cfg["max_new_tokens"] == 3 and cfg["model"] == R.model_name(model)
    assert {"nnsight", "torch", "transformers", "superscopes_nn"} <= set(cfg["versions"])
    # the public wrappers forward the run store
    again = sweep(model, ["Pink Floyd"], layers=[0, 1, 2], alphas=[1, 4], target=Target(ENTITY_PROMPT),
                  run_dir=tmp_path / "s", progress=False, **KW)
    assert again.token_ids.tolist() == plain.token_ids.tolist()[6:]
    assert len(jsonl(tmp_path / "s" / "rows.jsonl")) == 6


def test_ctrl_c_keeps_finished_chunks_and_resume_runs_only_the_rest(model, rows, tmp_path, monkeypatch):
    reference = run_rows(model, rows, **KW)
    seen = []

    def interrupt_after_two(records):
        seen.append(len(records))
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_rows(model, rows, run_dir=tmp_path, on_chunk=interrupt_after_two, **KW)
    assert len(jsonl(tmp_path / "rows.jsonl")) == 8  # both finished chunks are on disk

    ran = []
    real = P.run_requests

    def counting(m, rs, *a, **kw):
        ran.extend(rs)
        return real(m, rs, *a, **kw)

    monkeypatch.setattr(P, "run_requests", counting)  # what run_rows runs for the missing rows
    resumed = P.run_rows(model, rows, run_dir=tmp_path, resume=True, **KW)
    assert len(ran) == 4
    assert resumed.token_ids.tolist() == reference.token_ids.tolist()
    assert len(jsonl(tmp_path / "rows.jsonl")) == len(rows)


def _cut(rows_file: Path, keep: int) -> None:
    """Simulate a crash: keep the first ``keep`` rows and a torn half line."""
    lines = rows_file.read_text().splitlines(keepends=True)
    rows_file.write_text("".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])


def test_backpatching_script_resumes_after_a_crash(model, tmp_path):
    from experiments.hopping_too_late import backpatching as bp

    args = ["--data", str(FIXTURE), "--limit", "3", "--max-new-tokens", "3", "--max-batch-size", "4",
            "--population", "all"]
    full = tmp_path / "full"
    bp.main(args + ["--out", str(full)], model=model)
    (run,) = full.glob("backpatching--*_rows")  # the folder records the settings (--data, --limit, ...)
    rows_file = run / "rows.jsonl"
    assert len(jsonl(rows_file)) == 18
    expected = pd.read_csv(full / "backpatching.csv")

    with pytest.raises(SystemExit) as stop:  # the same settings again: one line, before the model is touched
        bp.main(args + ["--out", str(full)], model=None)
    assert stop.value.code == 2
    # other settings: their own run folder, no collision (a changed max_new_tokens makes other rows)
    bp.main(["--data", str(FIXTURE), "--limit", "3", "--max-new-tokens", "4", "--out", str(full), "--population", "all"],
            model=model)
    assert len(list(full.glob("backpatching--*_rows"))) == 2

    _cut(rows_file, 7)
    (full / "backpatching.csv").unlink()
    bp.main(args + ["--out", str(full), "--resume", "--max-batch-size", "2"], model=model)  # batch size may change
    pd.testing.assert_frame_equal(pd.read_csv(full / "backpatching.csv"), expected)
    keys = [(r["source_prompt"], r["source_layer"], r["target_layer"]) for r in jsonl(rows_file)]
    assert len(keys) == 18 and len(set(keys)) == 18  # nothing lost, nothing run twice


def test_fig3_script_resumes_after_a_crash(model, tmp_path):
    from experiments.superscopes import fig3 as superscopes_fig3

    from test_superscopes import pair_word_cosine, word_cosine

    tsv = tmp_path / "p.tsv"
    tsv.write_text("Pink Floyd\tloyd\nStar Wars\tWars\n")
    args = ["--out", str(tmp_path), "--prompts", str(tsv), "--layers", "0,1", "--max-new-tokens", "3",
            "--max-batch-size", "4", "--boot", "20"]
    first = superscopes_fig3.main(args, model=model, cosine=word_cosine, score_pairs=pair_word_cosine)
    run = next(tmp_path.glob("fig3_*_rows"))
    assert len(jsonl(run / "rows.jsonl")) == 2 * 2 * 6
    _cut(run / "rows.jsonl", 5)
    again = superscopes_fig3.main(args + ["--resume"], model=model, cosine=word_cosine, score_pairs=pair_word_cosine)
    assert again["df"].token_ids.tolist() == first["df"].token_ids.tolist()
    assert again["table"].equals(first["table"])
    assert len(jsonl(run / "rows.jsonl")) == 24


def test_token_identity_stores_top1_per_row_and_resumes(model, tmp_path):
    from experiments.patchscopes import token_identity as ti
    from superscopes_nn.core.store import load_run

    kw = dict(sentences=["The cat sat on the mat.", "Paris is the capital of France."], layers=[0, 2],
              max_positions=3, max_batch_size=4)  # 12 patched rows -> 3 chunks
    reference = ti.token_identity(model, **kw)
    full = ti.token_identity(model, run_dir=tmp_path, **kw)
    pd.testing.assert_frame_equal(full, reference)
    stored = jsonl(tmp_path / "rows.jsonl")
    assert len(stored) == 12 and all(len(r["token_ids"]) <= 1 for r in stored)

    _cut(tmp_path / "rows.jsonl", 5)  # the first chunk's 4 rows survive intact, the second's only partly
    resumed = ti.token_identity(model, run_dir=tmp_path, resume=True, **kw)
    pd.testing.assert_frame_equal(resumed, reference)
    assert len(load_run(tmp_path)[0]) == 12
    with pytest.raises(FileExistsError, match="--resume"):
        ti.token_identity(model, run_dir=tmp_path, **kw)


def test_sweep_with_run_dir_writes_the_results_tables(model, tmp_path):
    """The README promises results.csv and results.parquet in every run directory, not only the CLI's."""
    df = sweep(model, ["Pink Floyd"], layers=[0, 1], alphas=[1, 4], target=Target(ENTITY_PROMPT),
               run_dir=tmp_path / "s", progress=False, **KW)
    csv = pd.read_csv(tmp_path / "s" / "results.csv")
    parquet = pd.read_parquet(tmp_path / "s" / "results.parquet")
    assert len(csv) == len(parquet) == len(df) == 4
    assert parquet.interpretation.tolist() == df.interpretation.tolist()
    assert [list(t) for t in parquet.token_ids] == df.token_ids.tolist()
