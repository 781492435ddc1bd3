"""Values kept beside an object for as long as it lives, keyed by its identity.

>>> seen = ByIdentity()
>>> seen.put(config, spec)      # nothing is stored on ``config`` (nnsight pickles a wrapper's __dict__)
>>> seen.get(config)            # spec; None for any other object, or once ``config`` is gone

Used for the structure spec resolved for a config and the ModelInfo of a wrapped model: neither
object needs to be hashable, and the entry goes when the object does.
"""

from __future__ import annotations

import weakref

__all__ = ["ByIdentity"]


class ByIdentity:
    """``id(obj) -> (weakref to obj, value)``, each entry dropped when its object is collected."""

    def __init__(self):
        self._items: dict[int, tuple] = {}

    def put(self, obj, value) -> None:
        key = id(obj)

        def forget(ref):
            if self._items.get(key, (None,))[0] is ref:
                del self._items[key]

        self._items[key] = (weakref.ref(obj, forget), value)

    def get(self, obj):
        ref, value = self._items.get(id(obj), (None, None))
        return value if ref is not None and ref() is obj else None
