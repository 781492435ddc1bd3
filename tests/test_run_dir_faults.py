"""Reliability suite, part 1 (issue 20): faults a run directory must survive.

Real processes: two ``superscopes explain`` on one directory started together, a second
writer while the first appends, a stale lock of a SIGKILLed writer, SIGKILL at five chosen
points (then ``resume`` gives tables byte-identical to an uninterrupted run), a full disk
mid-run, a table write that fails half way, resume without ``config.json`` and with a
changed model. Every case asserts the data on disk and the one-line message.
The odd inputs are in ``test_odd_inputs.py``.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import sweep_worker
from superscopes_nn.core import store as store_mod
from superscopes_nn.output.cli import main
from superscopes_nn.engine.run import run_rows
from superscopes_nn.core.dirlock import RunDirBusy
from superscopes_nn.core.store import RunStore, record_key, row_key
from superscopes_nn.testing.tiny_models import save_tiny_checkpoint

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "run_dir_worker.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def sweep():
    return sweep_worker.build()


@pytest.fixture(scope="module")
def reference(sweep, tmp_path_factory):
    """``(frame, results.csv bytes)`` of the uninterrupted 48-row run."""
    model, rows, config = sweep
    d = tmp_path_factory.mktemp("reference")
    df = run_rows(model, rows, run_dir=d, config=config, **sweep_worker.RUN_KWARGS)
    return df, (d / "results.csv").read_bytes()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_checkpoint(d, "llama", seed=3)
    return str(d)


def lines(path: Path) -> list[bytes]:
    return [l for l in path.read_bytes().split(b"\n") if l]


def worker(run_dir: Path, point: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(run_dir), point, *extra], cwd=run_dir.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for_rows(proc: subprocess.Popen, rows_file: Path, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if rows_file.exists() and len(lines(rows_file)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker did not write {n} rows: rc={proc.poll()} {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}")


def assert_complete(run_dir: Path, sweep, reference) -> None:
    """rows.jsonl holds every row once, no NUL byte, and the tables equal the uninterrupted run's."""
    _, rows, _ = sweep
    data = (run_dir / "rows.jsonl").read_bytes()
    assert b"\0" not in data
    keys = [record_key(json.loads(l)) for l in lines(run_dir / "rows.jsonl")]
    assert len(keys) == 48 and set(keys) == {row_key(r) for r in rows}
    assert (run_dir / "results.csv").read_bytes() == reference[1]
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "results.parquet").drop(columns="token_ids"),
                                  reference[0].drop(columns="token_ids"))
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


