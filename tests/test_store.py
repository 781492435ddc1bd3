"""The run store: every finished row on disk, kill -9 and resume, config checks, torn lines."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from nnsight.intervention.backends.remote import RemoteError

import sweep_worker
from superscopes_nn.engine import run as patching
from superscopes_nn.core.specs import Row
from superscopes_nn.remote.errors import NDIFError
from superscopes_nn.core.specs import RESULT_COLUMNS, Fn
from superscopes_nn.engine.run import run_rows
from superscopes_nn.core.store import RunStore, record_key, row_key

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def sweep():
    """``(model, rows, config)`` of the worker's 48-row sweep."""
    return sweep_worker.build()


@pytest.fixture(scope="module")
def reference(sweep, tmp_path_factory):
    """The uninterrupted run of the sweep."""
    model, rows, config = sweep
    return run_rows(model, rows, run_dir=tmp_path_factory.mktemp("reference"), config=config, **sweep_worker.RUN_KWARGS)


def lines(path: Path) -> list[bytes]:
    return [l for l in path.read_bytes().split(b"\n") if l]


def fake_record(i: int, **kw) -> dict:
    rec = {"source_prompt": f"p{i}", "source_position": 1, "source_token": "t", "source_layer": i % 4,
           "site": "residual", "target_prompt": "T x", "target_position": 2, "target_layer": i % 4,
           "target_site": "residual", "mapping": "amplify", "alpha": 1.0 + i, "model": "m", "target_model": "m",
           "interpretation": f"text {i}", "token_ids": [i, i + 1]}
    rec.update(kw)
    return {**dict.fromkeys(RESULT_COLUMNS), **rec}  # columns the engine may add (e.g. "error") as None


CONFIG = {"model": "m", "prompts": ["p"], "layers": [0, 1], "alphas": [1.0, 6.0], "max_new_tokens": 3,
          "max_batch_size": 4}


# ------------------------------------------------------------------ kill -9 and resume


