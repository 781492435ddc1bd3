"""The norm-matched random-vector control: what a patch does with nothing of the source in it.

A patched vector carries two things, a direction (what the source "knows") and a norm
(how loud it is). Amplified (Superscopes) or written into an earlier layer (back-patching),
a loud vector can push the target prompt into text that happens to pass a best-of-K test.
This control keeps the norm and throws the direction away: each source vector is replaced
by ``||f(v)|| u``, ``u`` a fixed random unit vector of the target's width, then amplified
by the same α and written into the same target, so the rate on those rows is the rate that
norm alone buys::

    from superscopes_nn import load_model, run_rows, sweep_rows
    from superscopes_nn.science.random_control import random_rows

    model = load_model()
    rows = sweep_rows(model, ["Alexander the Great"], layers=[3], alphas=[1, 6], position="Great")
    random_df = run_rows(model, random_rows(rows, model))   # score it like the real rows

:func:`random_rows` works on any resolved rows (a sweep, back-patching or CoT layer pairs);
one direction per *source vector* (prompt, layer, site, position), shared across every
target and α that reads it, as the real vector is; seeded by a hash of that key, so the same
source gets the same direction in any order, batch or resumed run.
:func:`random_vector_rows` is the Figure 3 grid builder (its own seeding, kept so the
committed Figure 3 rows rerun bit for bit). Score the rows with the same rule and pass them
to :func:`superscopes_nn.science.chance.chance_table` / ``layer_chance`` as ``random_df``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import torch


from ..engine.rows import resolve
from ..core.deprecation import renamed
from ..core.specs import Amplify, Compose, Fn, Identity, Row, Source, Target, as_mapping
from ..structure.info import model_info


def _unit(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    u = torch.randn(int(d), generator=g, dtype=torch.float32)
    return u / u.norm()


def _direction_fn(u: torch.Tensor, base=None):
    """``v -> ||v|| u`` (``base`` None), else ``v -> ||base(v)|| u``: the norm that would have been
    written, on the fixed direction ``u``."""
    if base is None:
        def random_direction(v, u=u):
            return u.to(v.device, v.dtype) * v.norm()
    else:
        def random_direction(v, u=u, f=base):
            return u.to(v.device, v.dtype) * f(v).norm()
    return random_direction


def norm_matched_random(d: int, seed: int) -> Fn:
    """``Fn`` mapping v -> ||v|| u, u a fixed random unit vector of size ``d`` (seeded).

    Wrap it in ``Compose(m, alpha)`` to get a random vector with the norm of ``alpha * v``.
    """
    return Fn(_direction_fn(_unit(d, seed)), name="random", key_=f"random:d{int(d)}:seed{int(seed)}")


def random_vector_rows(model, prompts: Sequence[str], *, layers: Sequence[int], alphas: Sequence[float],
                       site: str, target: Target, positions: Sequence | int | str = -1, seed: int = 0, **old):
    """Rows of the norm-matched random control for a grid prompts x layers x alphas (Figure 3).

    One random direction per (prompt, layer) item, shared across α (as the real vector is);
    the written vector is ``alpha * ||v|| * u``. ``target.layer`` None = the source layer.
    Returns resolved rows for :func:`superscopes_nn.engine.run.run_rows`; their ``mapping`` is
    ``random+amplify``. ``positions``: the source position, one for every prompt or one per prompt
    (``tokens=`` is its deprecated spelling).
    """
    positions = renamed(old, "tokens", "positions", positions, -1, "random_vector_rows")
    if old:
        raise TypeError(f"random_vector_rows() got an unexpected keyword argument {next(iter(old))!r}")
    d = model_info(model).hidden
    toks = list(positions) if isinstance(positions, (list, tuple)) else [positions] * len(prompts)
    patches = []
    for pi, (prompt, tok) in enumerate(zip(prompts, toks)):
        for layer in layers:
            base = norm_matched_random(d, seed * 1_000_003 + pi * 1009 + int(layer))
            for a in alphas:
                patches.append((Source(prompt, int(layer), tok, site), target, Compose(base, float(a))))
    return resolve(model, patches)


def source_seed(row: Row, seed: int = 0) -> int:
    """A 63-bit seed from ``seed`` and the row's source vector (ids, layer, site, position)."""
    h = hashlib.sha256(repr((int(seed), row.source_key)).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def random_mapping(mapping, u: torch.Tensor, key: str):
    """The norm-matched random counterpart of ``mapping``: ``v -> ||base(v)|| u``, then the same α.

    ``Identity`` -> ``Fn`` (α 1); ``Amplify(a)`` -> ``Compose(random, a)``; ``Compose(base, a)``
    (an inter-model map) -> the norm of ``base(v)`` in the target's space, then ``a``; a bare
    ``Affine`` / ``Fn`` map -> the norm of its output (α 1).
    """
    m = as_mapping(mapping)
    base = m.base if isinstance(m, Compose) else (Identity() if isinstance(m, (Identity, Amplify)) else m)
    rnd = Fn(_direction_fn(u, None if isinstance(base, Identity) else base), name="random", alpha=1.0,
             key_=f"random:{key}:{base.key}")
    return Compose(rnd, m.alpha) if isinstance(m, (Amplify, Compose)) else rnd


def random_rows(rows: Sequence[Row], target_model, seed: int = 0) -> list[Row]:
    """Each row with its mapping replaced by the norm-matched random control (same source, target, α).

    ``target_model``: the model written into (its hidden size is the direction's width).
    Rows reading the same source vector share one direction (:func:`source_seed`); the
    mapping name becomes ``random`` / ``random+amplify`` and its key names the seed.
    """
    d = model_info(target_model).hidden
    out, units = [], {}
    for r in rows:
        s = source_seed(r, seed)
        if s not in units:
            units[s] = _unit(d, s)
        out.append(dataclasses.replace(r, mapping=random_mapping(r.mapping, units[s], f"d{d}:seed{s}")))
    return out
