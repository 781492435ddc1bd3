"""Remote parity offline: remote="local" and a captured request replayed in a fresh `python -I`."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from superscopes_nn import ENTITY_PROMPT, Target, run_rows, sweep_rows
from superscopes_nn.engine.chunks import plan_chunk, run_chunks
from superscopes_nn.engine.plan import greedy_kwargs
from superscopes_nn.remote.capture import CaptureBackend, RequestCaptured
from superscopes_nn.testing.tiny_models import tiny_hf_model, wrap

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_captured_request_replays_without_the_library(tmp_path, arch):
    hf, tok = tiny_hf_model(arch, seed=3)
    hf.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    model = wrap(hf, tok)
    rows = sweep_rows(model, ["Alexander the Great", "Pink Floyd"], layers=[0, 2], sites=["mlp_out", "residual"],
                      alphas=[1, 6], target=Target(ENTITY_PROMPT))
    local = run_rows(model, rows, max_new_tokens=5)
    job = plan_chunk(model, rows, gen_kwargs=greedy_kwargs(model, 5))
    with pytest.raises(RequestCaptured):
        run_chunks(model, job, backend=CaptureBackend(tmp_path / "request.bin"))
    assert (tmp_path / "request.bin").stat().st_size > 0
    proc = subprocess.run(
        [sys.executable, "-I", str(HERE / "replay_request.py"), str(tmp_path / "request.bin"),
         str(tmp_path / "model"), str(tmp_path / "out.pt")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    replay = torch.load(tmp_path / "out.pt", weights_only=False)
    assert replay["loaded"] == []  # superscopes_nn was never imported in the replay
    ids = replay["ids"]
    prompt_len = job.target_ids.shape[1]
    eos = {tok.eos_token_id}
    got = [[t for t in row] for row in ids[:, prompt_len:].tolist()]
    for g, want in zip(got, local.token_ids):
        trimmed = []
        for t in g:
            if t in eos:
                break
            trimmed.append(t)
        assert trimmed == want
