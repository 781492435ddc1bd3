"""Results from a remote host, decoded as data only: nothing a host sends can run code here.

nnsight 0.8.1 loads a result with ``torch.load(weights_only=False)`` (``RemoteBackend.finalize``,
and ``ResponseModel.unpickle`` for a websocket frame): a pickle is a program, so whoever answers
for the host (the host, a proxy, a DNS mistake, a plain-http path) could run code in the client.
:class:`~superscopes_nn.remote.backend.NDIFBackend` sends every byte a host returns through
:func:`load_result` instead::

    >>> load_result(blob, "https://api.ndif.us", compressed=True)   # {"outs": [...], "vectors": {...}}
    NDIFError: refused a result from http://127.0.0.1:5001: it tries to load builtins.exec, which is not data

The steps, each refusing in one line that names the host (an :class:`~superscopes_nn.remote.errors.NDIFError`
of kind ``permanent``, never retried): the size, against :data:`MAX_RESULT_BYTES` (compressed, and
again decompressed, before anything is unpickled); the container (``torch.save``'s zip archive, one
``data.pkl``); every global the pickle would import, read statically from its opcodes, against
:data:`RESULT_GLOBALS` (exactly what an honest result references: tensor rebuilding and the storage
types); then ``torch.load(weights_only=True)`` as a second, independent guard; then the decoded
value, walked: only :data:`DATA_TYPES`, and a dict of saved values at the top.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings
import zipfile

from .errors import PERMANENT, Failure, NDIFError

__all__ = ["MAX_RESULT_BYTES", "MAX_STATUS_BYTES", "RESULT_GLOBALS", "DATA_TYPES", "refusal", "load_result",
           "load_frame", "pickle_globals", "check_data", "check_returned", "FRAME_GLOBALS", "too_big"]

MiB = 2 ** 20
#: The largest result (compressed, and again decompressed) the client reads. A remote run's plan refuses
#: any request whose result would pass NDIF's 8 MiB inline cap (``engine.plan.LIMITS["result"]``, an upper
#: estimate), so an honest result is below 8 MiB; 64 MiB leaves 8x for sessions built outside the plan
#: (a ``backend=`` of one's own) and bounds what a host can make the client hold. A knob: set it here, or
#: ``NDIFBackend(max_result_bytes=...)``.
MAX_RESULT_BYTES = 64 * MiB
#: The largest JSON status (``GET /response/{id}``) the client reads: a status, an error text, a URL.
MAX_STATUS_BYTES = 1 * MiB

#: Every global an honest result's pickle imports. Measured on the ``ndif_server`` tier's 27 results
#: (every entry point, trusted and sandbox paths, float32 server): ``_rebuild_tensor_v2``, ``OrderedDict``
#: (a tensor's empty hooks), Float / Long / Bool storages (values, token ids, finite / mapped_ok flags);
#: plus the storages of the half-precision dtypes NDIF serves models in (its default is bfloat16).
#: Nothing else is loaded.
RESULT_GLOBALS = frozenset({
    "torch._utils._rebuild_tensor_v2", "collections.OrderedDict",
    "torch.FloatStorage", "torch.BFloat16Storage", "torch.HalfStorage", "torch.LongStorage", "torch.BoolStorage",
})


def _data_types():
    import torch

    return (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


#: The Python types a decoded result may hold (``bytes`` too in a websocket frame's envelope).
DATA_TYPES = ("dict", "list", "tuple", "str", "int", "float", "bool", "None", "torch.Tensor")


def refusal(host: str, why: str) -> NDIFError:
    """The one-line, never-retried error for a result from ``host`` that is not loaded."""
    return NDIFError(Failure(PERMANENT, f"refused a result from {host}: {' '.join(str(why).split())}"))


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n / 1024:.1f} KiB"


def too_big(host: str, what: str, limit: int) -> NDIFError:
    """The refusal of a result over ``limit`` bytes; ``what``: how it got there ("it is 9.0 MiB")."""
    return refusal(host, f"{what}, over the {_mib(limit)} a result may be (superscopes_nn.remote.safe_load."
                         "MAX_RESULT_BYTES, or NDIFBackend(max_result_bytes=...))")


def _decompressed(content: bytes, host: str, limit: int) -> bytes:
    import zstandard

    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(content)) as reader:
            raw = reader.read(limit + 1)
    except zstandard.ZstdError as err:
        raise refusal(host, f"it is not a zstd stream as the request asked for ({err}): truncated or corrupt") from None
    if len(raw) > limit:
        raise too_big(host, f"it decompresses to more than {_mib(limit)}", limit)
    return raw


_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}


def _py3_name(module: str, name: str = "") -> str:
    """``module.name`` as Python 3 imports it (a protocol-2 pickle spells ``builtins`` ``__builtin__``,
    and the unpickler maps such names, as :mod:`_compat_pickle` lists them)."""
    import _compat_pickle

    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


class _Mark:
    """The MARK opcode's place on the abstract stack."""


