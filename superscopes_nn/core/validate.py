"""One validator per kind of value; each error is one line that names the value.

Every public entry point (Python API, CLI, experiments) checks its inputs here,
so ``numpy`` scalars and arrays are accepted wherever an int or float list is, and
a bad value is refused the same way everywhere::

    check_layer(np.int64(3), n=18, what="source", name="gemma-3-270m")   # -> 3
    check_alphas(np.array([1, 3]))                                         # -> [1.0, 3.0]
    check_alpha(float("nan"))   # ValueError: amplification factor must be a finite number > 0, got nan
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterable


def is_int(value: Any) -> bool:
    """True for Python and numpy integers (never bools)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and not is_np_bool(value)


def is_np_bool(value: Any) -> bool:
    return type(value).__name__ == "bool_"


def as_list(values: Any, what: str) -> list:
    """A list from a scalar, a list/tuple/range, a numpy array or any non-string iterable."""
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        values = values.tolist()  # numpy arrays and scalars, torch tensors
    if isinstance(values, (str, bytes)):
        return [values]
    if isinstance(values, Iterable):
        return list(values)
    return [values]


def check_int(value: Any, what: str, minimum: int | None = None) -> int:
    """An int (numpy ints accepted) >= ``minimum``."""
    if not is_int(value):
        raise ValueError(f"{what} must be an int, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def check_layer(layer: Any, n: int, what: str, name: str) -> int:
    """A layer index in ``-n .. n-1``, returned as ``0 .. n-1``."""
    if not is_int(layer):
        raise ValueError(f"{what} layer must be an int, got {layer!r}")
    layer = int(layer)
    if not -n <= layer < n:
        raise ValueError(f"{what} layer {layer} out of range for {name} with {n} layers (valid 0..{n - 1})")
    return layer % n


def check_layers(layers: Any, what: str = "layer") -> list[int]:
    """A non-empty list of ints from an int, a range, a list or a numpy array (range checks come later)."""
    out = as_list(layers, what)
    if not out:
        raise ValueError(f"empty {what} list")
    return [check_int(v, f"{what}") for v in out]


def check_alpha(alpha: Any) -> float:
    """An amplification factor: a finite real > 0 (numpy scalars accepted)."""
    ok = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool) and not is_np_bool(alpha)
    if not ok or not math.isfinite(float(alpha)) or float(alpha) <= 0:
        raise ValueError(f"amplification factor must be a finite number > 0, got {plain_value(alpha)!r}")
    return float(alpha)


def check_alphas(alphas: Any) -> list[float]:
    """A non-empty list of amplification factors."""
    if isinstance(alphas, (str, bytes)):
        raise ValueError(f"alphas must be a list of numbers, got {alphas!r}")
    out = as_list(alphas, "alpha")
    if not out:
        raise ValueError("empty amplification (alpha) list: give at least one alpha > 0")
    return [check_alpha(a) for a in out]


def check_batch_size(value: Any) -> int:
    return check_int(value, "max_batch_size", minimum=1)


def check_max_new_tokens(value: Any, prompt_tokens: int | None = None, context: int | None = None,
                         name: str = "the model") -> int:
    """An int >= 1; with ``prompt_tokens`` and ``context``, at most the context left after the prompt."""
    value = check_int(value, "max_new_tokens", minimum=1)
    if prompt_tokens is not None and context is not None and prompt_tokens + value > context:
        raise ValueError(f"max_new_tokens {value} exceeds the context left after the prompt: {name} has a context "
                         f"of {context} tokens and the longest prompt takes {prompt_tokens}, so at most "
                         f"{max(context - prompt_tokens, 0)} new tokens fit")
    return value


def check_text(value: str, what: str) -> str:
    """``value`` if it is encodable text: a lone surrogate (a non-UTF-8 byte of a command-line
    argument, ``"\\udce9"`` for Latin-1 ``é``) is refused naming its place."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise ValueError(f"{what} {shown!r} is not valid text: character {err.start} is the lone surrogate "
                         f"{value[err.start]!r} (a byte that is not UTF-8, e.g. Latin-1 in a command-line "
                         "argument?); pass UTF-8 text") from None
    return value


def check_strings(values: Any, what: str) -> list[str]:
    """A non-empty list of non-empty strings of valid text (a single string becomes a one-item list)."""
    out = as_list(values, what)
    if not out:
        raise ValueError(f"no {what} given")
    for v in out:
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{what} must be a non-empty string, got {v!r}")
        check_text(v, what)
    return out


@dataclass(frozen=True)
class Remote:
    """Where a run's traces go, parsed once by :func:`check_remote`.

    ``value``: the canonical ``remote=`` value nnsight and the library take (``False``, ``"local"``,
    ``True`` or the host URL); ``host``: the NDIF host a run sends to (None: local, or NDIF's default
    host for ``True``)."""

    value: Any
    host: str | None = None

    @property
    def is_ndif(self) -> bool:
        """True when traces go to NDIF (``True``, ``"ndif"`` or a host), not for ``"local"``."""
        return bool(self.value) and self.value != "local"

    @property
    def is_round_trip(self) -> bool:
        """True for ``"local"``: nnsight's serialization round trip, run on this machine."""
        return self.value == "local"

    def __bool__(self) -> bool:
        return bool(self.value)


def check_remote(remote: Any) -> Remote:
    """The one parse of ``remote=``: ``False``/``None`` (local), ``"local"`` (any case: nnsight's round trip
    here), ``True``/``"ndif"`` (NDIF) or an ``http(s)://host`` URL (NDIF at that host); a
    :class:`Remote` as it is. Anything else is a one-line ValueError naming it."""
    if isinstance(remote, Remote):
        return remote
    if remote is None or isinstance(remote, bool) or is_np_bool(remote):
        return Remote(bool(remote))
    if isinstance(remote, str):
        low = remote.strip().lower()
        if low == "local":
            return Remote("local")
        if low == "ndif":
            return Remote(True)
        if low.startswith(("http://", "https://")) and low.split("://", 1)[1].strip("/"):
            return Remote(remote.strip(), host=remote.strip())
    raise ValueError(f"remote must be False, True, 'local' or an http(s):// host URL, got {remote!r}")


def check_dtype(dtype: Any):
    """A ``torch.dtype`` from a dtype or its name (``"bfloat16"``, ``"torch.float16"``)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        value = getattr(torch, dtype.strip().removeprefix("torch."), None)
        if isinstance(value, torch.dtype):
            return value
    raise ValueError(f"unknown dtype {dtype!r}: use a torch dtype or its name, e.g. float32, bfloat16, float16")


def check_device(device: Any):
    """``None`` (CPU) or a device string / ``torch.device`` that exists on this machine."""
    import torch

    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}: use e.g. 'cpu', 'cuda', 'cuda:0' or 'mps'") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {device!r}: no CUDA GPU is available here; use device=None (CPU)")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device {device!r}: only {n} CUDA GPU(s) here (valid cuda:0..cuda:{n - 1})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available here; use device=None (CPU)")
    return dev


def dedupe(values: list, what: str) -> list:
    """``values`` without repeats (first kept), warning once when there were any."""
    seen, out = set(), []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    if len(out) < len(values):
        import warnings

        warnings.warn(f"repeated {what} values dropped: {values!r} -> {out!r}", stacklevel=3)
    return out


def plain_value(value: Any) -> Any:
    """numpy scalars as Python numbers, so messages read ``1`` rather than ``np.int64(1)``."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value
