"""Tiny random-weight models of every supported architecture, built offline in code.

>>> from superscopes_nn.testing.tiny_models import tiny_model
>>> model = tiny_model("gemma3_text")     # nnsight TransformersModel, 4 layers, d=64

The tokenizer is a byte-level BPE trained in code on a fixed corpus (the
project's target prompts and a few entity names), so multi-token words exist and
every string can be encoded. Everything is deterministic for a given seed.
"""

from __future__ import annotations


import torch

from ..structure.models import wrap
from ..structure.stand_in import tiny_tokenizer  # noqa: F401  (the tests' tokenizer too)

#: The families the tests parametrize over (``config.model_type`` values; ``gemma3`` is the
#: multimodal Gemma 3, whose language model lives under ``model.language_model``).
#: The seven families the engine-mechanics tests (batching, shared prefixes, remote="local")
#: run on; every family in TINY_ARCHS gets the site tests (tests/test_sites.py, test_families.py).
CORE_ARCHS = ("llama", "gemma3_text", "gemma2", "qwen2", "gpt2", "gpt_neox", "gptj")
TINY_ARCHS = (
    "llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "phi3", "olmo2", "gemma", "gemma2",
    "gemma3_text", "gemma3", "gpt2", "gpt_neox", "gptj", "falcon", "cohere", "starcoder2", "granite", "gpt_oss",
)

#: Families beyond plain transformers (tests/test_hybrid_families.py): state-space (mamba, mamba2,
#: falcon_mamba), hybrid attention / state-space / convolution / linear-attention layers (jamba,
#: bamba, falcon_h1, granitemoehybrid, nemotron_h, lfm2, qwen3_next, olmo_hybrid), a post-norm MoE
#: (flex_olmo) and a model with its own recurrent cache (recurrent_gemma). Each is
#: ``transformers.CONFIG_MAPPING[family]()`` shrunk by :data:`_HYBRID` (4 layers, d=64).
HYBRID_ARCHS = ("mamba", "mamba2", "falcon_mamba", "jamba", "bamba", "falcon_h1", "granitemoehybrid", "nemotron_h",
                "lfm2", "qwen3_next", "olmo_hybrid", "flex_olmo", "recurrent_gemma")
_MIX = ["linear_attention", "full_attention"] * 2
_LINEAR = dict(layer_types=_MIX, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
               linear_num_value_heads=4)
_MAMBA2 = dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=8, mamba_chunk_size=8)
_HYBRID = {
    "mamba": dict(state_size=8, time_step_rank=8), "falcon_mamba": dict(state_size=8, time_step_rank=8),
    "mamba2": dict(num_heads=8, head_dim=16, state_size=8, n_groups=1, chunk_size=8),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                  mamba_d_state=8, mamba_dt_rank=8, num_experts=4, num_experts_per_tok=2),
    "bamba": dict(attn_layer_indices=[1, 3], **_MAMBA2),
    "falcon_h1": dict(mamba_d_ssm=64, mamba_n_heads=8, mamba_d_head=8, mamba_d_state=8, mamba_chunk_size=8),
    "granitemoehybrid": dict(layer_types=["mamba", "attention"] * 2, shared_intermediate_size=32,
                             num_local_experts=4, num_experts_per_tok=2, **_MAMBA2),
    "nemotron_h": dict(layers_block_type=["linear_attention", "moe", "full_attention", "mlp"], ssm_state_size=8,
                       mamba_num_heads=8, mamba_head_dim=16, n_groups=1, chunk_size=8, n_routed_experts=4,
                       num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=32),
    "lfm2": dict(layer_types=["conv", "full_attention"] * 2, block_auto_adjust_ff_dim=False),
    "qwen3_next": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       shared_expert_intermediate_size=32, **_LINEAR),
    "olmo_hybrid": _LINEAR,
    "flex_olmo": dict(num_experts=4, num_experts_per_tok=2),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"], lru_width=64, num_key_value_heads=1),
}

