"""The shipped third-party data matches its provenance table (data/README.md) byte for byte, and
the loaders read the shipped copy (no ../shared, no cwd search) unless SUPERSCOPES_SHARED_DATA
overrides it."""

import csv
import gzip
import hashlib
import io
import re
from pathlib import Path

import pytest

from superscopes_nn.data import datasets as ds
from superscopes_nn.data.lre import lre_samples

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Provenance of the shipped third-party files"
HEADER = ["file (under `superscopes_nn/data/`)", "bytes shipped", "bytes upstream", "source repository",
          "source path", "commit", "licence", "sha256 (upstream bytes)"]


def provenance_rows() -> list[dict]:
    text = (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    assert SECTION in text, f"data/README.md lacks {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head == HEADER, head
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip().strip("|").split(" | ")]
        assert len(cells) == len(HEADER), ln
        rows.append(dict(zip(HEADER, (c.strip("`") if c.startswith("`") and c.endswith("`") else c for c in cells))))
    return rows


ROWS = provenance_rows()


def content(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


@pytest.mark.parametrize("row", ROWS, ids=[r[HEADER[0]] for r in ROWS])
def test_shipped_file_matches_its_row(row):
    path = ds.DATA_DIR / row[HEADER[0]]
    assert path.is_file(), path
    assert path.stat().st_size == int(row["bytes shipped"]), (path, path.stat().st_size)
    data = content(path)
    assert len(data) == int(row["bytes upstream"]), (path, len(data))
    assert hashlib.sha256(data).hexdigest() == row["sha256 (upstream bytes)"], path
    assert re.fullmatch(r"[0-9a-f]{40}|n/a", row["commit"]), row["commit"]
    assert row["source repository"] and row["source path"] and row["licence"], row


def test_every_shipped_third_party_file_is_in_the_table():
    listed = {r[HEADER[0]] for r in ROWS}
    shipped = {str(p.relative_to(ds.DATA_DIR)) for p in (ds.DATA_DIR / "patchscopes_lre").rglob("*") if p.is_file()}
    shipped.add(ds.FIG3_FILE)
    assert shipped == listed, (sorted(shipped - listed), sorted(listed - shipped))
    assert len([f for f in listed if f.endswith(".tsv.gz")]) == 22


def test_loaders_read_the_shipped_copy(monkeypatch, tmp_path):
    monkeypatch.delenv(ds.SHARED_DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)                       # no shared/data beside the cwd matters any more
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert ds.data_dir() == ds.DATA_DIR
    pairs = ds.load_fig3_prompts()
    assert len(pairs) == 48 and pairs[0] == ("Pink Floyd", "loyd") and pairs[-1] == ("George Washington", "Washington")
    lre = ds.load_lre(kind="factual", relations=["country_capital_city"])
    upstream = content(ds.DATA_DIR / "patchscopes_lre" / "factual" / "country_capital_city.tsv.gz").decode()
    assert len(lre) == len(list(csv.reader(io.StringIO(upstream), delimiter="\t"))) - 1  # one row per record
    assert set(lre["relation"]) == {"country_capital_city"} and "United States" in set(lre["subject"])
    samples = lre_samples(tasks="country_capital_city,fruit_inside_color", limit=1)
    assert set(samples.task) == {"country_capital_city", "fruit_inside_color"}


def test_env_override_with_plain_tsv(monkeypatch, tmp_path):
    mine = tmp_path / "mine"
    (mine / "patchscopes_lre" / "factual").mkdir(parents=True)
    (mine / "patchscopes_lre" / "factual" / "tiny.tsv").write_text(
        "\tsample_id\tprompt_target\tsubject\tobject\n0\t0\tThe capital of x\tFrance\tParis\n")
    (mine / ds.FIG3_FILE).write_text("# one\nPink Floyd\tloyd\n")
    monkeypatch.setenv(ds.SHARED_DATA_ENV, str(mine))
    assert ds.data_dir() == mine
    assert ds.load_fig3_prompts() == [("Pink Floyd", "loyd")]
    assert list(ds.load_lre()["relation"]) == ["tiny"]
    monkeypatch.setenv(ds.SHARED_DATA_ENV, str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match=r"SUPERSCOPES_SHARED_DATA='.*gone' is not a directory") as err:
        ds.load_fig3_prompts()
    assert "\n" not in str(err.value)


def test_nothing_reads_shared_any_more():
    hits = []
    for folder in ("superscopes_nn", "experiments", "tests", "scripts", ".ci"):
        for p in (ROOT / folder).rglob("*"):
            if p.is_file() and p.suffix in (".py", ".sh", "") and p.name != Path(__file__).name:
                text = p.read_text(encoding="utf-8", errors="replace")
                if re.search(r"\.\./shared|shared/data|shared_data_dir", text):
                    hits.append(str(p.relative_to(ROOT)))
    assert not hits, hits
