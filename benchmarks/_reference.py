"""The plain-HF reference (forward hooks, no nnsight) for the benchmarks: the one import of it.

Until the reference moves into the library (``superscopes_nn/reference.py``) it lives
in ``tests/hf_reference.py``; this shim is the only place a benchmark reaches into
``tests/``. When it moves, change the import below to
``from superscopes_nn.reference import hf_patch_generate`` and nothing else.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:  # the library's copy, once it exists
    from superscopes_nn.reference import hf_patch_generate  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hf_reference import hf_patch_generate  # noqa: F401,E402

__all__ = ["hf_patch_generate"]
