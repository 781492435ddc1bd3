"""``superscopes plan --script NAME MODEL [script args]``: what a whole paper script would send to NDIF.

    superscopes plan --script superscopes_fig3 deepseek-ai/DeepSeek-V3
    superscopes plan --script backpatching ./Llama-3.1-405B --limit 20

Runs the registered script (``superscopes run NAME``) as ``NAME --model MODEL [args] --remote --out TMP``
on meta weights inside :func:`~superscopes_nn.engine.recording.recording`: every request it would send is
built as for NDIF and measured (serialized bytes sent, result bytes at most), nothing is sent, and a stand-in
result of the returned shapes lets the script carry on; its own output goes to a temporary folder, its
printing to stderr. Prints the plan's summary line, one line per request (which run of the script it belongs
to), and exits 2 when a request is over one of NDIF's documented limits
(:data:`~superscopes_nn.engine.plan.LIMITS`). A script that refuses ``--remote`` plans as its one-line
refusal (exit 2). A local folder without a tokenizer is planned with the stand-in tokenizer, as
``superscopes plan`` does (:data:`~superscopes_nn.output.plan_cli.STAND_IN_LENGTH`: byte figures are upper
bounds). Where a later stage of the script depends on results (auto-alpha, a population of wrong answers, a
fitted map), its counts are what the stand-ins (token 0, zero vectors) give, not what NDIF would.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .plan_cli import STAND_IN_LENGTH
from .refusal import ERRORS, one_line

USAGE = "usage: superscopes plan --script NAME MODEL [script args...]"


@dataclass(frozen=True)
class ScriptPlan:
    """A script's recorded plan: ``text`` (the table, or its refusal line), ``requests``, ``refused`` (the
    refusal, or ""), ``over`` (requests over a limit), ``sent`` (bytes of each request, in order),
    ``result`` (result bytes at most of each)."""

    name: str
    model: str
    text: str
    refused: str = ""
    sent: tuple = ()
    result: tuple = ()
    over: int = 0

    @property
    def requests(self) -> int:
        return len(self.sent)


def stand_in_folder(model: str, tmp: Path) -> str:
    """``model``, or for a local folder holding a config but no tokenizer a copy of its ``config.json``
    beside the stand-in tokenizer (:func:`~superscopes_nn.structure.stand_in.tiny_tokenizer`) under ``tmp``
    (any other string, e.g. a script argument that is no folder, as it is)."""
    from ..structure.models import has_tokenizer
    from ..structure.stand_in import tiny_tokenizer

    folder = Path(model).expanduser()
    if not (folder.is_dir() and (folder / "config.json").is_file()) or has_tokenizer(folder):
        return model
    there = tmp / "model" / folder.name
    there.mkdir(parents=True)
    shutil.copy(folder / "config.json", there / "config.json")
    tiny_tokenizer().save_pretrained(there)
    return str(there)


def plan_script(name: str, model: str, argv=(), *, experiments=None) -> ScriptPlan:
    """The :class:`ScriptPlan` of ``experiments.run(name, ["--model", model, *argv, "--remote", "--out", TMP])``
    recorded (``experiments``: the registry package, default ``import experiments``)."""
    from ..engine.recording import recording
    from .run_cmd import registry

    exp = experiments or registry()
    if name not in exp.EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(exp.EXPERIMENTS)}")
    with tempfile.TemporaryDirectory(prefix="superscopes-plan-") as tmp:
        swap: dict = {}  # every config folder without a tokenizer named (the model, a verbalizer) -> its copy
        for a in [model, *argv]:
            if a not in swap:
                swap[a] = stand_in_folder(a, Path(tmp) / str(len(swap)))
        used = swap[model]
        args = ["--model", used, *[swap[a] for a in argv], "--remote", "--out", str(Path(tmp) / "out")]
        with recording() as rec, contextlib.redirect_stdout(sys.stderr):
            try:
                exp.run(name, args, prog=f"superscopes plan --script {name}")
            except ERRORS as err:
                line = _restore(one_line(err), swap)
                return ScriptPlan(name, model, f"plan: {name}: refused: {line}", refused=line)
        text = _restore(rec.table(f"{name} on {model}"), swap)
        reqs = rec.requests
    return ScriptPlan(name, model, text, sent=tuple(r.sent for r in reqs), result=tuple(r.result for r in reqs),
                      over=len(rec.problems()))


def _restore(text: str, swap: dict) -> str:
    for given, used in swap.items():
        text = text.replace(used, given) if used != given else text
    return text


def stand_in_note(model: str) -> str:
    """The ``note:`` line of a folder planned with the stand-in tokenizer ("" for any other model)."""
    from ..structure.models import has_tokenizer

    folder = Path(model).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file() and not has_tokenizer(folder):
        return (f"note: {model} holds no tokenizer: planned with the stand-in byte-level tokenizer, "
                f"{STAND_IN_LENGTH} as many tokens per row as a real one, so the byte figures are upper bounds")
    return ""


def main(argv: list[str]) -> int:
    """``superscopes plan --script NAME MODEL [args]`` (``argv``: what follows ``--script``)."""
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__.split("\n\n")[0])
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, model, rest = argv[0], argv[1], argv[2:]
    try:
        note = stand_in_note(model)
        if note:
            print(note, file=sys.stderr)
        p = plan_script(name, model, rest)
    except ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    print(p.text)
    return 2 if p.refused or p.over else 0
