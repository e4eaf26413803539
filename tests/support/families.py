"""Tiny random-weight encoders of the families people serve (BERT, RoBERTa, XLM-RoBERTa, DistilBERT, MPNet), each
written as a sentence-transformers directory (an embedding model, or a cross-encoder reranker), built offline:
BERT and DistilBERT reuse the bundled MiniLM WordPiece tokenizer; RoBERTa (byte-level BPE), XLM-RoBERTa (Unigram,
SentencePiece-style) and MPNet (WordPiece with ``<s>``/``</s>``) get a small tokenizer trained on the built-in
corpus with the ``tokenizers`` library."""

from __future__ import annotations

import inspect
import json
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from corpus import load_split
from optimizers.source import bundled_model_dir

HIDDEN = 32
VOCAB = 600  # trained tokenizers: small, so the embedding matrix stays small
COMMON = {
    "hidden_size": HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "initializer_range": 0.2,  # wider than the default 0.02, so random pooled vectors differ clearly by input
}


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    config: dict[str, Any]
    tokenizer: str  # "minilm" or the kind trained here: "bpe", "unigram", "wordpiece"
    input_names: tuple[str, ...]


FAMILIES = {
    "bert": Family(
        "bert",
        "bert",
        {**COMMON, "vocab_size": 30522, "type_vocab_size": 2, "max_position_embeddings": 512, "pad_token_id": 0},
        "minilm",
        ("input_ids", "token_type_ids", "attention_mask"),
    ),
    "roberta": Family(
        "roberta",
        "roberta",
        {**COMMON, "vocab_size": VOCAB, "type_vocab_size": 1, "max_position_embeddings": 514, "pad_token_id": 1},
        "bpe",
        ("input_ids", "attention_mask"),
    ),
    "xlm-roberta": Family(
        "xlm-roberta",
        "xlm-roberta",
        {**COMMON, "vocab_size": VOCAB, "type_vocab_size": 1, "max_position_embeddings": 514, "pad_token_id": 1},
        "unigram",
        ("input_ids", "attention_mask"),
    ),
    "distilbert": Family(
        "distilbert",
        "distilbert",
        {
            "vocab_size": 30522,
            "dim": HIDDEN,
            "hidden_dim": 64,
            "n_layers": 2,
            "n_heads": 4,
            "max_position_embeddings": 512,
            "pad_token_id": 0,
            "initializer_range": 0.2,
        },
        "minilm",
        ("input_ids", "attention_mask"),
    ),
    "mpnet": Family(
        "mpnet",
        "mpnet",
        {**COMMON, "vocab_size": VOCAB, "max_position_embeddings": 514, "pad_token_id": 1},
        "wordpiece",
        ("input_ids", "attention_mask"),
    ),
}
PROMPTS = {"query": "query: ", "passage": "passage: "}
# The packages the chain builds once per test session (tests/conftest.py: family_chains): family -> pooling, every
# family and every pooling mode by at least one; xlm-roberta's model card names Matryoshka widths.
CHAIN_POOLING = {"bert": "mean", "roberta": "max", "distilbert": "mean", "xlm-roberta": "cls", "mpnet": "lasttoken"}
MATRYOSHKA = (32, 16, 8)
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in RoBERTa, XLM-R and MPNet


@cache
def _training_texts() -> tuple[str, ...]:
    return tuple(load_split("train")[:3000])


