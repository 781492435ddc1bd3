"""The embedded Gemma 3 270M conversion (GGUF Q4_K_M -> fp32 safetensors via transformers) against
an independent reference built from the GGUF itself:

* every GGUF tensor, de-quantized by ``gguf`` (``GGUFReader`` + ``gguf.quants.dequantize``), equals
  the cached safetensors tensor it maps to (names mapped here; GGUF stores Gemma's RMSNorm weights
  as ``1 + w``, transformers as ``w``; Gemma's q/k are not permuted, unlike llama's);
* a forward pass written here in plain torch from the GGUF tensors and metadata (no transformers
  modelling code) gives the same next-token top-1 as the converted model on 20 fixed prompts.

No independent GGUF runtime installs here: llama-cpp-python is an sdist on PyPI (a llama.cpp build,
minutes on 2 cores, in every CI run), and the prebuilt llama-cpp-cffi 0.4.42 wheel's CPU library
needs a newer libstdc++ (``__cxa_call_terminate``, GCC 14) than Debian 12 has.
"""

import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "Alexander the Great was a king of",
    "Water is made of hydrogen and",
    "The first president of the United States was George",
    "One, two, three, four,",
    "The opposite of hot is",
    "Pink Floyd is an English rock",
    "The largest planet in the solar system is",
    "In 1492, Columbus sailed across the Atlantic",
    "The chemical symbol for gold is",
    "Monday, Tuesday,",
    "Shakespeare wrote Romeo and",
    "The sun rises in the",
    "Cats and dogs are common household",
    "2 + 2 =",
    "The currency of Japan is the",
    "Python is a programming",
    "Mount Everest is the highest mountain in the",
    "The Beatles were a band from",
]

GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    blk, i, kind, weight = gguf_name.split(".")
    assert blk == "blk" and weight == "weight", gguf_name
    return f"model.layers.{i}.{BLOCK_NAMES[kind]}.weight"


def is_norm(gguf_name: str) -> bool:
    return "norm" in gguf_name