def pickle_globals(data: bytes) -> list[str]:
    """Every ``module.name`` the pickle ``data`` imports, in order, read from its opcodes without running it.

    ``GLOBAL`` / ``INST`` name theirs; ``STACK_GLOBAL`` takes two strings off the stack, so the stack is
    followed abstractly (strings, memo puts and gets; everything else is opaque). A global whose name is
    not a pair of literal strings, or an extension code (``EXT1/2/4``, a global by registry number), is
    reported as ``?`` (refused). ``ValueError``: the stream is not a complete pickle."""
    stack: list = []
    memo: dict = {}
    out: list[str] = []
    opaque = object()
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in ("GLOBAL", "INST"):
            out.append(_py3_name(*str(arg).split(" ", 1)))
        elif name == "STACK_GLOBAL":
            mod, qual = (stack[-2], stack[-1]) if len(stack) >= 2 else (opaque, opaque)
            out.append(_py3_name(mod, qual) if isinstance(mod, str) and isinstance(qual, str) else "?")
        elif name.startswith("EXT"):
            out.append("?")
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if stack:
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, opaque))
            continue
        if name == "DUP":
            stack.append(stack[-1] if stack else opaque)
            continue
        before, after = op.stack_before, op.stack_after
        if pickletools.markobject in before:  # pop to the mark, the mark, then what lies below it
            while stack and not isinstance(stack[-1], _Mark):
                stack.pop()
            if stack:
                stack.pop()
            below = before.index(pickletools.markobject)
            del stack[len(stack) - min(below, len(stack)):]
        else:
            del stack[len(stack) - min(len(before), len(stack)):]
        for kind in after:
            stack.append(_Mark() if kind is pickletools.markobject else arg if name in _STRINGS else opaque)
    return out


def _archive(raw: bytes, host: str, limit: int) -> bytes:
    """The ``data.pkl`` of a ``torch.save`` zip archive, its members' sizes bounded by ``limit``."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            infos = zf.infolist()
            if sum(i.file_size for i in infos) > limit:
                raise too_big(host, f"its archive unpacks to {_mib(sum(i.file_size for i in infos))}", limit)
            pkls = [i for i in infos if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")]
            if len(pkls) != 1:
                raise refusal(host, f"it is a zip archive with {len(pkls)} data.pkl records, not a torch.save result")
            return zf.read(pkls[0])
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise refusal(host, f"it is not a complete torch.save zip archive ({len(raw)} bytes: {err}): truncated, "
                            "corrupt or another format") from None


def check_data(value, host: str, extra: tuple = ()) -> None:
    """Refuse ``value`` unless it is built of :data:`DATA_TYPES` only (exact types: no subclass, no
    OrderedDict), every tensor a plain strided CPU tensor (``extra``: more exact types allowed)."""
    import torch

    allowed = _data_types() + tuple(extra)
    todo = [value]
    while todo:
        v = todo.pop()
        t = type(v)
        if t not in allowed:
            raise refusal(host, f"it holds a {t.__module__}.{t.__qualname__}, which is not data "
                                f"({', '.join(DATA_TYPES)})")
        if t is torch.Tensor:
            if v.layout != torch.strided or v.device.type != "cpu" or v.is_quantized:
                raise refusal(host, f"it holds a {v.layout} tensor on {v.device}, not a plain CPU tensor")
        elif t is dict:
            todo.extend(v.keys())
            todo.extend(v.values())
        elif t in (list, tuple):
            todo.extend(v)


def _refuse_globals(pkl: bytes, host: str, allowed: frozenset) -> None:
    try:
        names = pickle_globals(pkl)
    except ValueError as err:
        raise refusal(host, f"its pickle is incomplete ({err}): truncated or corrupt") from None
    for name in names:
        if name not in allowed:
            what = "a global it computes at load time" if name == "?" else name
            raise refusal(host, f"it tries to load {what}, which is not data")


def _unpickle(raw: bytes, host: str, limit: int):
    import torch

    _refuse_globals(_archive(raw, host, limit), host, RESULT_GLOBALS)
    try:
        with warnings.catch_warnings():  # torch warns of a pickle protocol it then refuses; the refusal says it
            warnings.simplefilter("ignore")
            value = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever torch's safe loader refuses or cannot read
        said = str(err).split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
        said = " ".join(said.split()) or type(err).__name__
        raise refusal(host, f"torch's weights-only loader cannot read it as data ({said[:200]})") from None
    check_data(value, host)
    return value


def load_result(content: bytes, host: str, *, compressed: bool, limit: int | None = None) -> dict:
    """The saved values (``{name: value}``) in a result blob from ``host``, decoded as data only
    (see the module doc); ``compressed``: the request asked for zstd. ``limit``: bytes, default
    :data:`MAX_RESULT_BYTES`."""
    limit = MAX_RESULT_BYTES if limit is None else int(limit)
    if len(content) > limit:
        raise too_big(host, f"it is {_mib(len(content))}", limit)
    raw = _decompressed(content, host, limit) if compressed else content
    value = _unpickle(raw, host, limit)
    if type(value) is not dict or not all(type(k) is str and k.isidentifier() for k in value):
        shape = "a dict keyed by non-names" if type(value) is dict else f"a {type(value).__name__}"
        raise refusal(host, f"it is {shape}, not the dict of saved values (name -> value) a session returns")
    return value


#: The one global a websocket frame's envelope (``ResponseModel.pickle``, pickle protocol 4) imports.
FRAME_GLOBALS = frozenset({"nnsight.schema.response.Status"})


class _FrameUnpickler(pickle.Unpickler):
    """Loads a frame's envelope: ``Status`` is its only class, and it holds no tensor storage."""

    def find_class(self, module, name):
        if f"{module}.{name}" not in FRAME_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        from nnsight.schema.response import Status

        return Status

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a websocket frame's envelope holds no tensor storage")