#: Families whose blocks return a flattened [batch * seq, d] residual (llama4_text's MoE layers, opt's MLP),
#: fuse attention with its norms (dbrx), feed a transformer block into a Mamba block's input (zamba, zamba2)
#: or re-normalize their residual stream (minimax): tests/test_flat_families.py. Explicit tiny configs (4
#: layers, d=64; dbrx with its attn_config / ffn_config sub-configs).
FLAT_ARCHS = ("llama4_text", "opt", "dbrx", "zamba", "zamba2", "minimax")
_ZAMBA = dict(layers_block_type=["mamba", "hybrid"] * 2, num_key_value_heads=4, mamba_d_state=8)
_FLAT = {
    "llama4_text": dict(intermediate_size=32, intermediate_size_mlp=128, num_local_experts=4, num_experts_per_tok=1,
                        interleave_moe_layer_step=2),  # layers 1, 3 MoE (flattened output), 0, 2 dense
    "opt": dict(ffn_dim=128, word_embed_proj_dim=64),
    "dbrx": dict(d_model=64, n_heads=4, n_layers=4, max_seq_len=512, attn_config=dict(kv_n_heads=2, rope_theta=1e4,
                 clip_qkv=8.0), ffn_config=dict(ffn_hidden_size=64, moe_num_experts=4, moe_top_k=2)),
    "zamba": dict(_ZAMBA, mamba_dt_rank=8, n_mamba_heads=2, attention_head_dim=16, mamba_headdim=16),
    "zamba2": dict(_ZAMBA, mamba_ngroups=1, n_mamba_heads=8, chunk_size=8, num_mem_blocks=1, attention_head_dim=32),
    "minimax": dict(num_local_experts=4, num_experts_per_tok=2, layer_types=["linear_attention", "full_attention"] * 2),
}
_NO_KW = {"opt": ("intermediate_size", "num_key_value_heads", "head_dim"), "zamba2": ("intermediate_size", "head_dim"),
          "dbrx": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                   "head_dim", "max_position_embeddings")}



# Per-family settings on top of the llama-style defaults of :func:`tiny_config`.
_FAMILY = {
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    # layer 1 dense, the others sparse: one path ("mlp") must serve both kinds of layer
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[1]),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2,
                    rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    "gemma2": dict(sliding_window=8), "gemma3_text": dict(sliding_window=8),
    # Granite 3 scales what each block adds (residual_multiplier 0.22): no module outputs
    # attn_out / mlp_out there (tests/test_families.py checks that it is refused); 1.0 here
    "granite": dict(residual_multiplier=1.0),
    "gpt_neox": dict(use_parallel_residual=True),
    "falcon": dict(parallel_attn=True, new_decoder_architecture=False, alibi=False),
}
_GPT_STYLE = ("gpt2", "gptj")


def tiny_config(arch: str, vocab_size: int, n_layers: int = 4, hidden: int = 64):
    """A small config of family ``arch`` (a ``config.model_type``), built with ``AutoConfig.for_model``."""
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch in FLAT_ARCHS:
        from transformers import CONFIG_MAPPING

        kw = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512, tie_word_embeddings=False)
        kw = {k: v for k, v in kw.items() if k not in _NO_KW.get(arch, ())}
        return CONFIG_MAPPING[arch](**{**kw, **common, **_FLAT[arch]})
    if arch in HYBRID_ARCHS:
        from transformers import CONFIG_MAPPING

        kw = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512, tie_word_embeddings=False)
        return CONFIG_MAPPING[arch](**{**kw, **common, **_HYBRID[arch]})
    if arch not in TINY_ARCHS:
        raise ValueError(f"no tiny config for {arch!r}; choose one of {', '.join(TINY_ARCHS + HYBRID_ARCHS + FLAT_ARCHS)}")
    if arch in _GPT_STYLE:
        extra = dict(rotary_dim=8) if arch == "gptj" else {}
        return AutoConfig.for_model(arch, n_embd=hidden, n_layer=n_layers, n_head=4, n_positions=512,
                                    **extra, **common)
    kw = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers, num_attention_heads=4,
              num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512, tie_word_embeddings=False,
              **common)
    if arch == "gemma3":  # multimodal: a tiny SigLIP tower next to the language model
        kw.pop("tie_word_embeddings")
        vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, image_size=28, patch_size=14)
        return AutoConfig.for_model("gemma3", text_config=dict(sliding_window=8, **kw), vision_config=vision,
                                    mm_tokens_per_image=4, pad_token_id=0, eos_token_id=0, bos_token_id=0)
    if arch in ("gpt_neox", "falcon"):
        kw.pop("num_key_value_heads")
        kw.pop("head_dim")
    return AutoConfig.for_model(arch, **{**kw, **_FAMILY.get(arch, {})})


def tiny_hf_model(arch: str = "llama", seed: int = 0, n_layers: int = 4, hidden: int = 64):
    """``(hf_model, tokenizer)``: a random-weight causal LM of family ``arch``, float32, eval mode."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    config = tiny_config(arch, len(tok), n_layers=n_layers, hidden=hidden)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger weights than the default init: sharper, less tied logits
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.25)
    model.eval()
    return model, tok


def save_tiny_checkpoint(path, arch: str = "llama", seed: int = 0):
    """Save :func:`tiny_hf_model` (weights and tokenizer) to ``path`` as a local checkpoint that
    ``load_model(str(path))`` reads; returns ``(hf_model, tokenizer)``."""
    hf, tok = tiny_hf_model(arch, seed=seed)
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return hf, tok


def tiny_model(arch: str = "llama", seed: int = 0, n_layers: int = 4, hidden: int = 64):
    """A tiny random model of family ``arch`` wrapped as an nnsight ``TransformersModel``."""
    return wrap(*tiny_hf_model(arch, seed=seed, n_layers=n_layers, hidden=hidden))
