"""The response cache on its own (serving/response_cache.py): LRU within a byte bound, keys, copies."""

from __future__ import annotations

import numpy as np

from serving.response_cache import ENTRY_OVERHEAD_BYTES, ResponseCache, key_of


def _entry(value: float, dim: int = 16) -> tuple[np.ndarray, int, bool]:
    return np.full(dim, value, dtype=np.float32), 3, False


def test_entries_are_evicted_least_recently_used_first_within_the_byte_bound() -> None:
    size = 1 + 16 * 4 + ENTRY_OVERHEAD_BYTES  # a one-character key and a 16-float row
    cache = ResponseCache(max_bytes=3 * size, fingerprint="f")
    for key in "abc":
        cache.put(key, _entry(ord(key)))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", _entry(4.0))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("d") is not None
    assert (len(cache), cache.bytes, cache.evictions) == (3, 3 * size, 1)
    assert cache.bytes <= cache.max_bytes


def test_an_entry_larger_than_the_cache_is_not_kept_and_zero_disables_it() -> None:
    cache = ResponseCache(max_bytes=100, fingerprint="f")
    cache.put("big", _entry(1.0, dim=1000))
    assert len(cache) == 0 and cache.bytes == 0
    off = ResponseCache(max_bytes=0, fingerprint="f")
    off.put("a", _entry(1.0))
    assert off.get("a") is None


def test_stored_rows_are_copies_and_resizing_evicts() -> None:
    batch_output = np.ones((2, 16), dtype=np.float32)
    cache = ResponseCache(max_bytes=10_000, fingerprint="f")
    cache.put("a", (batch_output[0], 1, False))
    batch_output[0] = 0.0  # the batch's array is reused or freed later; the cache must not see it change
    cached = cache.get("a")
    assert cached is not None and np.array_equal(cached[0], np.ones(16, dtype=np.float32))
    cache.put("b", _entry(2.0))
    cache.resize(0)
    assert (len(cache), cache.bytes) == (0, 0)


def test_keys_tell_texts_and_tensors_apart() -> None:
    assert key_of("same") == key_of("same") and key_of("same") != key_of("same ")
    a = np.zeros((2, 2), dtype=np.float32)
    assert key_of(a) == key_of(a.copy())
    assert key_of(a) != key_of(a.reshape(4)) and key_of(a) != key_of(a.astype(np.float64))
