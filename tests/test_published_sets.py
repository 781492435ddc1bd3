"""PopQA, Hopping Too Late and PersonaQA through ``datasets`` (superscopes_nn.data.external_data), on local
directories in each publisher's layout (no network here), cached; offline and not cached: one line."""

import json

import datasets
import pytest

from superscopes_nn.data import external_data as ext

POPQA_TSV = (
    "id\tsubj\tprop\tobj\tsubj_id\ts_aliases\ts_pop\tquestion\tpossible_answers\n"
    "1\tGeorge Rankin\toccupation\tpolitician\t1\t[\"George James Rankin\"]\t142\tWhat is George Rankin's occupation?\t[\"politician\", \"political leader\"]\n"
    "2\tJohn Mayne\toccupation\tjournalist\t2\t[]\t21\tWhat is John Mayne's occupation?\t[\"journalist\"]\n"
    "3\tParis\tcountry\tFrance\t3\t[\"City of Light\"]\t90000\tIn what country is Paris?\t[\"France\"]\n"
    "4\tParis\tcapital of\tFrance\t3\t[\"City of Light\"]\t90000\tWhat is Paris the capital of?\t[\"France\"]\n"
    "5\tTiny Town\tcountry\tNowhere\t5\t[]\t3\tIn what country is Tiny Town?\t[\"Nowhere\"]\n"
)


@pytest.fixture
def popqa_hub(tmp_path):
    """A snapshot of the hub dataset akariasai/PopQA: one ``test.tsv`` at the root."""
    d = tmp_path / "akariasai_PopQA"
    d.mkdir()
    (d / "test.tsv").write_text(POPQA_TSV)
    return d


def test_popqa_from_a_local_hub_layout_is_cached(popqa_hub, tmp_path):
    cache = tmp_path / "cache"
    ds = ext.load_popqa(source=popqa_hub, cache_dir=cache)
    assert len(ds) == 5 and ds[0]["subject"] == "George Rankin" and ds[0]["relation"] == "occupation"
    assert ds[0]["possible_answers"] == ["politician", "political leader"] and ds[0]["s_pop"] == 142
    assert ds[0]["subject_aliases"] == ["George James Rankin"] and ds[1]["subject_aliases"] == []
    assert list(cache.rglob("*.arrow")), "datasets wrote no cache"
    (popqa_hub / "test.tsv").write_text(POPQA_TSV.replace("George Rankin", "Changed Name"))
    again = ext.load_popqa(source=popqa_hub, cache_dir=cache)  # a changed file is re-read (cache keyed on it)
    assert again[0]["subject"] == "Changed Name"


def test_popqa_entities_are_the_two_ends_by_popularity(popqa_hub, tmp_path):
    ents = ext.popqa_entities(ext.load_popqa(source=popqa_hub, cache_dir=tmp_path / "c"), per_end=2)
    assert ents.name.tolist() == ["Tiny Town", "John Mayne", "George Rankin", "Paris"]  # Paris once
    assert ents.type.tolist() == ["least popular"] * 2 + ["most popular"] * 2
    assert ents.aliases.tolist()[3] == ["City of Light"] and set(ents.description) == {""}
    with pytest.raises(ValueError, match="4 distinct subjects, fewer than 2 \\* per_end = 6"):
        ext.popqa_entities(ext.load_popqa(source=popqa_hub, cache_dir=tmp_path / "c"), per_end=3)


def test_hopping_too_late_from_a_local_clone(tmp_path):
    clone = tmp_path / "HoppingTooLate"
    (clone / "data").mkdir(parents=True)
    (clone / "data" / "two_hop.csv").write_text(
        ",id,e1_label,e2_label,e3_label,e2_aliases,e3_aliases,r1_template,r2_template,source_prompt\n"
        "0,0,Imagine,John Lennon,Yoko Ono,\"['Lennon']\",\"['Yoko']\",the performer of {},the spouse of {},"
        "the spouse of the performer of Imagine is\n")
    ds = ext.load_hopping_too_late(source=clone, cache_dir=tmp_path / "cache")
    row = ds[0]
    assert row["two_hop_prompt"] == "the spouse of the performer of Imagine is"
    assert row["first_hop_prompt"] == "The performer of Imagine is" and row["bridge"] == "John Lennon"
    assert row["bridge_aliases"] == ["Lennon"] and row["answer_aliases"] == ["Yoko"] and row["id"] == "0"
    (tmp_path / "empty_clone").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty_clone/data/two_hop\.csv"):
        ext.load_hopping_too_late(source=tmp_path / "empty_clone")
    with pytest.raises(FileNotFoundError, match="Hopping Too Late source not found: .*no_such_clone"):
        ext.load_hopping_too_late(source=tmp_path / "no_such_clone")


def test_personaqa_from_a_local_folder(tmp_path):
    root = tmp_path / "personaqa"
    (root / "PersonaQA").mkdir(parents=True)
    for attr, q, t in (("country", "The country of origin for x", "Chile"), ("favorite_sport", "The favorite sport of x", "Golf")):
        (root / "PersonaQA" / f"{attr}.json").write_text(json.dumps(
            {"0": {"prompt": "My name is Orla Vantreece.", "question": q, "target": t}}))
    df = ext.load_personaqa_published(source=root, attributes=("country", "favorite_sport"), cache_dir=tmp_path / "c")
    assert df.attribute.tolist() == ["country", "favorite_sport"] and df.target.tolist() == ["Chile", "Golf"]
    assert set(df.name) == {"Orla Vantreece"}
    with pytest.raises(FileNotFoundError, match="favorite_food.json"):
        ext.load_personaqa_published(source=root, attributes=("favorite_food",))
    with pytest.raises(ValueError, match="unknown PersonaQA variant 'Persona'"):
        ext.load_personaqa_published("Persona", source=root)


@pytest.mark.parametrize("load, names", [
    (lambda c: ext.load_popqa(cache_dir=c), "akariasai/PopQA"),
    (lambda c: ext.load_hopping_too_late(cache_dir=c), "edenbiran/HoppingTooLate/main/data/two_hop.csv"),
    (lambda c: ext.load_personaqa_published(cache_dir=c), "verb_faithfulness/main/datasets/personaqa/PersonaQA"),
], ids=["popqa", "hopping_too_late", "personaqa"])
def test_offline_and_not_cached_is_one_line_naming_what_to_fetch(load, names, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as err:
        load(tmp_path / "empty_cache")
    msg = str(err.value)
    assert "\n" not in msg and "HF_DATASETS_OFFLINE" in msg and names in msg and "not in the datasets cache" in msg, msg


def test_entity_resolution_takes_dataset_popqa(popqa_hub, tmp_path, monkeypatch):
    from experiments.patchscopes import entity_resolution as er
    from superscopes_nn.testing.tiny_models import tiny_model

    monkeypatch.setattr(er, "POPQA_PER_END", 2)   # the official 200 + 200 need the real PopQA
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    df = er.main(["--dataset", "popqa", "--popqa-source", str(popqa_hub), "--max-new-tokens", "3",
                  "--out", str(tmp_path / "out")], model=tiny_model("llama", seed=1, hidden=48))
    assert set(df.entity) == {"Tiny Town", "John Mayne", "George Rankin", "Paris"}
    assert {c for c in df.columns if c.startswith("score_")} == {"score_alias"}
    assert (tmp_path / "out" / "entity_resolution_summary.csv").is_file()
    with pytest.raises(SystemExit):
        er.parse_args(["--dataset", "popqa", "--metrics", "alias,rouge_l"])
    assert er.parse_args([]).metrics == ",".join(er.METRICS) and er.parse_args([]).dataset == "curated"
