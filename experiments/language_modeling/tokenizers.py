"""Character, byte and SentencePiece tokenizers of lines of text, saved with a run.

All reserve ids 0-3 for PAD, BOS, EOS and UNK; EOS ends every line, so a token stream stands
for the text with its newlines and `decode_text(encode_text(text)) == text`.
"""

from __future__ import annotations

import json
import os
import pathlib
import string
from collections.abc import Iterable, Sequence

from research.core.text import (
    BOS_ID,
    EOS_ID,
    NUM_RESERVED_IDS,
    PAD_ID,
    SENTENCEPIECE_FILE,
    UNK_ID,
    SentencePieceTokenizer,
)

CHARACTERS_FILE = "characters.json"
BYTES_FILE = "bytes.json"
ALWAYS_INCLUDED = string.printable.removesuffix("\n\r\x0b\x0c")  # ends " \t\n\r\x0b\x0c"


class CharacterTokenizer:
    """Printable ASCII and the characters of the training text, sorted, from id 4; other
    characters are UNK. ASCII is always in, so a model fine-tuned on other English text
    keeps the vocabulary it was pretrained with."""

    def __init__(self, characters: Sequence[str]):
        self.characters = list(characters)
        self._ids = {c: NUM_RESERVED_IDS + i for i, c in enumerate(self.characters)}
        assert len(self._ids) == len(self.characters) and "\n" not in self._ids
        self.vocab_size = NUM_RESERVED_IDS + len(self.characters)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> CharacterTokenizer:
        return cls(sorted(set(ALWAYS_INCLUDED).union(*map(set, lines))))

    def encode(self, line: str) -> list[int]:
        return [self._ids.get(character, UNK_ID) for character in line]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(
            "\ufffd" if i == UNK_ID else self.characters[i - NUM_RESERVED_IDS]
            for i in ids
            if i >= NUM_RESERVED_IDS or i == UNK_ID
        )

    def save(self, directory: str | os.PathLike) -> None:
        path = pathlib.Path(directory) / CHARACTERS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"characters": self.characters}, ensure_ascii=False) + "\n")


class ByteTokenizer:
    """UTF-8 bytes: byte b is id 4 + b; every text is covered, no training needed."""

    vocab_size = NUM_RESERVED_IDS + 256

    def encode(self, line: str) -> list[int]:
        return [NUM_RESERVED_IDS + byte for byte in line.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        content = bytes(i - NUM_RESERVED_IDS for i in ids if i >= NUM_RESERVED_IDS)
        return content.decode("utf-8", errors="replace")

    def save(self, directory: str | os.PathLike) -> None:
        path = pathlib.Path(directory) / BYTES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"type": "bytes"}) + "\n")


Tokenizer = CharacterTokenizer | ByteTokenizer | SentencePieceTokenizer


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer that `save(directory)` wrote."""
    folder = pathlib.Path(os.path.expanduser(directory))
    if (folder / CHARACTERS_FILE).exists():
        characters = json.loads((folder / CHARACTERS_FILE).read_text())["characters"]
        return CharacterTokenizer(characters)
    if (folder / BYTES_FILE).exists():
        return ByteTokenizer()
    if (folder / SENTENCEPIECE_FILE).exists():
        return SentencePieceTokenizer.from_file(folder / SENTENCEPIECE_FILE)
    raise FileNotFoundError(
        f"No tokenizer in {folder} (looked for {CHARACTERS_FILE}, {BYTES_FILE} and "
        f"{SENTENCEPIECE_FILE}); pass the artifacts/tokenizer folder of a run."
    )


def encode_text(tokenizer: Tokenizer, lines: Sequence[str]) -> list[int]:
    """The token stream of `lines`: each line's ids followed by EOS (its newline)."""
    stream: list[int] = []
    for line in lines:
        stream.extend(tokenizer.encode(line))
        stream.append(EOS_ID)
    return stream


def decode_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """Text of a token stream: EOS becomes a newline; PAD and BOS are dropped."""
    lines, current = [], []
    for token_id in map(int, ids):
        if token_id == EOS_ID:
            lines.append(current)
            current = []
        elif token_id not in (PAD_ID, BOS_ID):
            current.append(token_id)
    return "\n".join(tokenizer.decode(line) for line in [*lines, current])