def load_frame(content: bytes, host: str, limit: int | None = None) -> dict:
    """A binary websocket frame (``ResponseModel.pickle``: a ``torch.save`` of the response's fields,
    ``data`` possibly the result blob as bytes, itself decoded later by :func:`load_result`), decoded
    as data only by this module's own unpickler: its fields as a dict."""
    from nnsight.schema.response import Status

    limit = MAX_RESULT_BYTES if limit is None else int(limit)
    if len(content) > limit:
        raise too_big(host, f"it is {_mib(len(content))}", limit)
    pkl = _archive(content, host, limit)
    _refuse_globals(pkl, host, FRAME_GLOBALS)
    try:
        value = _FrameUnpickler(io.BytesIO(pkl)).load()
    except Exception as err:  # noqa: BLE001 - a malformed envelope, whatever the unpickler says
        raise refusal(host, f"its websocket frame cannot be read as data ({type(err).__name__}: {err})") from None
    check_data(value, host, extra=(bytes, Status))
    if type(value) is not dict or not {"id", "status"} <= set(value):
        raise refusal(host, f"its websocket frame is a {type(value).__name__} without id and status, not a response")
    return value


def _kind(dtype) -> str:
    import torch

    return "bool" if dtype == torch.bool else "floating" if dtype.is_floating_point or dtype.is_complex else "integer"


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _shown(v) -> str:
    import torch

    if type(v) is torch.Tensor:
        return f"{_a(_kind(v.dtype))} tensor {list(v.shape)}"
    return "None" if v is None else f"a {type(v).__name__}" + (f" of {len(v)}" if type(v) in (list, tuple, dict) else "")


def check_returned(value, template, host: str, what: str = "the result") -> None:
    """Refuse ``value`` (what a remote session returned, already decoded as data) unless it is laid out
    as ``template``, what the session returns (tensors as meta tensors of the returned shapes): ``None``
    where ``None`` is; a list / tuple of the same type and length; a dict with the same keys; a tensor of
    the same rank and kind (bool, integer, floating), its first dimension equal and every other no longer
    (generation may stop early; the server's dtype may differ from the client's). A template dimension
    of 0 matches any length."""
    import torch

    todo = [(value, template, what)]
    while todo:
        v, t, at = todo.pop()
        if t is None:
            ok, want = v is None, "None"
        elif isinstance(t, torch.Tensor):
            dims = list(t.shape)
            ok = type(v) is torch.Tensor and v.ndim == t.ndim and _kind(v.dtype) == _kind(t.dtype) and all(
                d == 0 or (got == d if i == 0 else got <= d) for i, (got, d) in enumerate(zip(v.shape, dims)))
            want = f"{_a(_kind(t.dtype))} tensor {dims}"
        elif type(t) in (list, tuple):
            ok, want = type(v) is type(t) and len(v) == len(t), _shown(t)
            if ok:
                todo.extend((x, y, f"{at}[{i}]") for i, (x, y) in enumerate(zip(v, t)))
        else:  # a dict
            ok, want = type(v) is dict and v.keys() == t.keys(), f"a dict of {len(t)} ({', '.join(map(repr, t))[:80]})"
            if ok:
                todo.extend((v[k], t[k], f"{at}[{k!r}]") for k in t)
        if not ok:
            raise refusal(host, f"{at} is {_shown(v)} where {want} belongs")
