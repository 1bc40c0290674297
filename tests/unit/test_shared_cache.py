"""The shared cache on Redis builds one client per connection pool, not one per call (docs/benchmarks.md, Ingest)."""

from __future__ import annotations

from pushmail_site.cache import SharedRedisCache


def test_the_shared_cache_reuses_its_redis_client() -> None:
    cache = SharedRedisCache("redis://127.0.0.1:6379/15", {})
    client = cache._cache.get_client(write=True)

    assert cache._cache.get_client(write=True) is client
    assert cache._cache.get_client(write=False) is client  # one server: the same pool for both
