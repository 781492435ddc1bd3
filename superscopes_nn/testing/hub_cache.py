"""An offline Hugging Face hub cache for tests: a model's hub id resolved from local files only.

>>> files = hub_snapshot(tmp / "hf", "meta-llama/Llama-3.1-405B")   # then copy config.json (+ a tokenizer) there
>>> env = {"HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1"}        # from_pretrained("meta-llama/...") finds them
"""

from __future__ import annotations

from pathlib import Path


def hub_snapshot(hf_home: Path, hub_id: str) -> Path:
    """Make ``hf_home/hub/models--ORG--NAME`` with ``refs/main`` pointing at one snapshot; return that snapshot's
    folder (empty: the caller puts the files the hub id should resolve to in it)."""
    snap = Path(hf_home) / "hub" / f"models--{hub_id.replace('/', '--')}"
    sha = "0" * 40
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text(sha)
    files = snap / "snapshots" / sha
    files.mkdir(parents=True)
    return files
