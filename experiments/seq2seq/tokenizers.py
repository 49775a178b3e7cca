"""Word-level and SentencePiece tokenizers behind one small interface, saved with a run.

Both map text to ids without BOS/EOS and reserve ids 0, 1, 2, 3 for PAD, BOS, EOS and UNK.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
import tempfile
from collections.abc import Iterable, Sequence
from typing import Literal

import sentencepiece

from experiments.seq2seq.tokens import BOS_ID, EOS_ID, NUM_RESERVED_IDS, PAD_ID, UNK_ID

UNK_TOKEN = "<unk>"

WORD_VOCABULARY_FILE = "word_vocabulary.json"
SENTENCEPIECE_FILE = "sentencepiece.model"

ModelType = Literal["unigram", "bpe"]
Side = Literal["both", "source", "target"]

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


def _content_ids(ids: Sequence[int]) -> list[int]:
    """`ids` cut at the first EOS, without PAD and BOS."""
    content = []
    for token_id in ids:
        token_id = int(token_id)
        if token_id == EOS_ID:
            break
        if token_id not in (PAD_ID, BOS_ID):
            content.append(token_id)
    return content


class WordTokenizer:
    """Whitespace-separated words; ids from 4 follow the sorted word list, unknown words are 3."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self._word_to_id = {word: NUM_RESERVED_IDS + index for index, word in enumerate(self.words)}
        assert len(self._word_to_id) == len(self.words), "words must be distinct"
        self.vocab_size = NUM_RESERVED_IDS + len(self.words)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> WordTokenizer:
        """The vocabulary of every word in `texts`, sorted so that ids do not depend on order."""
        return cls(sorted({word for text in texts for word in text.split()}))

    def encode(self, text: str) -> list[int]:
        return [self._word_to_id.get(word, UNK_ID) for word in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(
            UNK_TOKEN if token_id == UNK_ID else self.words[token_id - NUM_RESERVED_IDS]
            for token_id in _content_ids(ids)
        )

    def save(self, directory: str | os.PathLike) -> None:
        path = pathlib.Path(directory) / WORD_VOCABULARY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"words": self.words}, ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordTokenizer:
        return cls(json.loads(pathlib.Path(path).read_text())["words"])


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
        return self._processor.decode(_content_ids(ids))

    def save(self, directory: str | os.PathLike) -> None:
        path = pathlib.Path(directory) / SENTENCEPIECE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, self.model_proto)


def load_tokenizer(directory: str | os.PathLike) -> WordTokenizer | SentencePieceTokenizer:
    """The tokenizer that `save(directory)` wrote."""
    word_path = pathlib.Path(directory) / WORD_VOCABULARY_FILE
    sentencepiece_path = pathlib.Path(directory) / SENTENCEPIECE_FILE
    if word_path.exists() and sentencepiece_path.exists():
        raise ValueError(
            f"{directory} holds both {WORD_VOCABULARY_FILE} and {SENTENCEPIECE_FILE}; "
            "delete the one that this run does not use."
        )
    if word_path.exists():
        return WordTokenizer.load(word_path)
    if sentencepiece_path.exists():
        return SentencePieceTokenizer.from_file(sentencepiece_path)
    raise FileNotFoundError(
        f"No tokenizer in {directory} (looked for {WORD_VOCABULARY_FILE} and "
        f"{SENTENCEPIECE_FILE}); save one there with tokenizer.save({str(directory)!r})."
    )


def training_texts(pairs: Iterable[tuple[str, str]], side: Side = "both") -> list[str]:
    """The texts to learn a vocabulary from: sources then targets for a shared one, or one side."""
    pairs = list(pairs)
    if side not in ("both", "source", "target"):
        raise ValueError(f"Unknown side {side!r}; use 'both', 'source' or 'target'.")
    sources = [source for source, _ in pairs] if side in ("both", "source") else []
    targets = [target for _, target in pairs] if side in ("both", "target") else []
    return sources + targets


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


def _write_atomically(path: pathlib.Path, content: bytes) -> None:
    # Runs sharing a cache may write the same file at once; a rename never leaves half a file.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial", delete=False) as file:
        file.write(content)
    os.replace(file.name, path)
