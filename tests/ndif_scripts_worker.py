"""Worker of tests/test_ndif_scripts.py: every paper script twice, on a twin locally and by hub id through NDIF's code.

Runs in a fresh interpreter whose ``HF_HOME`` is an offline hub cache holding only each full-size config and a
tokenizer (the hub's cache paths are fixed when huggingface_hub is imported, so this cannot run inside pytest's
process). One NDIF runner (tests/ndif_server.py: ndif 0.1.2's trusted and sandbox paths) serves every case. Per
case: ``experiments.run(NAME, [... --model TWIN_DIR ...])`` locally, then ``experiments.run(NAME, [... --model
HUB_ID --remote ...])`` with nnsight's real ``RemoteBackend`` routed to the runner, the envelope's model key
rewritten HUB_ID -> TWIN_DIR (the server runs the config's structural twin). Writes ``cases.json``: per case
the error (None) and the runner's log of its requests. NDIF's /status preflight is off (the runner is no host).

    python tests/ndif_scripts_worker.py SPEC.json
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import traceback
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ndif_server  # noqa: E402


def main(spec_path: str) -> None:
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
        for case in spec["cases"]:
            got = {}
            for side in ("local", "remote"):
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
