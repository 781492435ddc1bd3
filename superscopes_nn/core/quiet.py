"""Two known, harmless messages, silenced exactly where they arise (never globally).

* Every ``generate`` under transformers 5.24 + nnsight 0.8.1 prints transformers' log line
  "`past_key_values`/`cache_params` are deprecated. Use `cache` instead." and a ``FutureWarning``
  "`past_key_values` is deprecated and will be removed in version 6.0.0 for `...generate`" with
  nnsight's source line (nnsight passes the prefix cache by its old name). :func:`quiet_generate`
  drops those two messages, and only those, for the duration of a local session.
* Converting an embedded GGUF, and loading a checkpoint, draw tqdm bars; with stderr not a terminal (a log
  file, CI) each redraw is a carriage return in the log. :func:`bars_only_on_a_tty` turns transformers' and
  huggingface_hub's bars off for the duration when stderr is not a TTY.
"""

from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from typing import Callable

PKV_LOG = "`past_key_values`/`cache_params` are deprecated"
"""The start of transformers' log line (``transformers.utils.generic``)."""
PKV_WARNING = r"`past_key_values` is deprecated and will be removed"
"""The start of transformers' ``FutureWarning`` (its ``deprecate_kwarg`` on ``generate``)."""


class _DropPastKeyValues(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(PKV_LOG)


@contextmanager
def quiet_generate():
    """Within: the two ``past_key_values`` deprecation messages are dropped; every other message shows."""
    log = logging.getLogger("transformers.utils.generic")
    drop = _DropPastKeyValues()
    log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=PKV_WARNING, category=FutureWarning)
            yield
    finally:
        log.removeFilter(drop)


def quieted(call: Callable) -> Callable:
    """``call`` (``call(fn)`` runs ``fn``) with every run under :func:`quiet_generate`."""
    def run(fn):
        with quiet_generate():
            return call(fn)
    return run


@contextmanager
def bars_only_on_a_tty(stream=None):
    """Within: no tqdm bars from transformers / huggingface_hub unless ``stream`` (default stderr) is a TTY."""
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_on, hub_on = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        if hf_on:
            hf_logging.enable_progress_bar()
        if hub_on:
            enable_progress_bars()
