"""What a patch is: where to read (:class:`Source`), where to write (:class:`Target`),
and how to map the vector in between (a *mapping*).

A mapping has a ``name`` (shown in results), an ``alpha`` (the amplification, NaN
when it has none), a ``key`` (a stable string that identifies it for resuming a
run: two ``Affine`` maps with different weights have different keys) and
``plain()``, the form that crosses the wire to NDIF: a tuple
``(alpha, weight, bias, fn)`` of plain data applied as ``alpha * (W @ fn(v) + b)``
(see :func:`superscopes_nn.engine.chunks.apply_map`). No dataclass method ever runs on
the server.

==============  ==========================  ============================
mapping         f(v)                        key
==============  ==========================  ============================
``Identity()``  v                           ``identity``
``Amplify(a)``  a * v                       ``amplify:a``
``Affine(W,b)`` W v + b                     ``affine:<hash of W, b>``
``Fn(fn)``      fn(v)                       ``fn:<name>:<hash of fn>``
``Compose(m,a)`` a * m(v)                   ``<m.key>*a``
==============  ==========================  ============================

:class:`Row` is one fully resolved patch (token ids, absolute positions and
layers); :mod:`superscopes_nn.engine.rows` makes rows from specs.
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .validate import check_alpha

ENTITY_PROMPT = (
    "Syria: Country in the Middle East, Leonardo DiCaprio: American actor, Samsung: South Korean "
    "multinational major appliance and consumer electronics corporation, x"
)
IDENTITY_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"

RESULT_COLUMNS = [
    "source_prompt", "source_position", "source_token", "source_layer", "site",
    "target_prompt", "target_position", "target_layer", "target_site", "mapping", "mapping_key", "alpha",
    "model", "target_model", "token_ids", "error", "interpretation",
]
"""The columns of every result frame, in order; ``interpretation`` (the generated text) last, so a frame's
repr (which keeps the first and last columns when it is too wide) always shows it."""


@dataclass(frozen=True)
class Source:
    """Where to read: ``prompt``, token ``position`` (int, negative ok, or a token
    string resolved to the last sub-token of its only occurrence), ``layer`` and ``site``."""

    prompt: str
    layer: int
    position: int | str = -1
    site: str = "residual"


@dataclass(frozen=True)
class Target:
    """Where to write: ``prompt`` with a ``placeholder`` word (default ``x``) or an
    explicit ``position``; ``layer``/``site`` default to the source's."""

    prompt: str = ENTITY_PROMPT
    layer: int | None = None
    position: int | str | None = None
    placeholder: str = "x"
    site: str | None = None


def _digest(*parts: Any) -> str:
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, torch.Tensor):
            t = p.detach().to("cpu", torch.float64).contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


class Identity:
    """f(v) = v."""

    name = "identity"
    alpha = 1.0
    key = "identity"

    def plain(self) -> tuple:
        return (1.0, None, None, None)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return v


@dataclass(frozen=True)
class Amplify:
    """f(v) = alpha * v (Superscopes). ``alpha`` must be finite and > 0."""

    alpha: float
    name: str = field(default="amplify", init=False)

    def __post_init__(self):
        object.__setattr__(self, "alpha", check_alpha(self.alpha))

    @property
    def key(self) -> str:
        return f"amplify:{self.alpha!r}"

    def plain(self) -> tuple:
        return (self.alpha, None, None, None)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return v * self.alpha


