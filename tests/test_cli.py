"""`superscopes explain` end to end on a tiny saved model: table, files, resume."""

import json

import pandas as pd
import pytest

from superscopes_nn.output.cli import main, parse_layers
from superscopes_nn.testing.tiny_models import save_tiny_checkpoint


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_cli")
    save_tiny_checkpoint(d, "gemma3_text", seed=5)
    return str(d)


def test_parse_layers():
    assert parse_layers("0-3") == [0, 1, 2, 3]
    assert parse_layers("1,3, 5") == [1, 3, 5]
    assert parse_layers("all") is None


def test_explain_writes_run_and_resumes(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["explain", "Alexander the Great", "--position", "Great", "--sites", "mlp_out", "--layers", "0-3",
            "--alphas", "1,3,6", "--model", model_dir, "--max-new-tokens", "4", "--max-batch-size", "5", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "'Alexander the Great' [mlp_out]" in printed and "α=6" in printed
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 12 and sorted(df.alpha.unique()) == [1.0, 3.0, 6.0]
    assert len(df.source_token.unique()) == 1
    csv = pd.read_csv(out / "results.csv")
    assert csv.interpretation.fillna("").tolist() == df.interpretation.fillna("").tolist()
    config = json.loads((out / "config.json").read_text())
    assert config["layers"] == [0, 1, 2, 3] and "versions" in config
    assert sum(1 for _ in open(out / "rows.jsonl")) == 12
    # the same directory again without --resume is refused; with it, nothing is recomputed
    assert main(argv) == 2
    assert "resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert sum(1 for _ in open(out / "rows.jsonl")) == 12
    again = pd.read_parquet(out / "results.parquet")
    assert again.token_ids.map(list).tolist() == df.token_ids.map(list).tolist()


def test_explain_remote_local_matches(model_dir, tmp_path, capsys):
    base = ["explain", "Pink Floyd", "--layers", "1,2", "--alphas", "1,4", "--model", model_dir,
            "--max-new-tokens", "3", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    assert main(base + ["--out", str(tmp_path / "b"), "--remote", "local"]) == 0
    a = pd.read_parquet(tmp_path / "a" / "results.parquet")
    b = pd.read_parquet(tmp_path / "b" / "results.parquet")
    assert a.token_ids.map(list).tolist() == b.token_ids.map(list).tolist()
