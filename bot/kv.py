"""Short-lived shared state of the channels: seen message ids, numbered choices, the WeChat token.

Several Rasa processes may serve one hospital account, so whatever decides "have we already handled this
message?" must be shared between them: Redis when `REDIS_URL` is set. A newcomer's single process runs
on the in-memory store, which behaves the same within one process. Callers never branch on which one
is configured (`get_store()`).
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import Dict, Optional, Tuple


class KeyValueStore(ABC):
    """Strings with an expiry. Every method is synchronous and safe to call from several threads."""

    @abstractmethod
    def add(self, key: str, value: str, ttl: float) -> bool:
        """Set `key` only if it is absent (atomically); True when this call set it."""

    @abstractmethod
    def get(self, key: str) -> Optional[str]:
        """The value, or None when absent or expired."""

    @abstractmethod
    def set(self, key: str, value: str, ttl: float) -> None:
        """Set `key`, replacing any value."""

    @abstractmethod
    def incr(self, key: str, ttl: float) -> int:
        """Add one to a counter (created at 0 with this expiry) and return the new value."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Forget `key` (no error when absent)."""


class MemoryStore(KeyValueStore):
    """One process's store: a dict with expiry times, pruned as it is used."""

    def __init__(self) -> None:
        self._items: Dict[str, Tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._writes = 0

    def _live(self, key: str, now: float) -> Optional[str]:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= now:
            del self._items[key]
            return None
        return item[0]

    def _prune(self, now: float) -> None:
        self._writes += 1
        if self._writes % 1000 == 0:
            for key in [key for key, (_, expires) in self._items.items() if expires <= now]:
                del self._items[key]

    def add(self, key: str, value: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._live(key, now) is not None:
                return False
            self._items[key] = (value, now + ttl)
            self._prune(now)
            return True

    def get(self, key: str) -> Optional[str]:
        with self._lock:
            return self._live(key, time.monotonic())

    def set(self, key: str, value: str, ttl: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._items[key] = (value, now + ttl)
            self._prune(now)

    def incr(self, key: str, ttl: float) -> int:
        now = time.monotonic()
        with self._lock:
            current = self._live(key, now)
            expires = self._items[key][1] if current is not None else now + ttl
            value = int(current or 0) + 1
            self._items[key] = (str(value), expires)
            return value

    def delete(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


class RedisStore(KeyValueStore):
    """The shared store: every key is prefixed so one Redis database can serve several deployments."""

    def __init__(self, url: str, prefix: str = "hospital:") -> None:
        import redis

        # Short timeouts: channels call this inline while a provider waits for the webhook's answer.
        self._redis = redis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30
        )
        self._prefix = prefix

    def add(self, key: str, value: str, ttl: float) -> bool:
        return bool(self._redis.set(self._prefix + key, value, nx=True, px=max(1, int(ttl * 1000))))

    def get(self, key: str) -> Optional[str]:
        value = self._redis.get(self._prefix + key)
        return value.decode("utf-8") if value is not None else None

    def set(self, key: str, value: str, ttl: float) -> None:
        self._redis.set(self._prefix + key, value, px=max(1, int(ttl * 1000)))

    def incr(self, key: str, ttl: float) -> int:
        pipe = self._redis.pipeline()  # MULTI/EXEC: create with the expiry if absent, then count
        pipe.set(self._prefix + key, 0, nx=True, px=max(1, int(ttl * 1000)))
        pipe.incr(self._prefix + key)
        _, value = pipe.execute()
        return int(value)

    def delete(self, key: str) -> None:
        self._redis.delete(self._prefix + key)


def create_store(redis_url: Optional[str]) -> KeyValueStore:
    return RedisStore(redis_url) if redis_url else MemoryStore()


@lru_cache(maxsize=1)
def get_store() -> KeyValueStore:
    """The process's store: Redis at `REDIS_URL` when set, else in memory."""
    return create_store(os.environ.get("REDIS_URL") or None)
