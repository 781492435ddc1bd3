"""The Hugging Face hub half of a remote run: the model id NDIF is sent, looked up once and quickly.

A remote run sends NDIF the model's hub id, which nnsight canonicalises on the hub
(``HfApi().model_info``) inside the first remote call. With no network that lookup used to
fail inside NDIF's retries and read as an NDIF failure, minutes later. Here it runs once,
before anything is sent to NDIF, with a :data:`HUB_TIMEOUT` and no retries, and a failure
is one line that names the hub, not NDIF::

    canonical_id("meta-llama/Llama-3.1-8B", host="https://api.ndif.us")   # -> the hub's spelling
    canonical_id("/my/checkpoint", host=...)   # ValueError: a local path has no hub id
    # hub unreachable: ValueError "could not reach the Hugging Face hub at https://huggingface.co ..."

With ``HF_HUB_OFFLINE=1`` nothing is asked: the id is sent as given. The answer goes into
nnsight's own cache, so its model key never asks again.
"""

from __future__ import annotations

import os

#: Seconds the one hub lookup may take (huggingface_hub's own file downloads retry for ~35 s).
HUB_TIMEOUT = 10.0

__all__ = ["HUB_TIMEOUT", "HubUnreachable", "canonical_id", "hub_endpoint", "hub_offline"]


class HubUnreachable(ValueError):
    """The Hugging Face hub could not be asked (network, DNS, timeout); the message names the hub."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _on(host: str | None) -> str:
    return f"NDIF at {host}" if host else "NDIF"


def canonical_id(repo_id: str, host: str | None = None, timeout: float = HUB_TIMEOUT, name: str | None = None) -> str:
    """The hub's spelling of ``repo_id`` (what nnsight sends NDIF), asked once; see the module docstring.
    ``name``: the model as messages name it (default ``repo_id``)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id
    from nnsight.modeling import huggingface as nnsight_hf

    if repo_id in nnsight_hf._ID_CACHE:
        return nnsight_hf._ID_CACHE[repo_id]
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        name = repo_id if name is None else name
        raise ValueError(f"cannot run {name!r} on {host or 'NDIF'}: a remote run sends the model's hub id, and "
                         f"{name!r} has none NDIF can look up (a local path or an in-memory model): "
                         f"{str(err).splitlines()[0]}") from None
    if hub_offline():
        nnsight_hf._ID_CACHE[repo_id] = repo_id
        return repo_id
    try:
        found = HfApi().model_info(repo_id, timeout=timeout).id
    except RepositoryNotFoundError:
        raise ValueError(f"the Hugging Face hub at {hub_endpoint()} has no model {repo_id!r} (or it is private: "
                         f"set HF_TOKEN); {_on(host)} was not contacted") from None
    except Exception as err:  # noqa: BLE001 - httpx / OS errors of an unreachable hub
        why = " ".join(f"{type(err).__name__}: {err}".split())[:160]
        exc = HubUnreachable(f"could not reach the Hugging Face hub at {hub_endpoint()} to look up the model id "
                             f"{repo_id!r} ({why}; timeout {timeout:g} s); {_on(host)} was not contacted: check "
                             "the network, or set HF_HUB_OFFLINE=1 to send the id as given")
        exc.reason = f"the Hugging Face hub at {hub_endpoint()} could not be reached ({why}; timeout {timeout:g} s)"
        raise exc from None
    nnsight_hf._ID_CACHE[repo_id] = found
    return found
