"""``IdentityMemo``: values derived from an object, kept exactly as long as the object.

The package derives things once per model, per prepared model and per table array
(kernel-side tables, device uploads, ensemble variants). Keying such caches by ``id()``
alone would keep every object ever seen alive (a strong reference in the value) or serve a
stale entry to a new object that reuses a freed id. Here an entry is keyed by the object's
identity plus an optional key, holds only a weak reference to the object, and is dropped
when the object is collected. Works for unhashable objects (numpy arrays) too.

A value must not refer to its object (directly or through a cycle the collector cannot
break while the memo holds the value), or the object can never be collected.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any


class IdentityMemo:
    """``memo.get(obj, make, *key)``: ``make()`` once per live ``obj`` and ``key``."""

    def __init__(self):
        self._entries: dict = {}  # (id(obj), *key) -> (weakref to obj, value)
        self._lock = threading.Lock()

    def get(self, obj, make: Callable[[], Any], *key):
        k = (id(obj), *key)
        hit = self._entries.get(k)
        if hit is not None and hit[0]() is obj:
            return hit[1]
        value = make()
        with self._lock:
            hit = self._entries.get(k)
            if hit is not None and hit[0]() is obj:  # another thread made it meanwhile
                return hit[1]
            self._entries[k] = (weakref.ref(obj, self._forget(k)), value)
        return value

    def _forget(self, k):
        entries = self._entries

        def forget(ref):
            hit = entries.get(k)
            if hit is not None and hit[0] is ref:  # not a newer object that reused the id
                entries.pop(k, None)
        return forget

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
