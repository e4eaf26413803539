"""Tokenization for text models, with the Rust ``tokenizers`` library (no transformers import)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from modelpkg.manifest import TokenizerSpec

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# One input of a text model: a text, or a (query, document) pair for a reranker, encoded as one sequence with the
# tokenizer's pair template (``[CLS] query [SEP] document [SEP]``), cut longest-first to the length limit.
TextItem = str | tuple[str, str]


def item_chars(item: TextItem) -> int:
    """Characters in a text, or in both texts of a pair."""
    return len(item) if isinstance(item, str) else len(item[0]) + len(item[1])


def model_input_names(config: Mapping[str, object]) -> tuple[str, ...]:
    """The text inputs a Hugging Face encoder takes, from its ``config.json``: ``token_type_ids`` only where the
    model has more than one token type (BERT, ELECTRA, ALBERT); RoBERTa, XLM-RoBERTa (one type), DistilBERT and
    MPNet (none) take ids and mask alone, as their tokenizers' ``model_input_names`` say."""
    types = config.get("type_vocab_size") or 0
    return TEXT_INPUTS if isinstance(types, int) and types > 1 else TEXT_INPUTS[:2]


@dataclass(frozen=True)
class EncodedBatch:
    """Padded int64 arrays for one model call, plus the real (unpadded) length of each row."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    lengths: np.ndarray

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)

    def feeds(self, accepted: Collection[str]) -> dict[str, np.ndarray]:
        """The arrays by input name, for the names a model takes (some models take no ``token_type_ids``)."""
        arrays = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }
        return {name: value for name, value in arrays.items() if name in accepted}


class TextEncoder:
    """Turns text into token ids, truncated to the model's maximum length."""

    def __init__(self, tokenizer_json: Path, max_length: int, pad_token_id: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)
        self.max_length = max_length
        self.pad_token_id = pad_token_id

    @classmethod
    def from_spec(cls, root: Path, spec: TokenizerSpec) -> TextEncoder:
        """The encoder a manifest's (or source model's) tokenizer spec describes; paths are relative to ``root``."""
        return cls(root / spec.path, spec.max_length, spec.pad_token_id)

    @property
    def special_tokens(self) -> int:
        """Tokens the tokenizer adds to every single text ([CLS] and [SEP] for BERT, <s> and </s> for RoBERTa)."""
        return int(self._tokenizer.num_special_tokens_to_add(False))

    def encode(self, texts: Sequence[TextItem]) -> list[Encoding]:
        return self._tokenizer.encode_batch(texts if isinstance(texts, list) else list(texts))

    def too_long(self, texts: Sequence[TextItem]) -> list[int]:
        """Indices of the texts longer than ``max_length`` tokens (which :meth:`encode` truncates)."""
        return [i for i, encoding in enumerate(self.encode(texts)) if encoding.overflowing]

    def pad(self, encodings: list[Encoding]) -> EncodedBatch:
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        width = int(lengths.max()) if len(encodings) else 0
        ids = np.full((len(encodings), width), self.pad_token_id, dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = lengths[row]
            ids[row, :n] = enc.ids
            types[row, :n] = enc.type_ids
            mask[row, :n] = 1
        return EncodedBatch(input_ids=ids, attention_mask=mask, token_type_ids=types, lengths=lengths)
