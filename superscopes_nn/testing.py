"""Tiny random-weight models of every supported architecture, built offline in code.

>>> from superscopes_nn.testing import tiny_model
>>> model = tiny_model("gemma3_text")     # nnsight TransformersModel, 4 layers, d=64

The tokenizer is a byte-level BPE trained in code on a fixed corpus (the
project's target prompts and a few entity names), so multi-token words exist and
every string can be encoded. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import functools

import torch

from .architectures import ARCHITECTURES
from .models import wrap

TINY_ARCHS = ("llama", "gemma3_text", "gemma2", "qwen2", "gpt2", "gpt_neox", "gptj")

_CORPUS = [
    "Syria: Country in the Middle East, Leonardo DiCaprio: American actor, Samsung: South Korean "
    "multinational major appliance and consumer electronics corporation, x",
    "cat -> cat\n1135 -> 1135\nhello -> hello\n?",
    "The official currency of x. The capital city of x. The spouse of the performer of Imagine is",
    "Alexander the Great was a king of Macedon. Saturday Night Live is a comedy show.",
    "Back to the Future is a film. Pink Floyd is an English rock band. Star Wars, Titanic.",
    "George Washington, Will Smith, Led Zeppelin, Daft Punk, Iron Maiden, Green Day.",
    "the of and a to in is was he for it with as his on be at by I this had not are but from",
    "0 1 2 3 4 5 6 7 8 9 ! ? . , : ; - > ' \" ( )",
]
EOS = "<|endoftext|>"


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained in code (no files, no hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)
    fast.padding_side = "left"
    return fast


def tiny_config(arch: str, vocab_size: int, n_layers: int = 4, hidden: int = 64):
    """A small config of family ``arch`` (a ``config.model_type``)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch in ("llama", "qwen2"):
        cls = tf.LlamaConfig if arch == "llama" else tf.Qwen2Config
        return cls(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                   tie_word_embeddings=False, **common)
    if arch in ("gemma3_text", "gemma2"):
        cls = tf.Gemma3TextConfig if arch == "gemma3_text" else tf.Gemma2Config
        return cls(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                   sliding_window=8, **common)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_layer=n_layers, n_head=4, n_positions=512, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                                num_attention_heads=4, max_position_embeddings=512, use_parallel_residual=True,
                                **common)
    if arch == "gptj":
        return tf.GPTJConfig(n_embd=hidden, n_layer=n_layers, n_head=4, rotary_dim=8, n_positions=512, **common)
    raise ValueError(f"no tiny config for {arch!r}; choose one of {', '.join(TINY_ARCHS)}")


def tiny_hf_model(arch: str = "llama", seed: int = 0, n_layers: int = 4, hidden: int = 64):
    """``(hf_model, tokenizer)``: a random-weight causal LM of family ``arch``, float32, eval mode."""
    from transformers import AutoModelForCausalLM

    assert arch in ARCHITECTURES, arch
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


def tiny_model(arch: str = "llama", seed: int = 0, n_layers: int = 4, hidden: int = 64):
    """A tiny random model of family ``arch`` wrapped as an nnsight ``TransformersModel``."""
    return wrap(*tiny_hf_model(arch, seed=seed, n_layers=n_layers, hidden=hidden))
