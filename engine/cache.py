"""RecommendationCache: answered recommendation lists per user, dropped when they go stale.

The engine drops one user's lists when that user's events arrive or the user is erased,
the anonymous lists (user None) when anyone's events arrive, and every list when the
models or the catalogue change. Bounded (least recently used
lists go first); one per Engine, used from the Engine's thread."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable


class RecommendationCache:
    def __init__(self, size: int = 20_000):
        self.size = size
        self._lists: OrderedDict[Hashable, Any] = OrderedDict()
        self._by_user: dict[str | None, set[Hashable]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._lists)

    def get(self, key: Hashable) -> Any | None:
        found = self._lists.get(key)
        if found is None:
            self.misses += 1
            return None
        self._lists.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: Hashable, user_id: str | None, value: Any) -> None:
        self._lists[key] = value
        self._lists.move_to_end(key)
        self._by_user.setdefault(user_id, set()).add(key)
        while len(self._lists) > self.size:
            old, _ = self._lists.popitem(last=False)
            keys = self._by_user.get(old[0])
            if keys is not None:
                keys.discard(old)
                if not keys:
                    del self._by_user[old[0]]

    def drop_users(self, user_ids) -> int:
        """Forget every list answered for these users; returns how many were dropped."""
        dropped = 0
        for user in user_ids:
            for key in self._by_user.pop(user, ()):
                dropped += self._lists.pop(key, None) is not None
        return dropped

    def clear(self) -> None:
        self._lists.clear()
        self._by_user.clear()

    def stats(self) -> dict[str, int]:
        return {"lists": len(self._lists), "hits": self.hits, "misses": self.misses}
