"""Published probe sets that are not shipped here, fetched with ``datasets`` from where their
authors publish them, cached, and parsed like :mod:`superscopes_nn.data.datasets`'s own::

    >>> from superscopes_nn.data.external_data import load_popqa, load_hopping_too_late, load_personaqa_published
    >>> popqa = load_popqa()                     # doctest: +SKIP  (hub dataset akariasai/PopQA, split test)
    >>> htl = load_hopping_too_late()            # doctest: +SKIP  (edenbiran/HoppingTooLate data/two_hop.csv)
    >>> facts = load_personaqa_published()       # doctest: +SKIP  (millicentli/verb_faithfulness datasets/personaqa/PersonaQA)

Where each comes from (the authors publish only PopQA on the Hugging Face Hub; the other two are
files in the paper's GitHub repository, read through ``datasets``' own download cache):

===============  =====================================================  ===========================================
set              published at                                           read with
===============  =====================================================  ===========================================
PopQA            hub dataset ``akariasai/PopQA`` (``test.tsv``; Mallen  ``datasets.load_dataset("akariasai/PopQA")``
                 et al. 2023, the README of the Patchscopes code)
Hopping Too      ``edenbiran/HoppingTooLate``, ``data/two_hop.csv``      ``datasets.load_dataset("csv", data_files=)``
Late             (its README: "The dataset ... is available in
                 ``data/two_hop.csv``"; Biran et al. 2024)
PersonaQA        ``millicentli/verb_faithfulness``,                     ``datasets.DownloadManager`` (one JSON
                 ``datasets/personaqa/<variant>/<attribute>.json`` (the  object per attribute, not a table), then
                 eval prompts; Li et al. 2025; no licence stated)        :func:`~superscopes_nn.data.personaqa.load_personaqa`
===============  =====================================================  ===========================================

``source=`` replaces where a set is fetched from with a local directory in the published layout (a
hub snapshot with ``test.tsv``; a clone holding ``data/two_hop.csv``; a folder of attribute JSONs),
which is how the tests run with no network. Everything is cached by ``datasets`` (``cache_dir=``,
default ``$HF_DATASETS_CACHE``). With ``HF_DATASETS_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) a set
that is not cached is one FileNotFoundError line saying what to fetch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import datasets
import pandas as pd

from .datasets import STRING, STRING_LIST, TWO_HOP_FIELDS, check_columns, existing_file, parse_list, to_dataset  # noqa: F401

# --------------------------------------------------------------------------- where the sets are published

POPQA_HUB_ID = "akariasai/PopQA"
HTL_SOURCE = "https://raw.githubusercontent.com/edenbiran/HoppingTooLate/main"
HTL_FILE = "data/two_hop.csv"
PERSONAQA_SOURCE = "https://raw.githubusercontent.com/millicentli/verb_faithfulness/main/datasets/personaqa"
PERSONAQA_VARIANTS = ("PersonaQA", "PersonaQA-Shuffled", "PersonaQA-Fantasy")
PERSONAQA_ATTRIBUTES = ("country", "favorite_boardgame", "favorite_drink", "favorite_food",
                        "favorite_music_genre", "favorite_sport")
"""The eval-prompt files of ``datasets/personaqa/<variant>/`` in millicentli/verb_faithfulness."""


# --------------------------------------------------------------------------- Hopping Too Late

HTL_REQUIRED = ("e1_label", "r1_template", "r2_template", "e2_label", "e3_label", "e2_aliases", "e3_aliases")
"""Columns the Hopping Too Late CSV must have (Biran et al., 2024; the file is not bundled)."""


def _fill(template: str, value: str, where: str) -> str:
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} at {where} must contain exactly one '{{}}' placeholder")
    return template.replace("{}", value)


def _first_hop_prompt(r1_phrase: str) -> str:
    """'the performer of Imagine' -> 'The performer of Imagine is'."""
    phrase = r1_phrase.strip()
    phrase = phrase[:1].upper() + phrase[1:]
    return phrase if phrase.endswith((" is", " was", " are")) else phrase + " is"


def _htl_row(row: dict, i: int, path: Path) -> dict:
    where = f"{path} row {i}"
    for col in HTL_REQUIRED[:5]:
        if not isinstance(row[col], str) or not row[col].strip():
            raise ValueError(f"column {col!r} at {where} must be a non-empty string, got {row[col]!r}")
    e1, e2, e3 = row["e1_label"], row["e2_label"], row["e3_label"]
    r1_phrase = _fill(row["r1_template"], e1, where)
    source = row.get("source_prompt") or row.get("prompt")  # create_dataset.py names it either way
    two_hop = source if isinstance(source, str) and source.strip() else _fill(row["r2_template"], r1_phrase, where)
    rid = row.get("id") or f"htl_{i}"
    return {
        "id": str(rid),
        "two_hop_prompt": two_hop,
        "first_hop_prompt": _first_hop_prompt(r1_phrase),
        "e1": e1,
        "r1": str(row.get("r1_label") or row["r1_template"]),
        "bridge": e2,
        "bridge_aliases": parse_list(row["e2_aliases"], f"{where}, column 'e2_aliases'"),
        "r2": str(row.get("r2_label") or row["r2_template"]),
        "second_hop_prompt": _fill(row["r2_template"], e2, where),
        "answer": e3,
        "answer_aliases": parse_list(row["e3_aliases"], f"{where}, column 'e3_aliases'"),
    }


def load_hopping_too_late_csv(path: str | Path) -> datasets.Dataset:
    """Map the official Hopping Too Late CSV to the two-hop columns of ``load_two_hop``.

    Assumed columns (others are ignored):

    - ``e1_label``, ``e2_label`` (bridge), ``e3_label`` (answer): entity names;
    - ``r1_template``: phrase for the first hop with one ``{}`` slot for e1,
      e.g. ``"the performer of {}"``;
    - ``r2_template``: prompt for the second hop with one ``{}`` slot, e.g.
      ``"The spouse of {} is"``;
    - ``e2_aliases``, ``e3_aliases``: JSON or Python list literals of strings;
    - optional: ``source_prompt`` (the composed two-hop prompt; when absent or
      empty it is ``r2_template`` filled with the filled ``r1_template``),
      ``id``, ``r1_label``, ``r2_label`` (relation names; default: the templates).

    ``first_hop_prompt`` is the filled r1 phrase, capitalised, with " is"
    appended; ``second_hop_prompt`` is ``r2_template`` filled with e2.
    """
    path = existing_file(path, "Hopping Too Late CSV")
    return htl_rows(pd.read_csv(path, dtype=str, keep_default_na=False), path)


def htl_rows(frame: pd.DataFrame, source) -> datasets.Dataset:
    """The Hopping Too Late table ``frame`` (read from ``source``) as two-hop rows."""
    check_columns(list(frame.columns), HTL_REQUIRED, source)
    rows = [_htl_row({k: (v if isinstance(v, str) else str(v)) for k, v in row.items()}, i, source)
            for i, row in enumerate(frame.to_dict("records"))]
    return to_dataset(rows, TWO_HOP_FIELDS, source)


# --------------------------------------------------------------------------- PopQA

POPQA_REQUIRED = ("id", "subj", "prop", "question", "possible_answers")
POPQA_FIELDS = {
    "id": STRING,
    "subject": STRING,
    "relation": STRING,
    "object": STRING,
    "question": STRING,
    "possible_answers": STRING_LIST,
    "s_pop": datasets.Value("int64"),
    "subject_aliases": STRING_LIST,
}


def _popqa_row(row: Mapping, i: int) -> dict:
    pop = row.get("s_pop")
    return {
        "id": str(row["id"]),
        "subject": row["subj"],
        "relation": row["prop"],
        "object": row.get("obj") or "",
        "question": row["question"],
        "possible_answers": parse_list(
            row["possible_answers"], f"PopQA row {i} (id {row['id']!r}), column 'possible_answers'"
        ),
        "s_pop": -1 if pop is None or pop == "" or pd.isna(pop) else int(pop),
        "subject_aliases": parse_list(row.get("s_aliases"), f"PopQA row {i} (id {row['id']!r}), column 's_aliases'"),
    }


def parse_popqa_rows(rows: Iterable[Mapping] | pd.DataFrame | datasets.Dataset) -> datasets.Dataset:
    """Map raw PopQA rows (Mallen et al., 2023; ``akariasai/PopQA``) to the scoring schema.

    Input columns: id, subj, prop, obj, question, possible_answers (a JSON list
    as a string), s_pop, ... Output columns: id, subject, relation (prop),
    object (obj), question, possible_answers (list[str]), s_pop (int, -1 if absent),
    subject_aliases (s_aliases, list[str], [] if absent).
    """
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    rows = list(rows)
    if not rows:
        raise ValueError("no rows in the PopQA input: the set is empty")
    for i, row in enumerate(rows):
        check_columns(list(row), POPQA_REQUIRED, f"PopQA row {i}")
    return to_dataset([_popqa_row(r, i) for i, r in enumerate(rows)], POPQA_FIELDS, "the PopQA input")


def load_popqa(split: str = "test", *, source: str | Path = POPQA_HUB_ID, cache_dir: str | Path | None = None
               ) -> datasets.Dataset:
    """PopQA via ``datasets.load_dataset(source, split=split)`` (default the authors' hub dataset
    ``akariasai/PopQA``, Mallen et al. 2023), parsed by :func:`parse_popqa_rows`; ``source`` may be a
    local directory in the hub's layout (``test.tsv``)."""
    source = _source(source, "PopQA")
    return parse_popqa_rows(_fetching(
        "PopQA", f"datasets.load_dataset({POPQA_HUB_ID!r})", source,
        lambda: datasets.load_dataset(str(source), split=split, cache_dir=_str(cache_dir))))