def test_kill_mid_run_then_resume_equals_uninterrupted_run(sweep, reference, tmp_path):
    model, rows, config = sweep
    assert len(rows) == 48 and len(reference) == 48
    run_dir = tmp_path / "run"
    rows_file = run_dir / "rows.jsonl"
    proc = subprocess.Popen([sys.executable, str(HERE / "sweep_worker.py"), str(run_dir), "0.4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if rows_file.exists() and len(lines(rows_file)) >= 8:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"worker ended before it was killed: {proc.communicate()[1][-2000:]!r}"
        proc.kill()  # SIGKILL
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    before = lines(rows_file)
    assert 8 <= len(before) < 48, len(before)

    resumed = run_rows(model, rows, run_dir=run_dir, config=config, resume=True, **sweep_worker.RUN_KWARGS)

    pd.testing.assert_frame_equal(resumed, reference)
    after = lines(rows_file)
    assert after[: len(before)] == before  # finished rows untouched
    keys = [record_key(json.loads(l)) for l in after]
    assert len(after) == 48 and len(set(keys)) == 48  # nothing lost, nothing run twice
    assert set(keys) == {row_key(r) for r in rows}


def test_resume_of_a_finished_run_runs_nothing(sweep, reference, tmp_path, monkeypatch):
    model, rows, config = sweep
    run_rows(model, rows[:8], run_dir=tmp_path, config=config, **sweep_worker.RUN_KWARGS)
    monkeypatch.setattr(patching, "run_requests", lambda *a, **k: pytest.fail("ran rows that were done"))
    again = run_rows(model, rows[:8], run_dir=tmp_path, config=config, resume=True, **sweep_worker.RUN_KWARGS)
    pd.testing.assert_frame_equal(again, reference.iloc[:8])


def test_row_key_matches_record_key(sweep, reference):
    _, rows, _ = sweep
    assert [row_key(r) for r in rows] == [record_key(r) for r in reference.to_dict("records")]
    assert len({row_key(r) for r in rows}) == len(rows)


def test_key_of_a_nan_alpha_survives_the_json_round_trip(sweep):
    _, rows, _ = sweep
    row = Row(**{**rows[0].__dict__, "mapping": Fn(lambda v: v, name="negate")})
    rec = fake_record(0, **{k: getattr(row, k) for k in ("source_prompt", "source_position", "source_layer", "site",
                                                           "target_prompt", "target_position", "target_layer",
                                                           "target_site")}, mapping="negate",
                      mapping_key=row.mapping.key, alpha=float("nan"))
    back = json.loads(json.dumps(rec))
    assert math.isnan(back["alpha"]) and record_key(back) == record_key(rec) == row_key(row)


# ------------------------------------------------------------------ config and directory checks


def test_config_json_is_written_with_versions(tmp_path):
    RunStore(tmp_path / "run", CONFIG)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {k: v for k, v in stored.items() if k != "versions"} == CONFIG
    assert set(stored["versions"]) == {"superscopes_nn", "nnsight", "torch", "transformers"}
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_existing_rows_without_resume_is_refused(tmp_path):
    RunStore(tmp_path, CONFIG).append([fake_record(0)])
    with pytest.raises(FileExistsError, match=r"already holds finished rows.*resume=True \(--resume\)") as info:
        RunStore(tmp_path, CONFIG)
    assert str(tmp_path) in str(info.value)
    assert len(RunStore(tmp_path, CONFIG, resume=True).records()) == 1


@pytest.mark.parametrize("change, key, old, new", [
    ({"max_new_tokens": 5}, "max_new_tokens", "3", "5"),
    ({"layers": [0, 2]}, "layers", "[0, 1]", "[0, 2]"),
    ({"extra_setting": True}, "extra_setting", "'<missing>'", "True"),
])
def test_resume_with_a_changed_config_names_the_key(tmp_path, change, key, old, new):
    RunStore(tmp_path, CONFIG).append([fake_record(0)])
    with pytest.raises(ValueError, match=f"config '{key}' differs") as info:
        RunStore(tmp_path, {**CONFIG, **change}, resume=True)
    assert f"stored {old}" in str(info.value) and f"now {new}" in str(info.value)


def test_resume_ignores_versions_and_tuple_vs_list(tmp_path):
    RunStore(tmp_path, CONFIG).append([fake_record(0)])
    RunStore(tmp_path, {**CONFIG, "layers": (0, 1), "versions": {"torch": "0.0"}}, resume=True)


def test_non_json_config_fails_fast(tmp_path):
    with pytest.raises(ValueError, match=r"'layers' is not JSON-serializable.*range\(0, 3\)"):
        RunStore(tmp_path, {**CONFIG, "layers": range(3)})


# ------------------------------------------------------------------ the row log


def test_torn_last_line_is_ignored_and_truncated_before_appending(tmp_path):
    store = RunStore(tmp_path, CONFIG)
    store.append([fake_record(0), fake_record(1)])
    good = (tmp_path / "rows.jsonl").read_bytes()
    with open(tmp_path / "rows.jsonl", "ab") as f:
        f.write(json.dumps(fake_record(2)).encode()[:40])  # a kill mid-write
    store.close()
    store = RunStore(tmp_path, CONFIG, resume=True)
    assert store.done_keys() == {record_key(fake_record(0)), record_key(fake_record(1))}
    store.append([fake_record(3)])
    data = (tmp_path / "rows.jsonl").read_bytes()
    assert data.startswith(good) and data.endswith(b"\n")
    assert list(store.load().source_prompt) == ["p0", "p1", "p3"]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    store = RunStore(tmp_path, CONFIG)
    store.append([fake_record(0)])
    with open(tmp_path / "rows.jsonl", "ab") as f:
        f.write(json.dumps(fake_record(1)).encode())
    store.append([fake_record(2)])
    assert list(store.load().source_prompt) == ["p0", "p1", "p2"]


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    store = RunStore(tmp_path, CONFIG)
    store.append([fake_record(0)])
    with open(tmp_path / "rows.jsonl", "ab") as f:
        f.write(b"{garbage\n")
    with open(tmp_path / "rows.jsonl", "ab") as f:
        f.write((json.dumps(fake_record(1)) + "\n").encode())
    with pytest.raises(ValueError, match="line 2 is not a valid row"):
        store.done_keys()


def test_load_deduplicates_in_file_order(tmp_path):
    store = RunStore(tmp_path, CONFIG)
    store.append([fake_record(1), fake_record(0)])
    store.append([fake_record(1, interpretation="second copy"), fake_record(2)])
    df = store.load()
    assert list(df.columns) == RESULT_COLUMNS
    assert list(df.source_prompt) == ["p1", "p0", "p2"] and df.interpretation.iloc[0] == "text 1"


# ------------------------------------------------------------------ remote chunk failure


def test_remote_chunk_failure_keeps_finished_chunks_and_resume_completes(sweep, reference, tmp_path, monkeypatch):
    model, rows, config = sweep
    rows = rows[:16]  # 4 chunks of 4
    real_run_job = patching.run_chunks
    calls, sleeps, state = [], [], {"down": True}

    def flaky_run_job(model, job, *, remote=False, backend=None, vectors=None):
        calls.append(remote)
        if state["down"] and len(calls) >= 3:  # chunk 3 onwards: NDIF unreachable
            try:
                raise httpx.ConnectError("[Errno 111] Connection refused")
            except httpx.ConnectError as err:
                raise RemoteError(f"Failed to send request: {err}") from err
        return real_run_job(model, job, remote=False, backend=None, vectors=vectors)  # "remote" work done here

    monkeypatch.setattr(patching, "run_chunks", flaky_run_job)
    import nnsight.modeling.huggingface as nnsight_hf

    monkeypatch.setitem(nnsight_hf._ID_CACHE, model.repo_id, "superscopes/tiny-llama")  # the hub id, looked up first
    monkeypatch.setattr(patching, "session_backend", lambda model, remote, backend: None)  # no model key needed
    url = "http://127.0.0.1:9"
    with pytest.raises(NDIFError, match=r"could not reach NDIF at http://127.0.0.1:9 \(connection refused\) after 3 tries"):
        run_rows(model, rows, run_dir=tmp_path, config=config, remote=url, retries=2, sleep=sleeps.append, chunks_per_request=1,
                  **sweep_worker.RUN_KWARGS)
    assert sleeps == [1.0, 2.0] and calls == [url] * 5  # 2 good chunks + 3 tries of chunk 3
    on_disk = [json.loads(l) for l in lines(tmp_path / "rows.jsonl")]
    assert [record_key(r) for r in on_disk] == [row_key(r) for r in rows[:8]]

    state["down"] = False
    resumed = run_rows(model, rows, run_dir=tmp_path, config=config, resume=True, remote=url, sleep=sleeps.append,
                        chunks_per_request=1, **sweep_worker.RUN_KWARGS)
    pd.testing.assert_frame_equal(resumed, reference.iloc[:16])
    assert len(lines(tmp_path / "rows.jsonl")) == 16 and len(calls) == 5 + 2


# ------------------------------------------------------------------ mapping keys in resume (from test_one_path)

import torch  # noqa: E402

from superscopes_nn.core.specs import Affine, Compose, Source, Target  # noqa: E402
from superscopes_nn.engine.rows import resolve  # noqa: E402



def _affine(seed: int) -> Affine:
    g = torch.Generator().manual_seed(seed)
    return Affine(torch.eye(64) + 0.01 * torch.randn(64, 64, generator=g), name="bridge")


def _rows(model, mappings):
    return resolve(model, [(Source("Pink Floyd", 1, -1, "residual"), Target(), f) for f in mappings])


def test_two_affine_maps_with_one_name_are_two_rows_on_resume(model, tmp_path):
    a, b = Compose(_affine(0), 2.0), Compose(_affine(1), 2.0)
    assert a.name == b.name and a.key != b.key
    rows = _rows(model, [a, b])
    assert row_key(rows[0]) != row_key(rows[1])
    df = run_rows(model, rows, max_new_tokens=2, run_dir=tmp_path)
    assert len(df) == 2
    stored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["mapping_key"] for r in stored] == [a.key, b.key]
    # resume with b's weights changed: a's row is reused, the changed map is a new row
    c = Compose(_affine(2), 2.0)
    again = run_rows(model, _rows(model, [a, c]), max_new_tokens=2, run_dir=tmp_path, resume=True)
    stored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["mapping_key"] for r in stored] == [a.key, b.key, c.key]
    assert again.mapping_key.tolist() == [a.key, c.key]
    assert again.token_ids.iloc[0] == df.token_ids.iloc[0]


def test_two_fn_maps_with_one_name_and_different_code_are_two_rows(model, tmp_path):
    f = Fn(lambda v: v * 2.0, name="double")
    g = Fn(lambda v: v * 2.0 + 1.0, name="double")
    assert f.key != g.key and f.key == Fn(lambda v: v * 2.0, name="double").key
    rows = _rows(model, [f, g])
    assert row_key(rows[0]) != row_key(rows[1])
    run_rows(model, rows, max_new_tokens=2, run_dir=tmp_path)
    stored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(stored) == 2 and len({record_key(r) for r in stored}) == 2
    assert {r["mapping_key"] for r in stored} == {f.key, g.key}
