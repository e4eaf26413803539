"""A per-model cache of results by input, checked before batching: repeated inputs (health probes, popular
queries, retried requests) cost a dictionary lookup instead of a model call.

Each :class:`~serving.replica.ModelRunner` owns one, made when it loads its package, so an entry can never cross
packages, and a package change or redeploy (new replica, new runner) starts empty. The key is the input text
itself (or a tensor's bytes); everything else that shapes the result (weights, pooling, normalization,
truncation) is fixed per package, and :attr:`ResponseCache.fingerprint` (the model files' sha256 and those
options) says which package a cache belongs to. Bounded by bytes, least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

# Per entry, besides the key's and the row's bytes: the OrderedDict node, the tuple, the ints (measured ≈ 200).
ENTRY_OVERHEAD_BYTES = 200
Entry = tuple[np.ndarray, int, bool]  # (output row, tokens, truncated), as the batcher returns them


def key_of(item: Any) -> str | bytes:
    """The cache key of one input: the text; for a (query, document) pair, both texts after the query's length (so
    no two pairs share a key); or a tensor's dtype, shape and bytes."""
    if isinstance(item, str):
        return item
    if isinstance(item, tuple):
        query, document = item
        return f"\x00{len(query)}:{query}{document}"
    array = np.ascontiguousarray(item)
    return f"{array.dtype}{array.shape}".encode() + array.tobytes()


class ResponseCache:
    """LRU over entries, at most ``max_bytes`` in all (0 disables it)."""

    def __init__(self, max_bytes: int, fingerprint: str) -> None:
        self.max_bytes = max_bytes
        self.fingerprint = fingerprint
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[str | bytes, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str | bytes) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str | bytes, entry: Entry) -> None:
        if self.max_bytes <= 0 or key in self._entries:
            return
        size = _size(key, entry)
        if size > self.max_bytes:
            return
        self._entries[key] = (entry[0].copy(), entry[1], entry[2])  # not a view into a batch's output array
        self.bytes += size
        while self.bytes > self.max_bytes:
            old_key, old = self._entries.popitem(last=False)
            self.bytes -= _size(old_key, old)
            self.evictions += 1

    def resize(self, max_bytes: int) -> None:
        """Change the bound; entries past it are evicted (all of them for 0)."""
        self.max_bytes = max_bytes
        while self._entries and self.bytes > max(max_bytes, 0):
            old_key, old = self._entries.popitem(last=False)
            self.bytes -= _size(old_key, old)
            self.evictions += 1


def _size(key: str | bytes, entry: Entry) -> int:
    key_bytes = len(key.encode()) if isinstance(key, str) else len(key)
    return key_bytes + int(entry[0].nbytes) + ENTRY_OVERHEAD_BYTES
