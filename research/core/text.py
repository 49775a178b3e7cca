"""Text tools of every text task: the reserved token ids, the UTF-8 lines of a file, and a
SentencePiece vocabulary trained (and cached) deterministically with coverage and size checks."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pathlib
import re
import tempfile
from collections.abc import Sequence
from typing import Literal

import ml_collections
import sentencepiece

from research.core.config import ConfigError

# Every tokenizer, model, decoder and exported model of a text task agrees on these ids.
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
NUM_RESERVED_IDS = 4

SENTENCEPIECE_FILE = "sentencepiece.model"

ModelType = Literal["unigram", "bpe"]

# Bump when the training options below change, so that old cache entries are not reused.
_CACHE_FORMAT = 1
_TRAINER_OPTIONS = {
    "pad_id": PAD_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "unk_id": UNK_ID,
    # The learned model depends on the thread count, so fix it for machine-independent results.
    "num_threads": 1,
    # Read sentences in the given order rather than through SentencePiece's own shuffle.
    "shuffle_input_sentence": False,
    # Identity normalisation keeping every space makes decode(encode(text)) == text, so that
    # hypotheses are scored against references exactly as written.
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "minloglevel": 2,
}


def read_lines(path: pathlib.Path, fix: str = "remove that line") -> list[str]:
    """Lines of a UTF-8 text file, gzipped if its name ends in .gz, without line endings.

    `fix` ends the message of a line that is not UTF-8.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        raw = file.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path} line {line} is not UTF-8 text; convert the file to UTF-8 (for example "
            f"with iconv) or {fix}."
        ) from None
    # Split on "\n" alone: text mode would also split on a stray "\r" or "\x85" inside a sentence
    # and so shift one side against the other.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def content_ids(ids: Sequence[int]) -> list[int]:
    """`ids` cut at the first EOS, without PAD and BOS."""
    content = []
    for token_id in ids:
        token_id = int(token_id)
        if token_id == EOS_ID:
            break
        if token_id not in (PAD_ID, BOS_ID):
            content.append(token_id)
    return content


class SentencePieceTokenizer:
    """A trained SentencePiece model (unigram or BPE) with PAD/BOS/EOS/UNK at ids 0-3."""

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self._processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        processor = self._processor
        reserved = (processor.pad_id(), processor.bos_id(), processor.eos_id(), processor.unk_id())
        assert reserved == (PAD_ID, BOS_ID, EOS_ID, UNK_ID), reserved
        self.vocab_size = self._processor.get_piece_size()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        return cls(pathlib.Path(path).read_bytes())

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        return self._processor.decode(content_ids(ids))

    def save(self, directory: str | os.PathLike) -> None:
        path = pathlib.Path(directory) / SENTENCEPIECE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, self.model_proto)


def sentencepiece_cache_key(
    texts: Sequence[str], vocab_size: int, model_type: ModelType, character_coverage: float = 1.0
) -> str:
    """SHA-256 over everything that determines the trained model."""
    digest = hashlib.sha256()
    settings = {
        "cache_format": _CACHE_FORMAT,
        "vocab_size": vocab_size,
        "model_type": model_type,
        "character_coverage": character_coverage,
        "sentencepiece_version": sentencepiece.__version__,
        "trainer_options": _TRAINER_OPTIONS,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        encoded = text.encode("utf-8")
        # Length prefixes keep ["ab", "c"] and ["a", "bc"] apart.
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def train_sentencepiece(
    texts: Sequence[str], vocab_size: int, model_type: ModelType, character_coverage: float = 1.0
) -> SentencePieceTokenizer:
    """Train a SentencePiece model on `texts`; deterministic for the same arguments."""
    if model_type not in ("unigram", "bpe"):
        raise ValueError(
            f"Unknown SentencePiece model_type {model_type!r}; use 'unigram' or 'bpe'."
        )
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            **_TRAINER_OPTIONS,
        )
    except RuntimeError as error:
        largest = re.search(r"value <= (\d+)", str(error))
        if largest:
            raise ValueError(
                f"--config.tokenizer.vocab_size={vocab_size} is more than SentencePiece can "
                f"learn from these {len(texts)} texts; set it to {largest.group(1)} or less."
            ) from None
        raise ValueError(
            f"SentencePiece cannot learn {vocab_size} pieces from {len(texts)} texts "
            f"({str(error).strip().splitlines()[0]}); change --config.tokenizer.vocab_size or "
            "train on more text."
        ) from None
    return SentencePieceTokenizer(model.getvalue())


def train_or_load_sentencepiece(
    texts: Sequence[str],
    vocab_size: int,
    model_type: ModelType,
    cache_dir: str | os.PathLike,
    *,
    character_coverage: float = 1.0,
) -> SentencePieceTokenizer:
    """Load `<cache_dir>/<hash>.model` if an identical training was cached, else train and cache.

    For very large corpora (WMT) pass a subsample of the texts: all of them are held in memory.
    """
    key = sentencepiece_cache_key(texts, vocab_size, model_type, character_coverage)
    path = pathlib.Path(cache_dir) / f"{key}.model"
    if path.exists():
        return SentencePieceTokenizer.from_file(path)
    tokenizer = train_sentencepiece(texts, vocab_size, model_type, character_coverage)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, tokenizer.model_proto)
    return tokenizer


def sentencepiece_from_config(
    texts: Sequence[str], settings: ml_collections.ConfigDict
) -> SentencePieceTokenizer:
    """The vocabulary `config.tokenizer` asks for (`vocab_size`, `model_type`,
    `character_coverage`, `cache_dir`), learned from its first `max_training_sentences` texts.

    A vocabulary the texts cannot support is a ConfigError naming the largest size that works.
    """
    try:
        return train_or_load_sentencepiece(
            list(texts)[: settings.max_training_sentences],
            settings.vocab_size,
            settings.model_type,
            os.path.expanduser(settings.cache_dir),
            character_coverage=settings.character_coverage,
        )
    except ValueError as error:  # the message names the setting to change
        raise ConfigError(str(error)) from None


def _write_atomically(path: pathlib.Path, content: bytes) -> None:
    # Runs sharing a cache may write the same file at once; a rename never leaves half a file.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial", delete=False) as file:
        file.write(content)
    os.replace(file.name, path)