def one_error_line(err: str) -> str:
    """The stderr of a CLI run must be exactly one ``error:`` line (warnings aside), no traceback."""
    assert "Traceback" not in err, err
    errors = [l for l in err.strip().splitlines() if l.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


# ------------------------------------------------------------------ two writers (real processes)


EXPLAIN = ["explain", "Alexander the Great", "--position", "Great", "--layers", "0-3", "--alphas", "1,3,6,9,12,15",
           "--max-batch-size", "1", "--max-new-tokens", "3", "--no-progress"]


def test_two_cli_explains_on_one_dir_started_together(model_dir, tmp_path):
    out = tmp_path / "D"
    cmd = [sys.executable, "-m", "superscopes_nn.output.cli", *EXPLAIN, "--model", model_dir, "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    loser = next(err for rc, _, err in results if rc == 2)
    line = one_error_line(loser)
    assert str(out) in line
    assert ("is in use by pid" in line) or ("already holds finished rows" in line), line
    keys = [record_key(json.loads(l)) for l in lines(out / "rows.jsonl")]
    assert len(keys) == 24 and len(set(keys)) == 24  # every row once: never stored twice
    assert len(pd.read_csv(out / "results.csv")) == 24


def test_cli_refused_while_another_process_holds_the_dir(model_dir, tmp_path):
    out = tmp_path / "D"
    holder = RunStore(out, {"model": "m"})  # this test process holds the lock
    try:
        proc = subprocess.run([sys.executable, "-m", "superscopes_nn.output.cli", *EXPLAIN, "--model", model_dir,
                               "--out", str(out), "--resume"], capture_output=True, text=True, env=ENV, timeout=300)
    finally:
        holder.close()
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert line == (f"error: run directory {out} is in use by pid {os.getpid()}; wait for it to finish or choose "
                    "another directory")
    assert not (out / "rows.jsonl").exists()


def test_second_writer_refused_while_the_first_appends(sweep, reference, tmp_path):
    run_dir, gate = tmp_path / "run", tmp_path / "go"
    first = worker(run_dir, "none", "--gate", str(gate))
    try:
        wait_for_rows(first, run_dir / "rows.jsonl", 4)  # first chunk stored; the first writer waits at the gate
        second = subprocess.run([sys.executable, str(WORKER), str(run_dir), "none", "--resume"], env=ENV,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode != 0
        last = second.stderr.strip().splitlines()[-1]
        assert last == (f"superscopes_nn.core.dirlock.RunDirBusy: run directory {run_dir} is in use by pid {first.pid}; "
                        "wait for it to finish or choose another directory")
        assert len(lines(run_dir / "rows.jsonl")) == 4  # the refused writer wrote nothing
    finally:
        gate.touch()
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert_complete(run_dir, sweep, reference)


def test_stale_lock_of_a_killed_writer_is_taken_over(sweep, reference, tmp_path):
    model, rows, config = sweep
    run_dir, gate = tmp_path / "run", tmp_path / "never"
    proc = worker(run_dir, "none", "--gate", str(gate))
    wait_for_rows(proc, run_dir / "rows.jsonl", 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (run_dir / ".lock.owner").read_text().strip() == f"pid {proc.pid}"  # stale: names a dead pid
    seen = []
    run_rows(model, rows, run_dir=run_dir, config=config, resume=True, on_chunk=lambda r: seen.append(
        (run_dir / ".lock.owner").read_text().strip()), **sweep_worker.RUN_KWARGS)
    assert set(seen) == {f"pid {os.getpid()}"}  # taken over
    assert not (run_dir / ".lock.owner").exists()  # a finished directory keeps no lock file
    assert_complete(run_dir, sweep, reference)


def test_deleting_the_lock_files_does_not_let_a_second_writer_in(sweep, reference, tmp_path):
    """Issue 31.2: the lock is a kernel lock on the directory; removing ``.lock`` / ``.lock.owner``
    while the first writer runs does not defeat it."""
    run_dir, gate = tmp_path / "run", tmp_path / "go"
    first = worker(run_dir, "none", "--gate", str(gate))
    try:
        wait_for_rows(first, run_dir / "rows.jsonl", 4)
        for name in (".lock", ".lock.owner"):
            (run_dir / name).unlink(missing_ok=True)
        second = subprocess.run([sys.executable, str(WORKER), str(run_dir), "none", "--resume"], env=ENV,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode != 0, second.stderr[-2000:]
        last = second.stderr.strip().splitlines()[-1]
        assert last == (f"superscopes_nn.core.dirlock.RunDirBusy: run directory {run_dir} is in use by another "
                        "process; wait for it to finish or choose another directory")
        assert len(lines(run_dir / "rows.jsonl")) == 4  # the refused writer wrote nothing
    finally:
        gate.touch()
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert_complete(run_dir, sweep, reference)  # 48 lines for 48 rows


def test_repeated_row_keys_are_read_once_with_one_warning(sweep, reference, tmp_path):
    """Issue 31.2: rows.jsonl that two writers once filled (every row twice) reads as one row per key,
    through resume and load_run alike, with one warning line; an append never repeats a stored row."""
    model, rows, config = sweep
    d = tmp_path / "run"
    run_rows(model, rows, run_dir=d, config=config, **sweep_worker.RUN_KWARGS)
    data = (d / "rows.jsonl").read_bytes()
    (d / "rows.jsonl").write_bytes(data + data)
    with pytest.warns(UserWarning, match=r"rows\.jsonl: 48 line\(s\) repeat an earlier row's key \(first at line 49;"):
        df, _ = store_mod.load_run(d)
    assert len(df) == 48
    with pytest.warns(UserWarning, match="48 line"):
        again = run_rows(model, rows, run_dir=d, config=config, resume=True, **sweep_worker.RUN_KWARGS)  # nothing reruns
    pd.testing.assert_frame_equal(again, reference[0])
    assert (d / "rows.jsonl").read_bytes() == data + data
    with RunStore(d, json.loads((d / "config.json").read_text()), resume=True) as store:
        with pytest.warns(UserWarning, match="48 line"):
            done = store.records_by_key()
        store.append(list(done.values())[:5])  # already stored: not written again
    assert (d / "rows.jsonl").read_bytes() == data + data


TEXTS = ["bare\rreturn", "cr\r\nlf", "new\nline", 'say "hi", then \'bye\'', "nul\x00byte", "a,b,,c",
         "héllo 日本語 🙂 \u200b", "\r", "ends with\r", "  padded  ", "[1, 2]", "1.5", "True"]
ODD = ["", "NA", "nan", "None", None]


def _text_records():
    return [dict(source_prompt=f"p{i}", source_layer=i, alpha=1.5, interpretation=t,
                 token_ids=[] if t is None else [1, i], error="generation failed" if t is None else None,
                 note=t) for i, t in enumerate(TEXTS + ODD)]


def test_results_csv_round_trips_every_text(tmp_path):
    """Issue 31.1: results.csv quotes every text; plain pandas.read_csv gives each text back, one row per
    record; superscopes_nn.core.tables.read_csv gives the frame back exactly (also "", "NA", None)."""
    from superscopes_nn.core.tables import read_csv

    df = store_mod.frame(_text_records())
    store_mod.write_tables(df, tmp_path)
    plain = pd.read_csv(tmp_path / "results.csv")
    assert len(plain) == len(df)
    assert list(plain.interpretation[:len(TEXTS)]) == TEXTS and list(plain.note[:len(TEXTS)]) == TEXTS
    assert list(plain.source_layer) == list(range(len(df))) and (plain.alpha == 1.5).all()
    back = read_csv(tmp_path / "results.csv")
    pd.testing.assert_frame_equal(back, pd.read_parquet(tmp_path / "results.parquet"))
    assert back.interpretation.tolist()[:-1] == (TEXTS + ODD)[:-1] and pd.isna(back.interpretation.iloc[-1])
    assert back.token_ids.tolist() == df.token_ids.tolist()


def test_experiment_csvs_round_trip_every_text(tmp_path):
    """Issue 31.1, the experiments' writer (save_csv / read_saved_csv, .csv and .csv.gz)."""
    from experiments.common import read_saved_csv, save_csv

    df = store_mod.frame(_text_records())
    for name in ("rows.csv", "rows.csv.gz"):
        path = save_csv(df, tmp_path / name)
        if name == "rows.csv":
            assert list(pd.read_csv(path).interpretation[:len(TEXTS)]) == TEXTS
        back = read_saved_csv(path)
        assert back.interpretation.tolist() == TEXTS + ODD[:-1] + [None]
        assert back.note.tolist()[:-1] == (TEXTS + ODD)[:-1] and back.token_ids.tolist() == df.token_ids.tolist()


def test_report_refuses_a_row_without_a_key_field_exactly_as_resume(model_dir, tmp_path, capsys):
    """Issue 31.6: one reader (store.unique_records) for resume and report, one refusal."""
    out = tmp_path / "D"
    argv = ["explain", "Pink Floyd", "--layers", "0-1", "--alphas", "1,3", "--max-new-tokens", "2", "--no-progress",
            "--model", model_dir, "--out", str(out)]
    assert main(argv) == 0
    rows = [json.loads(l) for l in lines(out / "rows.jsonl")]
    del rows[1]["alpha"]
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    report_line = one_error_line(capsys.readouterr().err)
    assert main(argv + ["--resume"]) == 2
    resume_line = one_error_line(capsys.readouterr().err)
    assert report_line == resume_line == (
        f"error: {out / 'rows.jsonl'}: line 2 lacks the key field(s) alpha, so the row it belongs to is unknown; "
        "restore the field(s) or delete the line (--resume then reruns that row)")
    assert not (out / "report.html").exists()


# ------------------------------------------------------------------ SIGKILL at chosen points


KILLS = {  # point -> what must be on disk right after the kill
    "before-rows": dict(rows=0, csv=False),
    "before-fsync": dict(rows=12, csv=False),
    "torn-append": dict(rows=10, csv=False),  # 8 rows + half of a 4-row chunk: 2 whole lines and a torn one
    "csv-before-rename": dict(rows=48, csv=False),
    "parquet-mid-write": dict(rows=48, csv=True),
}


@pytest.mark.parametrize("point", list(KILLS))
def test_sigkill_at_a_chosen_point_then_resume_is_byte_identical(sweep, reference, tmp_path, point):
    model, rows, config = sweep
    run_dir = tmp_path / "run"
    proc = worker(run_dir, point)
    rc = proc.wait(timeout=300)
    assert rc == -signal.SIGKILL, proc.stderr.read()[-2000:]
    expect = KILLS[point]
    assert json.loads((run_dir / "config.json").read_text())["layers"] == sweep_worker.LAYERS
    whole = store_mod._scan(run_dir / "rows.jsonl").records if (run_dir / "rows.jsonl").exists() else []
    assert len(whole) == expect["rows"]
    if point == "torn-append":
        assert not (run_dir / "rows.jsonl").read_bytes().endswith(b"\n")  # the torn tail is there
    assert (run_dir / "results.csv").exists() == expect["csv"]
    if expect["csv"]:  # a table on disk is always a whole one
        assert (run_dir / "results.csv").read_bytes() == reference[1]
    assert not (run_dir / "results.parquet").exists()
    run_rows(model, rows, run_dir=run_dir, config=config, resume=True, **sweep_worker.RUN_KWARGS)
    assert_complete(run_dir, sweep, reference)


# ------------------------------------------------------------------ disk faults (simulated)


def test_full_disk_mid_run_is_one_oserror_and_resume_completes(sweep, reference, tmp_path, monkeypatch):
    model, rows, config = sweep
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 5:  # config.json is fsync 1; the 4th chunk's append hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(store_mod.os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        run_rows(model, rows, run_dir=tmp_path, config=config, **sweep_worker.RUN_KWARGS)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"[Errno 28] cannot append rows to {tmp_path / 'rows.jsonl'}: No space left on device"
    assert not (tmp_path / "results.csv").exists()
    monkeypatch.setattr(store_mod.os, "fsync", real)
    run_rows(model, rows, run_dir=tmp_path, config=config, resume=True, **sweep_worker.RUN_KWARGS)
    assert_complete(tmp_path, sweep, reference)


def test_a_table_write_failing_half_way_keeps_the_old_table(reference, tmp_path, monkeypatch):
    df = reference[0]
    store_mod.write_tables(df.iloc[:3], tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in ("results.csv", "results.parquet")}

    def half(self, path, **kw):
        Path(path).write_bytes(b"PAR1")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half)
    with pytest.raises(OSError, match=r"cannot write .*results\.parquet: No space left on device"):
        store_mod.write_tables(df, tmp_path)
    assert (tmp_path / "results.parquet").read_bytes() == before["results.parquet"]  # never half written
    assert len(pd.read_csv(tmp_path / "results.csv")) == len(df)  # the csv write had finished: whole, new
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------ resume without config / with another model


def test_resume_without_config_json_is_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*EXPLAIN, "--model", model_dir, "--out", str(out), "--max-new-tokens", "4"]
    assert main(argv) == 0
    (out / "config.json").unlink()
    before = (out / "rows.jsonl").read_bytes()
    capsys.readouterr()
    assert main(argv[:-2] + ["--max-new-tokens", "3", "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"error: cannot resume {out}: it holds rows but no config.json, so the settings they were made "
                    "with are unknown; choose another directory")
    assert (out / "rows.jsonl").read_bytes() == before and not (out / "config.json").exists()
    with pytest.raises(ValueError, match="holds rows but no config.json"):
        RunStore(out, {"model": "m"}, resume=True)


def test_resume_with_another_model_names_the_model_first(model_dir, tmp_path, capsys):
    RunStore(tmp_path, {"model": "a", "layers": [0], "alphas": [1.0]}).append([{
        "source_prompt": "p", "source_position": 0, "source_layer": 0, "site": "residual", "target_prompt": "t",
        "target_position": 0, "target_layer": 0, "target_site": "residual", "mapping_key": "amplify:1.0",
        "alpha": 1.0}])
    with pytest.raises(ValueError, match=r"config 'model' differs \(stored 'a', now 'b'\)"):
        RunStore(tmp_path, {"model": "b", "layers": [1], "alphas": [2.0]}, resume=True)
    out = tmp_path / "cli"
    argv = ["explain", "Pink Floyd", "--layers", "1", "--alphas", "1", "--max-new-tokens", "2", "--no-progress",
            "--out", str(out)]
    assert main(argv + ["--model", model_dir]) == 0
    other = tmp_path / "other_model"
    save_tiny_checkpoint(other, "llama", seed=4)
    capsys.readouterr()
    assert main(argv + ["--model", str(other), "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot resume {out}: config 'model' differs (stored '{model_dir}', now '{other}')")


def test_busy_is_its_own_error_type(tmp_path):
    with RunStore(tmp_path, {"model": "m"}):
        with pytest.raises(RunDirBusy, match=f"in use by pid {os.getpid()}"):
            RunStore(tmp_path, {"model": "m"})