def popqa_entities(popqa: datasets.Dataset | pd.DataFrame, per_end: int = 200) -> pd.DataFrame:
    """The official entity-resolution set (``entity_processing.ipynb``): the ``per_end`` least and the
    ``per_end`` most popular distinct subjects of PopQA by ``s_pop``, as entity rows (name, type =
    ``"least popular"`` / ``"most popular"``, description = ``""``: PopQA has no reference
    descriptions, so only the ``alias`` metric scores them, aliases = ``subject_aliases``)."""
    if per_end < 1:
        raise ValueError(f"per_end must be >= 1, got {per_end!r}")
    df = popqa.to_pandas() if hasattr(popqa, "to_pandas") else pd.DataFrame(popqa)
    check_columns(list(df.columns), ("subject", "s_pop"), "the PopQA rows")
    subj = df.drop_duplicates("subject").sort_values("s_pop", kind="stable")
    if len(subj) < 2 * per_end:
        raise ValueError(f"PopQA has {len(subj)} distinct subjects, fewer than 2 * per_end = {2 * per_end}")
    ends = [(subj.head(per_end), "least popular"), (subj.tail(per_end), "most popular")]
    aliases = "subject_aliases" in df
    return pd.DataFrame([{"name": r.subject, "type": kind, "description": "",
                          "aliases": list(r.subject_aliases) if aliases else []}
                         for part, kind in ends for r in part.itertuples(index=False)])


