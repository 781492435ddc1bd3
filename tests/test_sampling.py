"""Sampled decoding (:mod:`superscopes_nn.core.sampling`): per row, batch-independent, resumable,
against an independent numpy/plain-HF reference; fp32 tiny models."""

import hashlib
import json

import numpy as np
import pytest
import torch

from superscopes_nn.engine.api import patchscope, sweep
from superscopes_nn.testing.hook_reference import _patch_hook, hf_read
from superscopes_nn.engine.rows import sweep_rows
from superscopes_nn.engine.run import run_rows
from superscopes_nn.core.sampling import LLAMA2_CHAT, Sampling
from superscopes_nn.core.specs import ENTITY_PROMPT, Amplify, Source, Target
from superscopes_nn.core.store import row_key
from superscopes_nn.testing.tiny_models import tiny_model

HOT = Sampling(temperature=1.5, seed=1)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def eight_rows(m):
    return sweep_rows(m, ["Alexander the Great", "Pink Floyd"], layers=[0, 2], sites=["residual", "mlp_out"],
                      alphas=[1.0], token=-1, target=Target(ENTITY_PROMPT))


def ids(df):
    return df.token_ids.tolist()


def test_batch_invariance(model):
    rows = eight_rows(model)
    assert len(rows) == 8
    s = Sampling(temperature=1.2, top_p=0.95, top_k=40, seed=5)
    batched = run_rows(model, rows, max_new_tokens=5, max_batch_size=8, sampling=s)
    assert ids(batched) != ids(run_rows(model, rows, max_new_tokens=5))  # it samples
    assert ids(run_rows(model, rows, max_new_tokens=5, max_batch_size=8, shared_prefix=False, sampling=s)) \
        == ids(batched)
    assert ids(run_rows(model, rows, max_new_tokens=5, max_batch_size=1, sampling=s)) == ids(batched)
    assert ids(run_rows(model, rows, max_new_tokens=5, exact=True, sampling=s)) == ids(batched)
    shuffled = rows[::-1]
    assert ids(run_rows(model, shuffled, max_new_tokens=5, max_batch_size=3, sampling=s)) == ids(batched)[::-1]
    one = patchscope(model, [(Source("Pink Floyd", layer=2, position=-1, site="mlp_out"), Target(ENTITY_PROMPT),
                              Amplify(1.0))], max_new_tokens=5, sampling=s)
    want = [r for r, row in zip(ids(batched), rows)
            if (row.source_prompt, row.source_layer, row.site) == ("Pink Floyd", 2, "mlp_out")]
    assert ids(one) == want


def _seed(seed, key):  # the documented rule, written out again
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8], "big") & (2 ** 63 - 1)


def _np_probs(logits: np.ndarray, s: Sampling) -> np.ndarray:
    x = logits.astype(np.float64) / s.temperature
    if s.top_k is not None:
        kth = np.sort(x)[-s.top_k]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if s.top_p is not None:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        keep = before < s.top_p
        keep[0] = True
        mask = np.zeros_like(keep)
        mask[order] = keep
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def _reference(hf, r, s: Sampling, n: int) -> list[int]:
    """Plain HF step loop: hook-patched prompt pass, KV cache, numpy filtering, one generator per row."""
    vec = r.mapping(hf_read(hf, list(r.source_ids), r.source_layer, r.site)[r.source_position].float())
    h = _patch_hook(hf, r.target_layer, r.target_site or r.site, r.target_position, vec)
    g = torch.Generator().manual_seed(_seed(s.seed, row_key(r)))
    x, past, out = torch.tensor([list(r.target_ids)]), None, []
    try:
        with torch.no_grad():
            for _ in range(n):
                o = hf(x, past_key_values=past, use_cache=True)
                past = o.past_key_values
                p = torch.tensor(_np_probs(o.logits[0, -1].float().numpy(), s), dtype=torch.float32)
                t = int(torch.multinomial(p, 1, generator=g))
                if t == hf.config.eos_token_id:
                    break
                out.append(t)
                x = torch.tensor([[t]])
    finally:
        h.remove()
    return out


@pytest.mark.parametrize("s", [Sampling(temperature=0.8, top_p=0.9, top_k=50, seed=7), LLAMA2_CHAT, HOT])
def test_matches_independent_reference(llama, s):
    rows = eight_rows(llama)
    got = run_rows(llama, rows, max_new_tokens=6, sampling=s)
    for i in (0, 5):
        assert got.token_ids[i] == _reference(llama._module, rows[i], s, 6), i