def _trained_tokenizer(kind: str) -> Any:
    """A fresh copy of :func:`_trained_tokenizer_json`'s tokenizer."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_trained_tokenizer_json(kind))


@cache
def _trained_tokenizer_json(kind: str) -> str:
    """A small tokenizer of ``kind`` trained on the corpus, wrapped as ``<s> text </s>`` like its family's."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer: Any = trainers.BpeTrainer(
            vocab_size=VOCAB, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    elif kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, unk_token="<unk>")
    else:
        tokenizer = Tokenizer(models.WordPiece(unk_token="<unk>"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=SPECIALS)
    tokenizer.train_from_iterator(_training_texts(), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return str(tokenizer.to_str())


def _save_tokenizer(family: Family, root: Path) -> None:
    """``tokenizer.json`` plus a ``tokenizer_config.json`` that transformers (and sentence-transformers) load."""
    from transformers import PreTrainedTokenizerFast

    if family.tokenizer == "minilm":
        shutil.copy2(bundled_model_dir() / "tokenizer.json", root / "tokenizer.json")
        fast = PreTrainedTokenizerFast(
            tokenizer_file=str(root / "tokenizer.json"),
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_input_names=list(family.input_names),
        )
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=_trained_tokenizer(family.tokenizer),
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            cls_token="<s>",
            sep_token="</s>",
            mask_token="<mask>",
            model_input_names=list(family.input_names),
        )
    fast.model_max_length = 128
    fast.save_pretrained(root)


def _write_sentence_transformers(root: Path, pooling: str, normalize: bool, prompts: dict[str, str]) -> None:
    """modules.json, 1_Pooling/config.json (legacy boolean keys, as most hub models have them), 2_Normalize,
    sentence_bert_config.json and config_sentence_transformers.json with ``prompts``."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (root / "2_Normalize").mkdir(exist_ok=True)
    (root / "modules.json").write_text(json.dumps(modules, indent=2))
    flags = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "lasttoken": "pooling_mode_lasttoken"}
    config = {"word_embedding_dimension": HIDDEN, **{flag: mode == pooling for mode, flag in flags.items()}}
    config |= {"pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps(config, indent=2))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    st_config = {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    (root / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))


def build_family(
    name: str,
    root: Path,
    pooling: str = "mean",
    normalize: bool = True,
    prompts: dict[str, str] | None = None,
    seed: int = 0,
    matryoshka_dims: tuple[int, ...] = (),
) -> Path:
    """Write a 2-layer, 32-wide random-weight ``name`` encoder with its tokenizer and sentence-transformers files
    to ``root`` (safetensors weights); with ``matryoshka_dims``, a model card naming them as
    sentence-transformers writes a MatryoshkaLoss's config."""
    import torch
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    family = FAMILIES[name]
    root.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.for_model(family.model_type, **family.config)
    torch.manual_seed(seed)
    model_class: Any = MODEL_MAPPING[type(config)]
    headless = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_class).parameters else {}
    model = model_class(config, **headless).eval()
    model.save_pretrained(root, safe_serialization=True)
    _save_tokenizer(family, root)
    _write_sentence_transformers(root, pooling, normalize, prompts or {})
    if matryoshka_dims:
        loss = {"loss": "MultipleNegativesRankingLoss", "matryoshka_dims": list(matryoshka_dims)}
        card = f"# {name}\n\n#### MatryoshkaLoss\n```json\n{json.dumps(loss, indent=4)}\n```\n"
        (root / "README.md").write_text(card)
    return root


def build_cross_encoder(name: str, root: Path, activation: str = "Sigmoid", seed: int = 0) -> Path:
    """Write a 2-layer, 32-wide random-weight ``name`` cross-encoder (a sequence classifier with one label) with
    its tokenizer to ``root``, saved by sentence-transformers' ``CrossEncoder`` with ``activation`` (a
    ``torch.nn`` class name) as its activation, as a reranker on the hub is."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoConfig, AutoModelForSequenceClassification

    family = FAMILIES[name]
    raw = root.with_name(root.name + ".hf")
    raw.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.for_model(family.model_type, **family.config, num_labels=1)
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(config).eval().save_pretrained(raw, safe_serialization=True)
    _save_tokenizer(family, raw)
    CrossEncoder(str(raw), activation_fn=getattr(torch.nn, activation)()).save_pretrained(str(root))
    shutil.rmtree(raw)
    return root
