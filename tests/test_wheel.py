"""A wheel in a fresh venv runs the paper scripts: build the wheel from a copy of the tracked sources,
install it (no deps) into a new venv that sees the existing interpreter's dependencies but not the
repository, and from another directory run ``superscopes run --list`` and two experiments that read
the shipped third-party data (Fig 3 prompts, Patchscopes LRE files) on a tiny model."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = r'''
import sys
from pathlib import Path
import experiments, superscopes_nn
from superscopes_nn.data import datasets as ds
from superscopes_nn.data.personaqa import INVENTED, load_personaqa
venv, repo = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
for mod in (superscopes_nn, experiments):
    f = Path(mod.__file__).resolve()
    assert f.is_relative_to(venv) and not f.is_relative_to(repo), f
assert ds.data_dir() == ds.DATA_DIR and ds.DATA_DIR.resolve().is_relative_to(venv), ds.DATA_DIR
assert len(ds.load_entities()) == 285 and len(ds.load_two_hop()) == 182 and len(ds.load_fig3_prompts()) == 48
assert len(load_personaqa(INVENTED)) == 48 and len(set(ds.load_lre()["relation"])) == 22
print("CHECK-OK")
'''


def build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("superscopes_nn", "experiments"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "wheel", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("superscopes_nn-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new venv (no pip of its own) whose site-packages gets the wheel; the current interpreter's
    site-packages is appended after it by a .pth line, for the dependencies only."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "--python", str(py),
                    "install", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    return venv


def test_wheel_in_a_fresh_venv_runs_experiments_from_another_directory(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [f"superscopes_nn/data/{f}" for f in ("entities.jsonl", "two_hop.jsonl", "next_token_sample.txt",
                                                    "superscopes_fig3_prompts.tsv", "patchscopes_lre/LICENSE",
                                                    "patchscopes_lre/factual/person_father.tsv.gz")]
    assert set(shipped) <= names and "experiments/__init__.py" in names, sorted(names)
    assert len([n for n in names if n.startswith("superscopes_nn/data/patchscopes_lre/") and n.endswith(".tsv.gz")]) == 22
    assert "experiments/patchscopes/entity_resolution.py" in names and "superscopes_nn/output/run_cmd.py" in names
    venv = fresh_venv(tmp_path, wheel)

    from superscopes_nn.testing.tiny_models import tiny_hf_model

    model, tok = tiny_hf_model("llama")
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    user = tmp_path / "user"
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SUPERSCOPES_SHARED_DATA", "VIRTUAL_ENV")}
    env |= {"MPLBACKEND": "Agg", "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}

    def run(*cmd, timeout=300):
        r = subprocess.run(list(cmd), cwd=user, env=env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, (cmd, r.stdout[-3000:], r.stderr[-3000:])
        return r.stdout

    assert "CHECK-OK" in run(str(venv / "bin" / "python"), "-c", CHECK, str(venv), str(ROOT))
    cli = str(venv / "bin" / "superscopes")
    listed = run(cli, "run", "--list")
    import experiments

    assert [ln.split()[0] for ln in listed.splitlines() if ln.strip()] == list(experiments.EXPERIMENTS)
    tiny = str(tmp_path / "tiny")
    run(cli, "run", "superscopes_fig3", "--model", tiny, "--limit", "2", "--layers", "1-2", "--max-new-tokens", "2",
        "--out", "fig3")
    assert list((user / "fig3").glob("*.csv")), sorted(p.name for p in (user / "fig3").iterdir())
    run(cli, "run", "attribute_extraction", "--model", tiny, "--tasks", "country_capital_city", "--limit", "1",
        "--layer-stride", "2", "--max-new-tokens", "2", "--out", "attr")
    assert (user / "attr" / "attribute_extraction.csv").is_file()
    assert not (user / "runs").exists()   # every output went under --out, relative to this directory
