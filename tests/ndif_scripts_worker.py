"""Worker of tests/test_ndif_scripts.py: every paper script twice, on a twin locally and by hub id through NDIF's code.

Runs in a fresh interpreter whose ``HF_HOME`` is an offline hub cache holding only each full-size config and a
tokenizer (the hub's cache paths are fixed when huggingface_hub is imported, so this cannot run inside pytest's
process). One NDIF runner (tests/ndif_server.py: ndif 0.1.2's trusted and sandbox paths) serves every case. Per
case: ``experiments.run(NAME, [... --model TWIN_DIR ...])`` locally (not for a script that refuses ``--remote``), then ``experiments.run(NAME, [... --model
HUB_ID --remote ...])`` with nnsight's real ``RemoteBackend`` routed to the runner, the envelope's model key
rewritten HUB_ID -> TWIN_DIR (the server runs the config's structural twin). Each model is loaded once
(:func:`memo_loads`). Writes ``cases.json``: per case
the error (None) and the runner's log of its requests. NDIF's /status preflight is off (the runner is no host).

    python tests/ndif_scripts_worker.py SPEC.json
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ndif_server  # noqa: E402


def memo_loads(mp) -> None:
    """Each model is loaded once for all cases: ``superscopes_nn.load_model`` (what the scripts' ``load`` calls)
    returns the model it built before for the same arguments (a 126-layer twin or meta build takes 5-20 s)."""
    import superscopes_nn

    real, memo = superscopes_nn.load_model, {}

    def load_model(*args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in memo:
            memo[key] = real(*args, **kwargs)
        return memo[key]

    mp.setattr(superscopes_nn, "load_model", load_model)


def main(spec_path: str) -> None:
    import torch

    # The local runs compute with the server's thread count (tests/ndif_server.py; tests/conftest.py for pytest's
    # process): the same float32 reduction order, and no intra-op spin-waits on a shared 2-core machine (2 threads
    # made this tier ~10x slower: fig2 on the 126-layer twin 35 s vs 3.4 s with 1 thread).
    torch.set_num_threads(int(os.environ.get("SUPERSCOPES_TEST_THREADS", "1")))
    spec = json.loads(Path(spec_path).read_text())
    import experiments
    import superscopes_nn.remote.preflight as preflight

    preflight.PREFLIGHT = False
    server = ndif_server.Server(ndif_server.ndif_python(), Path(spec["workdir"]))
    results = {}
    mp = pytest.MonkeyPatch()
    try:
        ndif_server.route(mp, server, keys={c["hub_id"]: c["twin_dir"] for c in spec["configs"]})
        for c in spec["configs"]:
            ndif_server.seed_id_cache(c["twin_dir"])
        memo_loads(mp)
        for case in spec["cases"]:
            got = {}
            for side in case["sides"]:
                start, t0 = len(server.log), time.perf_counter()
                log = io.StringIO()
                try:
                    with contextlib.redirect_stdout(log):
                        experiments.run(case["name"], case[side])
                    err = None
                except Exception as exc:  # noqa: BLE001 - reported per case, the test decides
                    err = f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}"
                    if not isinstance(exc, ValueError):
                        err += "\n" + traceback.format_exc()[-3000:]
                got[side] = {"error": err, "seconds": round(time.perf_counter() - t0, 1),
                             "requests": [{k: r.get(k) for k in ("errors", "sandbox_equal", "disallowed")}
                                          for r in server.log[start:]]}
            results[case["id"]] = got
            got.setdefault("local", {"error": None, "seconds": 0.0, "requests": []})
            line = (f"{case['id']}: local {got['local']['seconds']} s ({got['local']['error']}), remote "
                    f"{got['remote']['seconds']} s ({(got['remote']['error'] or '')[:300]}), "
                    f"{len(got['remote']['requests'])} requests")
            with open(Path(spec["workdir"], "progress.txt"), "a") as f:
                f.write(line.replace("\n", " ") + "\n")
            print(f"{case['id']}: local {got['local']['seconds']} s, remote {got['remote']['seconds']} s, "
                  f"{len(got['remote']['requests'])} requests", file=sys.stderr, flush=True)
    finally:
        mp.undo()
        server.close()
    Path(spec["workdir"], "cases.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
