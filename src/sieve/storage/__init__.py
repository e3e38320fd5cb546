"""Storage: the catalog + append-only event log (`Store`) and the cache / online state.

`open_store(url)` picks the database by URL (SQLite or PostgreSQL);
`open_cache(url)` picks the cache (in-process memory or Redis).
"""

from sieve.storage.base import AppendResult, Store, StoreError, StoreUnavailable
from sieve.storage.cache import (
    Cache,
    CacheError,
    CacheUnavailable,
    MemoryCache,
    RedisCache,
    open_cache,
)
from sieve.storage.opening import open_store
from sieve.storage.sql import SQLStore
from sieve.storage.sql_bulk import EventColumns, ImportCheckpoint

__all__ = [
    "AppendResult",
    "Cache",
    "CacheError",
    "CacheUnavailable",
    "EventColumns",
    "ImportCheckpoint",
    "MemoryCache",
    "RedisCache",
    "SQLStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_cache",
    "open_store",
]
