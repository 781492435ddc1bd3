"""``load_model(DIR, remote=True)`` on full-size configs never allocates: measured in a fresh interpreter.

DIR holds a published ``config.json`` (tests/fixtures/large_configs) and a small local tokenizer.
The meta build must put every parameter and buffer on the meta device, resolve the sites on the
config's structural twin (superscopes_nn.structure.twin) and stay under 1 GB of peak RSS above
the interpreter's baseline (``resource.getrusage(...).ru_maxrss`` after importing the library,
torch and transformers). DeepSeek-V3 (671B: 61 layers x 256 experts, stacked expert tensors that
accelerate's ``init_empty_weights`` cannot reach: 30 GB asked before) and Llama-3.1-405B.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "fixtures" / "large_configs"
LIMIT_MB = 1024

CHECK = r"""
import json, resource, sys, time
import torch, transformers, superscopes_nn
from superscopes_nn import load_model
from superscopes_nn.structure.info import model_info
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for d in sys.argv[1:]:
    t0 = time.perf_counter()
    model = load_model(d, remote=True, dtype=torch.bfloat16)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # high-water mark since the start
    hf, info = model._module, model_info(model)
    out[d] = {
        "delta_mb": (peak - base) / 1024, "seconds": seconds,
        "params": sum(p.numel() for p in hf.parameters()),
        "devices": sorted({t.device.type for t in list(hf.parameters()) + list(hf.buffers())}),
        "n_layers": info.n_layers, "layers": info.spec.layers, "mlp_out": info.spec.mlp_out,
    }
    del model, hf
print(json.dumps(out))
"""


def model_dir(tmp_path, name):
    from superscopes_nn.testing.tiny_models import tiny_tokenizer

    d = tmp_path / name
    d.mkdir()
    shutil.copy(CONFIGS / name / "config.json", d / "config.json")
    tiny_tokenizer().save_pretrained(d)
    return d


MODELS = {"DeepSeek-V3": (671.0e9, 61), "Llama-3.1-405B": (405.9e9, 126)}


def test_full_size_meta_builds_allocate_nothing(tmp_path):
    """Both builds in one interpreter, one after the other: each delta is the high-water mark since the
    baseline, so the second one bounds both builds together."""
    dirs = {name: model_dir(tmp_path, name) for name in MODELS}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHECK, *map(str, dirs.values())], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (params, layers) in MODELS.items():
        got = out[str(dirs[name])]
        print(f"{name}: meta build {got['seconds']:.1f} s, peak RSS +{got['delta_mb']:.0f} MB above the baseline, "
              f"{got['params'] / 1e9:.1f} B parameters")
        assert got["devices"] == ["meta"], got["devices"]
        assert abs(got["params"] - params) < 0.001 * params, got["params"]
        assert got["n_layers"] == layers and got["layers"] == "model.layers" and got["mlp_out"] == "mlp"
        assert got["delta_mb"] < LIMIT_MB, f"{name}: peak RSS +{got['delta_mb']:.0f} MB above the baseline"
        assert got["seconds"] < 120, f"{name}: meta build took {got['seconds']:.0f} s"