# --------------------------------------------------------------------------- fetching through datasets



def _str(path) -> str | None:
    return None if path is None else str(path)


def _remote(source) -> bool:
    return "://" in str(source)


def _source(source, what: str):
    """A local ``source`` must exist (a hub id like ``owner/name`` that is no directory here is remote)."""
    path = Path(str(source)).expanduser()
    looks_local = isinstance(source, Path) or str(source).startswith((".", "/", "~")) or path.exists()
    if not _remote(source) and looks_local and not path.exists():
        raise FileNotFoundError(f"{what} source not found: {path}")
    return path if looks_local else source


def _fetching(what: str, fetch: str, source, call):
    """Run ``call``; offline and not cached, one line saying what to fetch (any other error propagates)."""
    try:
        return call()
    except Exception as err:
        if isinstance(source, Path) or not datasets.config.HF_HUB_OFFLINE:
            raise
        raise FileNotFoundError(
            f"{what} is not in the datasets cache and HF_DATASETS_OFFLINE is set: fetch it once online "
            f"({fetch}) or pass source= a local copy ({type(err).__name__})") from None


def load_hopping_too_late(*, source: str | Path = HTL_SOURCE, cache_dir: str | Path | None = None
                          ) -> datasets.Dataset:
    """Hopping Too Late's published two-hop queries (``edenbiran/HoppingTooLate``, ``data/two_hop.csv``,
    Biran et al. 2024) via ``datasets.load_dataset("csv", data_files=<source>/data/two_hop.csv)``,
    mapped by :func:`load_hopping_too_late_csv` to the columns of ``load_two_hop``. ``source``: the
    repository's raw-file root (default its ``main``) or a local clone."""
    source = _source(source, "Hopping Too Late")
    url = f"{str(source).rstrip('/')}/{HTL_FILE}"
    if isinstance(source, Path):
        existing_file(source / HTL_FILE, "Hopping Too Late CSV")
    table = _fetching("Hopping Too Late two_hop.csv", f"{HTL_SOURCE}/{HTL_FILE}", source,
                      lambda: datasets.load_dataset("csv", data_files=url, split="train", cache_dir=_str(cache_dir)))
    return htl_rows(table.to_pandas().fillna(""), url)


def load_personaqa_published(variant: str = "PersonaQA", *, source: str | Path = PERSONAQA_SOURCE,
                             attributes=PERSONAQA_ATTRIBUTES, cache_dir: str | Path | None = None) -> pd.DataFrame:
    """Li et al.'s PersonaQA eval prompts (``millicentli/verb_faithfulness``,
    ``datasets/personaqa/<variant>/<attribute>.json``), downloaded into the datasets cache by
    ``datasets.DownloadManager`` and read by :func:`superscopes_nn.data.personaqa.load_personaqa`
    (rows: attribute, id, name, prompt, question, target). ``source``: the ``datasets/personaqa`` root
    (default the repository's ``main``) or a local folder holding ``<variant>/<attribute>.json``."""
    from .personaqa import load_personaqa_files

    if variant not in PERSONAQA_VARIANTS:
        raise ValueError(f"unknown PersonaQA variant {variant!r}; choose from {PERSONAQA_VARIANTS}")
    source = _source(source, "PersonaQA")
    urls = {a: f"{str(source).rstrip('/')}/{variant}/{a}.json" for a in attributes}
    if isinstance(source, Path):
        for a in attributes:
            existing_file(source / variant / f"{a}.json", f"PersonaQA {variant}")
    config = datasets.DownloadConfig(cache_dir=_str(cache_dir))
    files = _fetching(f"PersonaQA {variant}", f"{PERSONAQA_SOURCE}/{variant}/<attribute>.json", source,
                      lambda: datasets.DownloadManager(download_config=config).download(urls))
    return load_personaqa_files({a: Path(f) for a, f in files.items()})
