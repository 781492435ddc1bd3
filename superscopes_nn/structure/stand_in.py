"""The stand-in tokenizer: a byte-level BPE trained in code on a fixed corpus (the project's target
prompts and a few entity names), so multi-token words exist and every string can be encoded; no files,
no hub, deterministic. ``superscopes plan`` uses it for a config folder that ships no tokenizer, and
the tiny test models (:mod:`superscopes_nn.testing.tiny_models`) use it as theirs.
"""

from __future__ import annotations

import functools

__all__ = ["tiny_tokenizer", "EOS"]

CORPUS = [
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
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)
    fast.padding_side = "left"
    return fast