@pytest.fixture(scope="module")
def gguf_tensors():
    """``(metadata, {gguf name: fp32 torch tensor as stored, [out, in]})``, de-quantized by gguf."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from superscopes_nn.structure.models import EMBEDDED

    reader = GGUFReader(str(EMBEDDED["gemma-3-270m"].gguf()))
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("gemma3.") and field.data:
            meta[key.removeprefix("gemma3.")] = field.parts[field.data[0]].tolist()[0]
    assert reader.fields["general.architecture"].contents() == "gemma3"
    tensors = {t.name: torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
               for t in reader.tensors}
    return meta, tensors


@pytest.fixture(scope="module")
def converted():
    from safetensors import safe_open

    from superscopes_nn.structure.models import embedded_path

    path = embedded_path("gemma-3-270m")
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return path, {k: f.get_tensor(k) for k in f.keys()}


def test_every_gguf_tensor_matches_the_converted_checkpoint(gguf_tensors, converted):
    meta, tensors = gguf_tensors
    _, saved = converted
    assert len(tensors) == 2 + 13 * meta["block_count"]
    diffs = {}
    for name, t in tensors.items():
        ref = t - 1.0 if is_norm(name) else t   # GGUF Gemma norms are stored as 1 + w
        got = saved[hf_name(name)]
        assert got.dtype == torch.float32 and tuple(got.shape) == tuple(ref.shape), (name, got.shape, ref.shape)
        diffs[name] = float((got - ref).abs().max())
    extra = set(saved) - {hf_name(n) for n in tensors} - {"lm_head.weight"}
    assert not extra, f"converted tensors with no GGUF source: {sorted(extra)}"
    if "lm_head.weight" in saved:   # tied to the embedding
        assert torch.equal(saved["lm_head.weight"], saved["model.embed_tokens.weight"])
    worst = max(diffs, key=diffs.get)
    print(f"\n{len(diffs)} tensors; max abs difference {diffs[worst]:.3g} ({worst})")
    bad = {n: d for n, d in diffs.items() if d > 1e-6}
    assert not bad, f"tensors differ from gguf's de-quantization: {bad}"


def _rms(x, w, eps):
    x32 = x.float()
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * w   # w is the stored 1 + w


def _rope(x, base, pos):
    d = x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = pos[:, None].float() * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]


def reference_logits(meta, w, batch):
    """Gemma 3 forward from the GGUF tensors: each prompt's last-position logits [len(batch), vocab]
    (llama.cpp's gemma3 graph: every 6th layer global with rope base ``rope.freq_base``, the others
    local with base 10000). Prompts are right-padded: under the causal mask the padding never
    reaches a real position."""
    eps, n_layers = meta["attention.layer_norm_rms_epsilon"], meta["block_count"]
    nh, nkv, hd = meta["attention.head_count"], meta["attention.head_count_kv"], meta["attention.key_length"]
    lengths = [len(ids) for ids in batch]
    T = max(lengths)
    assert T < meta["attention.sliding_window"]  # the sliding window then masks nothing
    ids = torch.tensor([ids + [0] * (T - len(ids)) for ids in batch])
    pos = torch.arange(T)
    emb = w["token_embd.weight"]
    h = emb[ids] * math.sqrt(meta["embedding_length"])                       # [B, T, d]
    mask = torch.full((T, T), float("-inf")).triu(1)
    B = len(batch)
    for i in range(n_layers):
        p = lambda k: w[f"blk.{i}.{k}.weight"]  # noqa: E731
        base = meta["rope.freq_base"] if (i + 1) % 6 == 0 else 10000.0
        x = _rms(h, p("attn_norm"), eps)
        q = (x @ p("attn_q").T).view(B, T, nh, hd)
        k = (x @ p("attn_k").T).view(B, T, nkv, hd)
        v = (x @ p("attn_v").T).view(B, T, nkv, hd)
        q = _rope(_rms(q, p("attn_q_norm"), eps), base, pos)
        k = _rope(_rms(k, p("attn_k_norm"), eps), base, pos)
        k, v = k.repeat_interleave(nh // nkv, 2), v.repeat_interleave(nh // nkv, 2)
        att = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd) + mask
        o = torch.einsum("bhqk,bkhd->bqhd", att.softmax(-1), v).reshape(B, T, nh * hd)
        h = h + _rms(o @ p("attn_output").T, p("post_attention_norm"), eps)
        x = _rms(h, p("ffn_norm"), eps)
        m = torch.nn.functional.gelu(x @ p("ffn_gate").T, approximate="tanh") * (x @ p("ffn_up").T)
        h = h + _rms(m @ p("ffn_down").T, p("post_ffw_norm"), eps)
    last = h[torch.arange(B), torch.tensor(lengths) - 1]
    return _rms(last, w["output_norm.weight"], eps) @ emb.T


def test_next_token_top1_matches_a_forward_written_from_the_gguf(gguf_tensors, converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta, tensors = gguf_tensors
    path, _ = converted
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    batch = [tok(prompt)["input_ids"] for prompt in PROMPTS]
    assert all(ids[0] == tok.bos_token_id for ids in batch)
    with torch.no_grad():
        ref = reference_logits(meta, tensors, batch)
        T = max(map(len, batch))   # one right-padded batch: padding comes after every real position
        ids = torch.tensor([b + [tok.pad_token_id] * (T - len(b)) for b in batch])
        attn = torch.tensor([[1] * len(b) + [0] * (T - len(b)) for b in batch])
        hidden = model.model(input_ids=ids, attention_mask=attn).last_hidden_state
        got = model.lm_head(hidden[torch.arange(len(batch)), attn.sum(-1) - 1])
    worst = float((got - ref).abs().max())
    agree = got.argmax(-1) == ref.argmax(-1)
    top2 = ref.topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    print(f"\ntop-1 agreement {int(agree.sum())}/{len(PROMPTS)}; max abs logit difference {worst:.3g}; "
          f"smallest reference top-1/top-2 margin {float(margin.min()):.3g}")
    for j in torch.nonzero(~agree).flatten().tolist():
        assert float(margin[j]) < 1e-3, (PROMPTS[j], tok.decode([int(got[j].argmax())]), tok.decode([int(ref[j].argmax())]))
    assert bool(agree.all()) and worst < 1e-2
