"""In-process cache of owners' routing snapshots, invalidated by the settings version.

The hot path costs one small Redis read (the owner's version) when nothing changed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from settings.models import OwnerSnapshot
from settings.store import SettingsStore

MAX_OWNERS = 10_000


class OwnerCache:
    def __init__(self, store: SettingsStore, max_owners: int = MAX_OWNERS) -> None:
        self._store = store
        self._max = max_owners
        self._entries: OrderedDict[str, OwnerSnapshot] = OrderedDict()
        self._lock = threading.Lock()

    def snapshot(self, owner: str) -> OwnerSnapshot:
        version = self._store.owner_version(owner)
        with self._lock:
            cached = self._entries.get(owner)
            if cached is not None and cached.version == version:
                self._entries.move_to_end(owner)
                return cached
        fresh = self._store.owner_snapshot(owner)
        with self._lock:
            self._entries[owner] = fresh
            self._entries.move_to_end(owner)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return fresh
