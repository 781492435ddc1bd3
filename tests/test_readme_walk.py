"""The README, top to bottom, as a newcomer runs it after the demo install (issue 42).

Every fenced ``python`` block and every command line of every ``bash`` block is extracted in README order
and run: the python blocks pasted one after another into ONE script run by a fresh interpreter (so each must
import what it uses and print what it shows); each ``superscopes ...`` line through the installed command's
own entry point (``superscopes_nn.output.cli.main``, in this process, so the imports and the MiniLM scorer are
paid once: the same code path as the console script), any other line through ``bash``; all in a scratch
directory (so ``runs/...`` lands there). Where a README default is long or needs what
this machine has not (a network, NDIF, a GPU), the line runs with a substitution from :data:`SUBSTITUTIONS`
or is set aside by :data:`NOT_RUN`, each with its reason; every substitution's text must occur in the README
(else the test fails: the README changed, update the table), and any README line in neither table runs as
written, so the README cannot drift from what works.

Substitutions (README text -> what runs):

==========================================================  ==============================================  =====================================
README                                                      runs                                            why
==========================================================  ==============================================  =====================================
tour ``layers=range(9), alphas=[1, 3, 6, 9, 12, 15]``       ``layers=range(2), alphas=[1, 6]``              54 rows -> 4 (time)
``explain ... --layers 0-8 --alphas 1,3,6,9,12,15``         ``--layers 0-1 --alphas 1,6``                   54 rows -> 4 (time)
``explain ... --target-site same``                          ``+ --layers 0-1 --alphas 1,6``                 its defaults are 54 rows (time)
NDIF block ``CONFIG.set_default_api_key(...)``              ``CONFIG.API.APIKEY = ...``                     the former writes nnsight's config file
NDIF block ``load_model("meta-llama/Llama-3.1-70B", ...)``  the shipped Llama-3.1-405B config folder         no hub here
NDIF block ``sweep(..., remote=True)``                      ``plan(model, sweep_rows(...))``                no NDIF here: the plan of that request
==========================================================  ==============================================  =====================================

Not run: ``bash scripts/setup.sh demo`` (this test runs in the installed environment; checked by importing the
package and finding ``superscopes``), ``bash scripts/setup.sh test && ... pytest -q`` (the suite this test is in),
the GPU lines (run only when CUDA is present), the live NDIF lines (``NDIF_API_KEY=KEY superscopes run ...``). The default model is kept (Gemma 3 270M, cached under
``~/.cache/superscopes_nn`` after its first conversion); ``superscopes demo`` runs at its own defaults.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LARGE = ROOT / "tests" / "fixtures" / "large_configs" / "Llama-3.1-405B"

SUBSTITUTIONS = [
    ("layers=range(9), alphas=[1, 3, 6, 9, 12, 15])", "layers=range(2), alphas=[1, 6])"),
    ("--layers 0-8 --alphas 1,3,6,9,12,15", "--layers 0-1 --alphas 1,6"),
    ("--target-site same", "--target-site same --layers 0-1 --alphas 1,6"),
    ('CONFIG.set_default_api_key("YOUR_NDIF_KEY")', 'CONFIG.API.APIKEY = "YOUR_NDIF_KEY"'),
    ('load_model("meta-llama/Llama-3.1-70B", remote=True)', "load_model(LLAMA_DIR, remote=True)"),
    ("df = sweep(model, ", "from superscopes_nn import sweep_rows\nfrom superscopes_nn.engine.plan import plan\n"
                          "df = plan(model, sweep_rows(model, "),
    ("alphas=[1, 3, 6, 9, 12, 15], remote=True)", "alphas=[1, 3, 6, 9, 12, 15]))\nprint(df.table())"),
]
"""(README text, what runs instead): see the module docstring for why each."""

NOT_RUN = {
    "bash scripts/setup.sh demo": "the environment this test runs in is the demo install (checked below)",
    "bash scripts/setup.sh test": "the test suite itself (this test is part of it)",
    "SUPERSCOPES_TEST_DEVICES=cuda": "a GPU line: runs only where CUDA is present",
    "bash scripts/gpu_check.sh": "a GPU line: runs only where CUDA is present",
    "NDIF_API_KEY=KEY superscopes run ": "a live NDIF line (a key, the network): tests/test_remote_scripts.py runs each "
                                         "script with --remote on a full-size config up to its meta load",
}
"""README command prefixes set aside, and why."""


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block, in order."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def command_lines(body: str) -> list[str]:
    """The commands of a bash block: one per line, trailing ``# comment`` dropped, blank lines skipped."""
    out = []
    for line in body.splitlines():
        line = re.sub(r"\s+#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def substitute(text: str) -> str:
    for old, new in SUBSTITUTIONS:
        text = text.replace(old, new)
    return text


def test_every_substitution_is_still_in_the_readme():
    text = README.read_text(encoding="utf-8")
    assert [old for old, _ in SUBSTITUTIONS if old not in text] == []


def run_line(cmd: str, cwd: Path, env: dict, capfd) -> subprocess.CompletedProcess:
    """``cmd`` as the README reader runs it: ``superscopes ...`` through the console script's entry point
    (its exit status; ``SystemExit`` included), anything else through ``bash``."""
    if not cmd.startswith("superscopes "):
        return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    from superscopes_nn.output.cli import main

    capfd.readouterr()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        code = main(shlex.split(cmd)[1:])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(here)
    out = capfd.readouterr()
    return subprocess.CompletedProcess(cmd, code, out.out, out.err)


def test_the_readme_walks_top_to_bottom(tmp_path, capfd):
    import torch

    text = README.read_text(encoding="utf-8")
    found = blocks(text)
    assert [lang for lang, _ in found if lang not in ("python", "bash", "")] == []  # "": the layout tree, not code
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "superscopes").is_file(), "the demo install provides the superscopes command"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1"}
    llama = tmp_path / "Llama-3.1-405B"
    llama.mkdir()
    shutil.copy(LARGE / "config.json", llama / "config.json")
    from superscopes_nn.testing.tiny_models import tiny_tokenizer

    tiny_tokenizer().save_pretrained(llama)
    script, ran, skipped = [f"LLAMA_DIR = {str(llama)!r}"], [], []
    for lang, body in found:
        if lang not in ("python", "bash"):
            continue
        if lang == "python":
            script.append(substitute(body))
            continue
        for line in command_lines(body):
            why = next((w for prefix, w in NOT_RUN.items() if line.startswith(prefix)), None)
            if why and not (why.startswith("a GPU") and torch.cuda.is_available()):
                skipped.append(line)
                if line.startswith("bash scripts/setup.sh demo") and "&&" in line:  # its second half runs
                    line = line.split("&&", 1)[1].strip().removeprefix(".venv/bin/")
                else:
                    continue
            cmd = substitute(line).removeprefix(".venv/bin/")
            res = run_line(cmd, tmp_path, env, capfd)
            assert res.returncode == 0, f"README line {line!r} (ran {cmd!r}) failed:\n{res.stdout}\n{res.stderr}"
            assert "Traceback" not in res.stderr, res.stderr
            assert "past_key_values" not in res.stderr, res.stderr  # no deprecation noise per generate
            assert "Loading weights" not in res.stderr, res.stderr[-2000:]  # no load bar redrawn into a log
            ran.append((line, res))
    # every python block, pasted into one script, runs and prints what the README shows
    (tmp_path / "tour.py").write_text("\n\n".join(script), encoding="utf-8")
    res = subprocess.run([sys.executable, "tour.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert "interpretation" in res.stdout and "source_layer" in res.stdout  # the pivot and the patchscope row
    assert "plan: " in res.stdout and "within NDIF's limits" in res.stdout  # the NDIF block, planned
    assert "past_key_values" not in res.stderr

    lines = [line for line, _ in ran]
    assert any(line.startswith("superscopes demo") for line in lines) and len(lines) >= 6
    demo = next(r for line, r in ran if line.startswith("superscopes demo"))
    assert "chance line" in demo.stdout and (tmp_path / "runs" / "demo" / "report.html").is_file()
    resume = next(r for line, r in ran if "--resume" in line)
    assert "smollm2" not in resume.stdout + resume.stderr  # took the run's own model from its config.json
    report = (tmp_path / "runs" / "pf" / "report.html").read_text(encoding="utf-8")
    assert "background:rgb" in report and "threshold 0.3" in report  # explain saved its scores: coloured
    assert len(skipped) >= 2
