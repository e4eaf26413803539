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


def test_the_cache_is_on_by_default_only_for_a_package_the_chain_measured_batch_invariant(
    tiny_optimized, tmp_path
) -> None:
    """The chain's number (``fidelity.batch_invariance``) decides: a package whose outputs move with their
    batch-mates (dynamic int8 on MiniLM: 0.983) gets no cache, one that moves by rounding the default; a configured
    size wins either way."""
    import shutil

    from modelpkg.package import read_manifest, write_package
    from serving.replica import DEFAULT_CACHE_MB, ModelRunner

    def claiming(invariance: float) -> str:
        root = shutil.copytree(tiny_optimized.root, tmp_path / str(invariance))
        manifest = read_manifest(root)
        assert manifest.fidelity is not None
        (root / "manifest.json").unlink()
        fidelity = manifest.fidelity.model_copy(update={"batch_invariance": invariance})
        return str(write_package(root, manifest.model_copy(update={"fidelity": fidelity})).root)

    dependent = ModelRunner(claiming(0.983), threads=1)
    assert dependent.cache.max_bytes == 0
    dependent.apply({"cache_mb": 1})
    assert dependent.cache.max_bytes == 2**20
    assert ModelRunner(claiming(0.99999), threads=1).cache.max_bytes == int(DEFAULT_CACHE_MB * 2**20)