def test_seeds_and_top_k_one(llama):
    kw = dict(layers=[0, 2], sites=["residual", "mlp_out"], alphas=[1.0], token=-1, target=Target(ENTITY_PROMPT),
              max_new_tokens=5, progress=False)
    prompts = ["Alexander the Great", "Pink Floyd"]
    a = sweep(llama, prompts, sampling=HOT, **kw)
    assert a.interpretation.tolist() == sweep(llama, prompts, sampling=HOT, **kw).interpretation.tolist()
    other = sweep(llama, prompts, sampling=Sampling(temperature=1.5, seed=2), **kw)
    assert other.interpretation.tolist() != a.interpretation.tolist()
    greedy = sweep(llama, prompts, **kw)
    assert ids(sweep(llama, prompts, sampling=Sampling(temperature=3.0, top_k=1, seed=9), **kw)) == ids(greedy)


def test_resume_refuses_other_decoding(llama, tmp_path):
    rows = eight_rows(llama)
    d = tmp_path / "run"
    first = run_rows(llama, rows[:4], max_new_tokens=4, run_dir=d, sampling=HOT)
    assert json.loads((d / "config.json").read_text())["sampling"] == HOT.key
    for bad in (Sampling(temperature=1.5, seed=2), None, LLAMA2_CHAT):
        with pytest.raises(ValueError, match="config 'sampling' differs") as err:
            run_rows(llama, rows, max_new_tokens=4, run_dir=d, resume=True, sampling=bad)
        assert "\n" not in str(err.value)
    again = run_rows(llama, rows, max_new_tokens=4, run_dir=d, resume=True, sampling=HOT)
    assert ids(again)[:4] == ids(first)
    assert ids(again) == ids(run_rows(llama, rows, max_new_tokens=4, sampling=HOT))
    g = tmp_path / "greedy"
    run_rows(llama, rows[:2], max_new_tokens=4, run_dir=g)
    assert "sampling" not in json.loads((g / "config.json").read_text())  # greedy configs as before
    with pytest.raises(ValueError, match="sampling"):
        run_rows(llama, rows, max_new_tokens=4, run_dir=g, resume=True, sampling=HOT)


@pytest.mark.parametrize("kw, msg", [
    (dict(temperature=float("nan")), "temperature must be a finite number, got nan"),
    (dict(temperature=0), "temperature must be a finite number > 0, got 0"),
    (dict(temperature=-1.0), "temperature must be a finite number > 0, got -1.0"),
    (dict(temperature="hot"), "temperature must be a finite number, got 'hot'"),
    (dict(top_p=0), r"top_p must be in \(0, 1\], got 0"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
    (dict(top_k=0), "top_k must be an int >= 1, got 0"),
    (dict(top_k=2.5), "top_k must be an int, got 2.5"),
    (dict(seed=1.5), "seed must be an int, got 1.5"),
    (dict(seed=True), "seed must be an int, got True"),
])
def test_validation(kw, msg):
    with pytest.raises(ValueError, match=msg) as err:
        Sampling(**kw)
    assert "\n" not in str(err.value)


def test_numpy_scalars_and_key():
    s = Sampling(temperature=np.float32(0.5), top_p=np.float64(0.9), top_k=np.int64(5), seed=np.int64(3))
    assert (type(s.temperature), type(s.top_k), type(s.seed)) == (float, int, int)
    assert s == Sampling(0.5, 0.9, 5, 3) and s.key == Sampling(0.5, 0.9, 5, 3).key
    assert LLAMA2_CHAT.key != Sampling(0.6, 0.9, seed=1).key
    assert (LLAMA2_CHAT.temperature, LLAMA2_CHAT.top_p, LLAMA2_CHAT.top_k) == (0.6, 0.9, None)


@pytest.mark.parametrize("remote", ["local", True, "https://ndif.example"])
def test_remote_refused(llama, remote):
    with pytest.raises(ValueError, match=f"sampling runs locally only \\(remote={remote!r}") as err:
        run_rows(llama, eight_rows(llama)[:1], sampling=LLAMA2_CHAT, remote=remote)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="sampling must be None"):
        run_rows(llama, eight_rows(llama)[:1], sampling={"temperature": 0.6})
