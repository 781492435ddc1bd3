"""Attribute extraction over every LRE row (``contexts="all"``, the official ``run_experiment``) or
the first context of each subject (``contexts="first"``), on a made-up TSV and a tiny random Gemma 3."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.patchscopes import attribute_extraction as ae  # noqa: E402
from superscopes_nn.data.lre import lre_samples, sample_items  # noqa: E402

# (subject, object, WikiText context): France in three contexts, Syria in two, Japan in one;
# the TSV's own sample_id numbers subjects (as in the official TSVs), not rows
ROWS = [("France", "Paris", " the wine of France is sold abroad."),
        ("France", "Paris", " in 1990 France won a cup."),
        ("Syria", "Damascus", " they flew to Syria in May."),
        ("France", "Paris", " so France and Spain signed it."),
        ("Syria", "Damascus", " rain fell on Syria for days."),
        ("Japan", "Tokyo", " the emperor of Japan spoke.")]
SUBJECT_ID = {"France": 0, "Syria": 1, "Japan": 2}


@pytest.fixture(scope="module")
def lre_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lre")
    (root / "factual").mkdir()
    df = pd.DataFrame({
        "sample_id": [SUBJECT_ID[s] for s, _, _ in ROWS], "prompt_target": "The capital city of x",
        "position_target": -1, "target_baseline": [f"The capital city of {s}" for s, _, _ in ROWS],
        "object": [o for _, o, _ in ROWS], "subject": [s for s, _, _ in ROWS],
        "prompt_source": [c for _, _, c in ROWS],
        "position_source": [len(c[: c.index(s)].split()) for s, _, c in ROWS]})
    df.to_csv(root / "factual" / "country_capital_city.tsv", sep="\t")
    return root


TINY_MODEL = ("gemma3_text", 0)


def test_all_keeps_every_row_first_one_per_subject(lre_root):
    every = lre_samples(lre_root)
    assert len(every) == len(ROWS) and every.sample_id.tolist() == list(range(len(ROWS)))
    assert every.source_context.tolist() == [c for _, _, c in ROWS]  # file order
    assert every.subject.tolist() == [s for s, _, _ in ROWS]
    assert sample_items(every).is_unique and not (every.task + every.subject).is_unique
    first = lre_samples(lre_root, contexts="first")
    assert first.subject.tolist() == ["France", "Syria", "Japan"] and first.sample_id.tolist() == [0, 2, 5]
    assert first.source_context.tolist() == [ROWS[0][2], ROWS[2][2], ROWS[5][2]]
    with pytest.raises(ValueError, match="contexts must be one of"):
        lre_samples(lre_root, contexts="some")


def test_limit_counts_subjects_not_rows(lre_root):
    two = lre_samples(lre_root, limit=2)
    assert two.subject.tolist() == ["France", "France", "Syria", "France", "Syria"]
    assert two.sample_id.tolist() == [0, 1, 2, 3, 4]
    assert lre_samples(lre_root, limit=1).sample_id.tolist() == [0, 1, 3]
    assert lre_samples(lre_root, limit=2, contexts="first").subject.tolist() == ["France", "Syria"]


def test_each_row_read_at_its_own_context(model, lre_root):
    samples = lre_samples(lre_root)
    df = ae.attribute_extraction(model, samples, layers=[1], target_layers=[1], max_new_tokens=2,
                                 only_correct=False, control="random")
    ps, rnd = df[df.method == "patchscope"], df.attrs["random"]
    assert len(ps) == len(rnd) == len(ROWS) and ps.sample_id.tolist() == list(range(len(ROWS)))
    assert ps.source_prompt.tolist() == [ae.crop_context(c, s) for s, _, c in ROWS]
    assert ps[ps.subject == "France"].source_prompt.nunique() == 3
    # the random direction is seeded per source vector: one per context, not one per subject
    assert rnd.mapping_key.nunique() == len(ROWS)
    assert (df.method == "input_only").sum() == len(ROWS)
    c = ae.pair_chance(df, n_boot=20).iloc[0]
    assert c.n == len(ROWS) and c.random_count <= c.n
    first = ae.attribute_extraction(model, lre_samples(lre_root, contexts="first"), layers=[1], target_layers=[1],
                                    max_new_tokens=2, only_correct=False)
    assert ae.pair_chance(first, n_boot=20).iloc[0].n == 3
    # the first-context samples' rows are the same rows in both designs
    at0 = ps.set_index("sample_id").loc[[0, 2, 5]]
    fp = first[first.method == "patchscope"]
    assert at0.source_prompt.tolist() == fp.source_prompt.tolist()


def test_filter_keeps_or_drops_whole_subjects(model, lre_root, monkeypatch):
    real = ae.input_only
    asked = []

    def knows_france(model, prompts, subjects, **kw):  # the model "answers" France alone
        asked.append(list(subjects))
        out = real(model, prompts, subjects, **kw)
        return out.assign(interpretation=[" Paris." if s == "France" else " no idea" for s in subjects])

    monkeypatch.setattr(ae, "input_only", knows_france)
    df = ae.attribute_extraction(model, lre_samples(lre_root), layers=[1], target_layers=[1], max_new_tokens=2,
                                 baseline_max_new_tokens=3)
    assert all(sorted(a) == ["France", "Japan", "Syria"] for a in asked)  # once per subject, not per row
    filt = df.attrs["filter"]
    assert filt.sample_id.tolist() == list(range(len(ROWS)))
    assert filt.kept.tolist() == [s == "France" for s, _, _ in ROWS]
    ps = df[df.method == "patchscope"]
    assert df.attrs["n_kept"] == 3 and ps.sample_id.tolist() == [0, 1, 3] and set(ps.subject) == {"France"}
    assert ae.pair_chance(df, n_boot=20).iloc[0].n == 3


def test_main_contexts_flag(model, lre_root, tmp_path):
    args = ["--limit", "2", "--layer-stride", "3", "--max-new-tokens", "2", "--lre-root", str(lre_root),
            "--all-samples"]
    every = ae.main(args + ["--out", str(tmp_path / "all")], model=model)
    first = ae.main(args + ["--contexts", "first", "--out", str(tmp_path / "first")], model=model)
    assert (every.method == "patchscope").sum() == 5 and (first.method == "patchscope").sum() == 2
    for name, df, n in (("all", every, 5), ("first", first, 2)):
        assert pd.read_csv(tmp_path / name / "attribute_extraction_chance.csv").n.iloc[0] == n
        assert len(df.attrs["filter"]) == n and "sample_id" in df.attrs["filter"]
