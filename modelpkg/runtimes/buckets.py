"""Shape buckets for captured CUDA graphs: a graph replays one fixed shape, so each model call is padded up to
the smallest (batch, sequence) bucket that holds it. Padding rows are all padding (masked out, their outputs
dropped) and padding columns are masked, so a bucketed call returns what the unpadded call returns."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from modelpkg.manifest import BATCH_BUCKETS, SEQUENCE_BUCKETS
from modelpkg.tokenizer import EncodedBatch


@dataclass(frozen=True)
class ShapeBuckets:
    batch: tuple[int, ...] = BATCH_BUCKETS
    sequence: tuple[int, ...] = SEQUENCE_BUCKETS

    def __post_init__(self) -> None:
        for name, sizes in (("batch", self.batch), ("sequence", self.sequence)):
            if not sizes or list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError(f"{name} buckets must be increasing positive sizes, got {sizes}")

    def bucket_for(self, rows: int, width: int) -> tuple[int, int] | None:
        """The smallest bucket holding a ``rows`` x ``width`` call, or None when it is larger than every bucket."""
        b = bisect.bisect_left(self.batch, rows)
        s = bisect.bisect_left(self.sequence, width)
        if b == len(self.batch) or s == len(self.sequence):
            return None
        return self.batch[b], self.sequence[s]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(b, s) for b in self.batch for s in self.sequence]


def pad_to(batch: EncodedBatch, rows: int, width: int, pad_token_id: int) -> EncodedBatch:
    """``batch`` padded to ``rows`` x ``width``: extra columns and rows are padding with a zero attention mask,
    except that each extra row attends to its first position, so that no row is empty (pooling divides by
    the number of attended tokens)."""
    have_rows, have_width = batch.input_ids.shape
    if have_rows > rows or have_width > width:
        raise ValueError(f"a {have_rows}x{have_width} batch does not fit a {rows}x{width} bucket")
    ids = np.full((rows, width), pad_token_id, dtype=np.int64)
    mask = np.zeros((rows, width), dtype=np.int64)
    types = np.zeros((rows, width), dtype=np.int64)
    ids[:have_rows, :have_width] = batch.input_ids
    mask[:have_rows, :have_width] = batch.attention_mask
    types[:have_rows, :have_width] = batch.token_type_ids
    mask[have_rows:, 0] = 1
    lengths = np.concatenate([batch.lengths, np.ones(rows - have_rows, dtype=np.int64)])
    return EncodedBatch(ids, mask, types, lengths)
