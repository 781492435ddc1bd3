"""Tiny random models of every causal-LM family transformers ships, for tests/test_every_family.py.

:func:`tiny_family` shrinks a family's default config (``CONFIG_MAPPING[family]()``) in place: every
width, head count, layer count, expert count and window it knows by name, layer-type lists cut to 4
entries (the pattern kept), on the text config of a multimodal config too. A family whose default
config cannot be shrunk this way is built as its structural twin (superscopes_nn.structure.twin: widths
found by shape, full depth, the tokenizer's vocabulary) where that builds and runs; one neither way can
build fails with the tiny builder's reason, and the test lists it with that reason.
"""

from __future__ import annotations

import warnings

import torch

from superscopes_nn.testing.tiny_models import FLAT_ARCHS, HYBRID_ARCHS, TINY_ARCHS

LAYERS = 4
MAX_PARAMS = 8_000_000
_SIZES = {  # attribute -> shrunk value
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "dim": 64, "embed_dim": 64, "n_embed": 64, "word_embed_proj_dim": 64,
    "intermediate_size": 128, "ffn_dim": 128, "n_inner": 128, "inner_hidden_size": 128, "ffn_hidden_size": 128,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "expert_intermediate_size": 32,
    "shared_intermediate_size": 32, "moe_shared_expert_intermediate_size": 32, "intermediate_size_mlp": 128,
    "num_hidden_layers": LAYERS, "n_layer": LAYERS, "num_layers": LAYERS, "n_layers": LAYERS, "decoder_layers": LAYERS,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_heads": 4, "decoder_attention_heads": 4,
    "num_key_value_heads": 2, "num_kv_heads": 2, "kv_n_heads": 2, "multi_query_group_num": 2,
    "head_dim": 16, "kv_channels": 16, "dim_head": 16, "attention_head_dim": 16,
    "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_top_k": 2, "top_k": 2, "num_experts_per_token": 2,
    "n_shared_experts": 1, "num_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
    "max_position_embeddings": 512, "n_positions": 512, "n_ctx": 512, "max_seq_len": 512,
    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "qk_head_dim": 16, "state_size": 8, "ssm_state_size": 8, "mamba_d_state": 8, "time_step_rank": 8,
    "mamba_dt_rank": 8, "conv_kernel": 4, "sliding_window": 8, "window_size": 8, "num_memory_blocks": 1,
    "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "prompt_length": 4,
}
#: Families with an explicit tiny config of their own (superscopes_nn.testing.tiny_models).
KNOWN = TINY_ARCHS + HYBRID_ARCHS + FLAT_ARCHS
_LISTS = ("layer_types", "layers_block_type", "block_types", "mlp_only_layers", "layer_block_types")


def _shrink(cfg, vocab: int) -> None:
    for name, value in _SIZES.items():
        if isinstance(getattr(cfg, name, None), int) and not isinstance(getattr(cfg, name), bool):
            setattr(cfg, name, value)
    for name in _LISTS:
        v = getattr(cfg, name, None)
        if isinstance(v, (list, tuple)) and len(v) > LAYERS:
            setattr(cfg, name, list(v)[:LAYERS])
    if isinstance(getattr(cfg, "qk_rope_head_dim", None), int):  # MLA: rope runs on qk_rope_head_dim only
        cfg.head_dim = cfg.qk_rope_head_dim
    if isinstance(getattr(cfg, "rotary_dim", None), int):
        cfg.rotary_dim = 8
    for name in ("vocab_size",):
        if isinstance(getattr(cfg, name, None), int):
            setattr(cfg, name, vocab)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if hasattr(cfg, name):
            setattr(cfg, name, 0)
    for name in ("text_config", "decoder", "language_config", "llm_config"):
        sub = getattr(cfg, name, None)
        if sub is not None and hasattr(sub, "to_dict") and sub is not cfg:
            _shrink(sub, vocab)


