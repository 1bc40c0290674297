"""The shared cache on Redis, with one client object per connection pool.

Django's Redis backend builds a new ``redis.Redis`` for every cache call, and building one
(its table of response callbacks) costs more CPU than the call itself: the ingest profile
(docs/benchmarks.md) shows it on every notification, twice (the nonce, the rate counter).
A client over a pool is safe to share between threads, and the pool reconnects after a fork.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class _ReusedClient(RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        stock: Any = self  # the stubs do not know RedisCacheClient's private members
        pool = stock._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = stock._client(connection_pool=pool)
        return client


class SharedRedisCache(RedisCache):
    """``django.core.cache.backends.redis.RedisCache``, building its client once per pool."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = _ReusedClient
