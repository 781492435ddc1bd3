"""A non-editable install finds its data: build the wheel, install it into a fresh --target folder,
and from another cwd (the repo NOT on sys.path) load the package data, find the shared data
(env var, then shared/data beside the cwd) and run an experiment script on a tiny model."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r'''
import os, runpy, sys
from pathlib import Path

repo, site, script, tiny, out = (Path(a) for a in sys.argv[1:6])
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower()
                    and "editable" not in getattr(f, "__name__", "").lower()]   # no editable install of the repo
import superscopes_nn
from superscopes_nn.data import datasets as ds

assert Path(superscopes_nn.__file__).is_relative_to(site), superscopes_nn.__file__
venv = Path(sys.prefix).resolve()  # the interpreter's own site-packages may live inside the repo (.venv)
bad = [p for p in sys.path if p in ("", ".") or (Path(p).resolve().is_relative_to(repo)
                                                  and not Path(p).resolve().is_relative_to(venv))]
assert not bad, ("repo on sys.path", bad)
assert ds.DATA_DIR.is_relative_to(site), ds.DATA_DIR
assert len(ds.load_entities()) == 285 and len(ds.load_two_hop()) == 182
assert (ds.DATA_DIR / "next_token_sample.txt").is_file()
from superscopes_nn.data.personaqa import INVENTED, load_personaqa
assert INVENTED.is_relative_to(site) and len(load_personaqa(INVENTED)) == 48, INVENTED

shared = os.environ.pop("SUPERSCOPES_SHARED_DATA")
try:
    ds.shared_data_dir()
    raise AssertionError("found shared data without the env var from " + os.getcwd())
except FileNotFoundError as err:
    msg = str(err)
    assert "\n" not in msg and "SUPERSCOPES_SHARED_DATA" in msg and str(Path.cwd().parent / "shared" / "data") in msg, msg
os.environ["SUPERSCOPES_SHARED_DATA"] = shared
assert len(ds.load_fig3_prompts()) == 48
assert set(ds.load_lre(kind="factual", relations=["country_capital_city"])["relation"]) == {"country_capital_city"}
os.environ.pop("SUPERSCOPES_SHARED_DATA")
beside = Path.cwd() / "proj"
beside.mkdir()
os.chdir(beside)                                  # cwd/../shared/data -> a link to the shared data
(beside.parent / "shared").mkdir()
(beside.parent / "shared" / "data").symlink_to(shared)
assert len(ds.load_fig3_prompts()) == 48

sys.argv = [str(script), "--model", str(tiny), "--limit", "2", "--out", str(out), "--max-new-tokens", "2"]
runpy.run_path(str(script), run_name="__main__")
assert (out / "backpatching.csv").is_file() and (out / "backpatching_summary.json").is_file()
assert "superscopes_nn" in sys.modules and Path(sys.modules["superscopes_nn"].__file__).is_relative_to(site)
print("WHEEL-OK")
'''


def test_wheel_install_finds_data_and_runs_an_experiment(tmp_path, shared_data):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "superscopes_nn", src / "superscopes_nn", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("superscopes_nn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("entities.jsonl", "two_hop.jsonl", "next_token_sample.txt"):
        assert f"superscopes_nn/data/{f}" in names, sorted(names)
    assert not any(n.endswith(".tsv") for n in names), "shared data must not be packaged"
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)

    from superscopes_nn.structure.testing import tiny_hf_model

    model, tok = tiny_hf_model("llama")
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    user = tmp_path / "user"
    shutil.copytree(ROOT / "experiments", user / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SUPERSCOPES_SHARED_DATA")}
    env |= {"PYTHONPATH": str(site), "SUPERSCOPES_SHARED_DATA": str(shared_data), "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-P", str(tmp_path / "driver.py"), str(ROOT), str(site),
                        str(user / "experiments" / "hopping_too_late" / "backpatching.py"), str(tmp_path / "tiny"), str(user / "out")],
                       cwd=user, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "WHEEL-OK" in r.stdout, (r.stdout[-3000:], r.stderr[-3000:])
