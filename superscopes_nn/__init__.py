"""superscopes_nn: read a language model's hidden states by letting the model describe them.

>>> from superscopes_nn import load_model, sweep, Target, ENTITY_PROMPT
>>> model = load_model()                       # Gemma 3 270M, embedded, offline
>>> df = sweep(model, "Alexander the Great", position="Great", sites=["mlp_out"],
...            layers=range(9), alphas=[1, 3, 6, 9, 12, 15])
"""

from ._version import __version__  # noqa: E402,F401

from .structure.architectures import SITES
from .structure.spec import arch_spec  # noqa: E402
from .engine.lens import lens_logits, logit_lens  # noqa: E402
from .structure.models import DEFAULT_MODEL, load_model  # noqa: E402
from .engine.api import collect, generate_plain, patched_logits, patchscope, sweep  # noqa: E402
from .engine.chunks import logit_tolerance  # noqa: E402
from .engine.rows import resolve, sweep_rows  # noqa: E402
from .engine.run import run_rows  # noqa: E402
from .science.superscopes import superscope  # noqa: E402
from .core.sampling import LLAMA2_CHAT, Sampling  # noqa: E402
from .core.specs import (  # noqa: E402
    ENTITY_PROMPT, IDENTITY_PROMPT, RESULT_COLUMNS, Affine, Amplify, Compose, Fn, Identity, Row, Source, Target,
)

__all__ = [
    "__version__", "SITES", "arch_spec", "DEFAULT_MODEL", "load_model", "ENTITY_PROMPT", "IDENTITY_PROMPT", "RESULT_COLUMNS",
    "Affine", "Amplify", "Compose", "Fn", "Identity", "Row", "logit_tolerance", "Source", "Target", "collect", "generate_plain", "patched_logits",
    "patchscope", "resolve", "run_rows", "superscope", "sweep", "sweep_rows", "lens_logits", "logit_lens", "Sampling", "LLAMA2_CHAT",
]