@dataclass(frozen=True, eq=False)
class Affine:
    """f(v) = weight @ v + bias; ``weight`` is [d_target, d_source], ``bias`` [d_target]."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    name: str = "affine"
    alpha: float = field(default=float("nan"), init=False)

    def __post_init__(self):
        if not isinstance(self.weight, torch.Tensor) or self.weight.dim() != 2:
            raise ValueError(f"affine weight must be a 2-D tensor [d_target, d_source], got "
                             f"{getattr(self.weight, 'shape', self.weight)!r}")
        if self.bias is not None and tuple(self.bias.shape) != (self.weight.shape[0],):
            raise ValueError(f"affine bias shape {tuple(self.bias.shape)} does not match weight {tuple(self.weight.shape)}")

    @property
    def key(self) -> str:
        return f"affine:{_digest(self.weight, self.bias)}"

    def plain(self) -> tuple:
        return (1.0, self.weight, self.bias, None)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(v.device)
        out = v.to(w.dtype) @ w.T
        return out + self.bias.to(v.device) if self.bias is not None else out


def _fn_digest(fn: Callable) -> str:
    """A stable hash of a callable: its code and the values it closes over."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return _digest(repr(fn))
    closure = tuple(c.cell_contents for c in (fn.__closure__ or ()))
    return _digest(code.co_code, code.co_consts, code.co_names, getattr(fn, "__qualname__", ""), *closure)


@dataclass(frozen=True, eq=False)
class Fn:
    """Any torch callable ``v -> v'`` ([d_source] -> [d_target]); it runs where the model runs
    (on NDIF too, shipped by source). ``key`` defaults to a hash of its code and closure.

    ``v`` is a float32 tensor on the device the source vector was read on (a GPU, a layer's
    GPU under ``device_map``, or the CPU for vectors NDIF sent back); the engine moves what
    ``fn`` returns to the target tensor's device and dtype. Tensors ``fn`` closes over are
    *not* moved for it: move them explicitly (``lambda v: W.to(v.device) @ v``), or use
    :class:`Affine`, whose weight and bias follow ``v`` (once per chunk)."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    name: str = "callable"
    alpha: float = float("nan")
    key_: str | None = None

    def __post_init__(self):
        if not callable(self.fn):
            raise ValueError(f"Fn needs a callable, got {self.fn!r}")

    @property
    def key(self) -> str:
        return self.key_ or f"fn:{self.name}:{_fn_digest(self.fn)}"

    def plain(self) -> tuple:
        return (1.0, None, None, self.fn)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.fn(v)


@dataclass(frozen=True, eq=False)
class Compose:
    """alpha * base(v): an inter-model map (Affine or Fn) followed by amplification."""

    base: Any
    alpha: float

    def __post_init__(self):
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        if isinstance(self.base, (Compose, Amplify)):
            raise ValueError(f"Compose takes an Identity, Affine or Fn base, got {self.base!r}")

    @property
    def name(self) -> str:
        return f"{self.base.name}+amplify"

    @property
    def key(self) -> str:
        return f"{self.base.key}*{self.alpha!r}"

    def plain(self) -> tuple:
        _, w, b, fn = self.base.plain()
        return (self.alpha, w, b, fn)

    def __call__(self, v):
        return self.base(v) * self.alpha


MAPPINGS = (Identity, Amplify, Affine, Fn, Compose)


def as_mapping(f: Any):
    """Normalise ``None`` / a number / a mapping / a callable to a mapping object."""
    if f is None:
        return Identity()
    if isinstance(f, MAPPINGS):
        return f
    if isinstance(f, bool):
        raise ValueError(f"mapping must be None, a number (amplification), Affine, Fn or a callable; got {f!r}")
    if isinstance(f, numbers.Real):
        return Amplify(f)
    if callable(f):
        return Fn(f, name=getattr(f, "__name__", "callable"))
    raise ValueError(f"mapping must be None, a number (amplification), Affine, Fn or a callable; got {f!r}")


@dataclass(frozen=True, eq=False)
class Row:
    """One fully resolved patch (absolute positions and layers, token ids). Client side only."""

    source_prompt: str
    source_ids: tuple[int, ...]
    source_position: int
    source_layer: int
    site: str
    target_prompt: str
    target_ids: tuple[int, ...]
    target_position: int
    target_layer: int
    target_site: str
    mapping: Any
    source_token: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def source_key(self) -> tuple:
        """Identity of the source vector this row reads."""
        return (self.source_ids, self.source_layer, self.site, self.source_position)
