"""Word-level and SentencePiece tokenizers behind one small interface, saved with a run.

Both map text to ids without BOS/EOS and reserve ids 0, 1, 2, 3 for PAD, BOS, EOS and UNK;
SentencePiece itself lives in `research.core.text`, shared with language modeling.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Literal

from research.core.text import (
    NUM_RESERVED_IDS,
    SENTENCEPIECE_FILE,
    UNK_ID,
    SentencePieceTokenizer,
    content_ids,
)

UNK_TOKEN = "<unk>"

WORD_VOCABULARY_FILE = "word_vocabulary.json"

Side = Literal["both", "source", "target"]


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
            for token_id in content_ids(ids)
        )

    def save(self, directory: str | os.PathLike) -> None:
        path = pathlib.Path(directory) / WORD_VOCABULARY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"words": self.words}, ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordTokenizer:
        return cls(json.loads(pathlib.Path(path).read_text())["words"])


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
