"""Which hosts a remote run talks to over plain http: loopback, and those the user names.

A result is only as trustworthy as the channel it came over (and the API key travels in every
request's headers), so a plain ``http://`` host other than loopback (``127.0.0.0/8``, ``::1``,
``localhost``) is refused before anything is sent, unless the user allows it by name::

    >>> check_host("http://10.0.0.5:5001")
    ValueError: refused plain-http host http://10.0.0.5:5001: ...
    >>> allow_insecure_http("http://10.0.0.5:5001")   # or NDIFBackend(..., allow_insecure_http=True),
    >>> check_host("http://10.0.0.5:5001")            # or the CLI's --allow-insecure-http
    'http://10.0.0.5:5001'

The same rule holds for the result URL a COMPLETED status names (:func:`check_result_url`).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["allow_insecure_http", "check_host", "check_result_url", "is_loopback", "insecure_allowed"]

_ALLOWED: set = set()  # (hostname, port) pairs the user allowed over plain http, for this process


def _where(url: str) -> tuple:
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.hostname or "").lower(), port


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine: ``localhost``, ``127.0.0.0/8`` or ``::1``."""
    name, _ = _where(url)
    if name == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def allow_insecure_http(host: str) -> str:
    """Allow plain http to ``host`` (``http://name:port``) for the rest of this process; returns it."""
    if not isinstance(host, str) or not host.strip().lower().startswith(("http://", "https://")) \
            or not _where(host)[0]:
        raise ValueError(f"allow_insecure_http needs an http:// host URL, got {host!r}")
    _ALLOWED.add(_where(host))
    return host.strip()


def insecure_allowed(url: str) -> bool:
    """Whether plain http to ``url`` is fine: a loopback host, or one :func:`allow_insecure_http` named."""
    return is_loopback(url) or _where(url) in _ALLOWED


def check_host(host: str, allowed: bool = False) -> str:
    """``host``, unless it is plain ``http://`` to a non-loopback host the user did not allow
    (``allowed``: the caller's own explicit ``allow_insecure_http=True``): then one ``ValueError``."""
    if host.strip().lower().startswith("http://") and not allowed and not insecure_allowed(host):
        raise ValueError(f"refused plain-http host {host}: a result (and the API key) is only as safe as the "
                         "channel; use https://, or allow this host explicitly: allow_insecure_http(host) / "
                         "NDIFBackend(..., allow_insecure_http=True) / --allow-insecure-http")
    return host


def check_result_url(url: str, host: str, allowed: bool = False) -> str | None:
    """Why the result URL ``url`` a COMPLETED status from ``host`` names is not fetched, or ``None``.
    Plain http to a non-loopback host is fetched only where the user allowed plain http (``allowed``,
    or :func:`allow_insecure_http` of that host or of ``url``'s)."""
    low = url.strip().lower()
    if not low.startswith(("http://", "https://")) or not _where(url)[0]:
        return f"its result URL {url[:120]!r} is not an http(s) URL"
    if low.startswith("http://") and not (allowed or insecure_allowed(url) or _where(host) in _ALLOWED):
        return (f"its result URL {url.split('?')[0][:120]} is plain http to another machine; allow it explicitly "
                "(allow_insecure_http(url) / NDIFBackend(..., allow_insecure_http=True) / --allow-insecure-http)")
    return None