def _kwargs(cfg, vocab: int) -> dict:
    """The shrunk values of the fields ``cfg`` has (an int there, or None where it derives one)."""
    kw = {k: v for k, v in _SIZES.items() if k in vars(cfg) and (getattr(cfg, k) is None or (
        isinstance(getattr(cfg, k), int) and not isinstance(getattr(cfg, k), bool)))}
    kw.update({k: list(getattr(cfg, k))[:LAYERS] for k in _LISTS if isinstance(getattr(cfg, k, None), (list, tuple))})
    kw.update({k: 0 for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in vars(cfg)})
    if isinstance(getattr(cfg, "qk_rope_head_dim", None), int):
        kw["head_dim"] = 8
    if isinstance(getattr(cfg, "rotary_dim", None), int):
        kw["rotary_dim"] = 8
    return dict(kw, vocab_size=vocab) if "vocab_size" in vars(cfg) else kw


def _built(cls, vocab: int):
    """The family's config built with shrunk sizes (its own derived fields recomputed), else shrunk in place."""
    cfg = cls()
    try:
        small = cls(**_kwargs(cfg, vocab))
        for name in ("text_config", "decoder", "language_config", "llm_config"):
            sub = getattr(small, name, None)
            if sub is not None and hasattr(sub, "to_dict") and sub is not small:
                setattr(small, name, type(sub)(**_kwargs(sub, vocab)))
        return small
    except Exception:  # noqa: BLE001  (a config that refuses some field: shrink the default in place)
        _shrink(cfg, vocab)
        return cfg


def tiny_family(family: str, seed: int = 0):
    """``(hf_model, tokenizer)``: a random-weight float32 causal LM of ``family``, eval mode (raises if it cannot)."""
    from superscopes_nn.testing.tiny_models import tiny_hf_model, tiny_tokenizer

    tok = tiny_tokenizer()
    if family in KNOWN:
        return tiny_hf_model(family, seed=seed)
    try:
        return _tiny(family, tok, seed), tok
    except Exception as err:  # noqa: BLE001  (the family's structural twin where it builds and runs, else both reasons)
        model = _twin(family, tok, seed)
        if isinstance(model, str):
            raise RuntimeError(f"{type(err).__name__}: {err}; its structural twin: {model}") from None
        return model


def _twin(family: str, tok, seed: int):
    """``(model, tokenizer)``: the structural twin of ``family``'s default config (superscopes_nn.structure.twin:
    every width shrunk by the widths its parameters have, full depth) on the tokenizer's vocabulary, if it builds
    and its own plain forward runs; else the one-line reason it does not. A twin that keeps a smaller vocabulary
    of its own (a byte model's 260 ids) gets a byte-level tokenizer trained to that size (256 bytes, EOS, merges)."""
    from transformers import CONFIG_MAPPING

    from superscopes_nn.testing.tiny_models import tiny_tokenizer
    from superscopes_nn.structure.twin import twin_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = twin_model(CONFIG_MAPPING[family](), seed=seed, vocab=len(tok))
    except Exception as err:  # noqa: BLE001
        return " ".join(f"{type(err).__name__}: {err}".split())[:200]
    vocab = model.get_input_embeddings().num_embeddings if model.get_input_embeddings() is not None else None
    if vocab is not None and vocab < len(tok) and vocab >= 257:
        tok = tiny_tokenizer(vocab_size=vocab)
    ids = tok("Alexander the Great")["input_ids"]
    if vocab is not None and max(ids) >= vocab:
        return f"its vocabulary has {vocab} ids, the test tokenizer's prompt reaches id {max(ids)}"
    try:
        with torch.no_grad():
            model(torch.tensor([ids]), use_cache=False)
    except Exception as err:  # noqa: BLE001
        return "its own forward fails (" + " ".join(f"{type(err).__name__}: {err}".split())[:160] + ")"
    return model, tok


def _tiny(family: str, tok, seed: int):
    from transformers import AutoModelForCausalLM, CONFIG_MAPPING

    cfg = _built(CONFIG_MAPPING[family], len(tok))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
        if n > MAX_PARAMS:
            raise ValueError(f"its default config shrinks only to {n / 1e6:.0f}M parameters (sizes it names otherwise)")
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.25)
        model.eval()
        try:  # the tiny model's own plain forward (no cache) must run, or there is nothing to compare with
            model(torch.tensor([tok("Alexander the Great")["input_ids"]]), use_cache=False)
        except Exception as err:  # noqa: BLE001
            raise RuntimeError(f"its tiny model's own forward fails ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:100] if str(err) else ''})") from None
    return model
