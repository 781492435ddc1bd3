"""``load_model(hub_id, remote=True)`` with the transformers a fresh install gets, offline.

A tiny checkpoint's config and tokenizer (no weights) are laid out as a hub snapshot under a
temporary ``HF_HOME``; the check runs in a fresh interpreter with ``HF_HUB_OFFLINE=1`` (the
hub's cache paths are fixed when huggingface_hub is imported). The meta wrapper must have
the same module paths as the real model loaded from disk, meta weights, a working tokenizer,
and the model key NDIF would be sent.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from superscopes_nn.testing.tiny_models import tiny_hf_model
from superscopes_nn.testing.hub_cache import hub_snapshot

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "superscopes/tiny-gemma3"

CHECK = r"""
import json, sys
import torch
from nnsight.modeling import huggingface
from superscopes_nn import load_model
from superscopes_nn.structure.spec import arch_spec

hub_id, full = sys.argv[1], sys.argv[2]
meta = load_model(hub_id, remote=True)
real = load_model(full)
huggingface._ID_CACHE[hub_id] = hub_id
print(json.dumps({
    "meta_paths": [e.path for e in meta.modules()],
    "real_paths": [e.path for e in real.modules()],
    "devices": sorted({str(p.device) for p in meta._module.parameters()}),
    "ids": meta.tokenizer("Pink Floyd")["input_ids"] == real.tokenizer("Pink Floyd")["input_ids"],
    "arch": arch_spec(meta._module.config).layers,
    "key": meta.to_model_key(),
}))
"""


def test_remote_load_model_builds_meta_from_hub_cache(tmp_path):
    hf, tok = tiny_hf_model("gemma3_text", seed=1)
    full = tmp_path / "full"
    hf.save_pretrained(full)
    tok.save_pretrained(full)
    files = hub_snapshot(tmp_path / "hf", HUB_ID)
    for f in full.iterdir():
        if not f.name.endswith(".safetensors"):  # config and tokenizer only: nothing to download
            (files / f.name).write_bytes(f.read_bytes())
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", CHECK, HUB_ID, str(full)], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["meta_paths"] == got["real_paths"]
    assert got["devices"] == ["meta"] and got["ids"] and got["arch"]
    assert json.loads(got["key"].split(":", 1)[1]) == {"repo_id": HUB_ID, "revision": None, "task": "text-generation"}
    assert got["key"].startswith("nnsight.modeling.transformers.TransformersModel:")


def test_remote_load_model_unknown_id_is_one_line(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    code = ("from superscopes_nn import load_model\n"
            "try:\n    load_model('nobody/nothing', remote=True)\n"
            "except ValueError as e:\n    print('ERR', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("ERR cannot load model 'nobody/nothing' for remote use:") and "\n" not in line


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
