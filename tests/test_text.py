"""Text tools of both text tasks: UTF-8 lines read exactly, SentencePiece vocabularies trained
deterministically and cached, size and coverage checks, the reserved ids every task uses."""

import gzip
import pathlib
import re
from unittest import mock

import ml_collections
import numpy as np
import pytest
import sentencepiece

from experiments.language_modeling import task as lm_task
from experiments.language_modeling import tokenizers as lm_tokenizers
from experiments.seq2seq import task as seq2seq_task
from experiments.seq2seq import tokenizers as seq2seq_tokenizers
from research.core import text
from research.core.config import ConfigError
from research.core.text import BOS_ID, EOS_ID, NUM_RESERVED_IDS, PAD_ID, UNK_ID

MULTI30K = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"

# Stands in for Multi30k where it is absent: short German then English sentences in its style.
FIXTURE_SENTENCES = [
    "Ein Mann fährt Fahrrad auf einer Straße.",
    "Zwei Kinder spielen im Park.",
    "Eine Frau liest ein Buch im Café.",
    "Ein Hund rennt über eine grüne Wiese.",
    "Drei Männer stehen vor einem Gebäude.",
    "Ein Mädchen in einem roten Kleid tanzt.",
    "Ein Junge springt in einen See.",
    "Eine Gruppe von Leuten wartet auf den Bus.",
    "Ein Koch bereitet in der Küche Essen zu.",
    "Zwei Hunde spielen mit einem Ball.",
    "Ein älterer Mann sitzt auf einer Bank.",
    "Eine Frau mit Hut geht die Straße entlang.",
    "Kinder schwimmen im blauen Wasser.",
    "Ein Arbeiter repariert ein Dach.",
    "Ein Musiker spielt Gitarre auf der Bühne.",
    "Zwei Frauen unterhalten sich am Tisch.",
    "A man rides a bicycle on a street.",
    "Two children are playing in the park.",
    "A woman is reading a book in a cafe.",
    "A dog runs across a green meadow.",
    "Three men stand in front of a building.",
    "A girl in a red dress is dancing.",
    "A boy jumps into a lake.",
    "A group of people waits for the bus.",
    "A cook prepares food in the kitchen.",
    "Two dogs are playing with a ball.",
    "An older man is sitting on a bench.",
    "A woman with a hat walks down the street.",
    "Children swim in the blue water.",
    "A worker is repairing a roof.",
    "A musician plays guitar on the stage.",
    "Two women are talking at the table.",
]


@pytest.fixture(scope="module")
def sentencepiece_corpus() -> tuple[list[str], int]:
    """Training texts (German then English) and a vocabulary size they can support."""
    if MULTI30K.is_dir():
        german = text.read_lines(MULTI30K / "train.de.gz")[:2000]
        return german + text.read_lines(MULTI30K / "train.en.gz")[:2000], 1000
    return FIXTURE_SENTENCES, 150


def tokenizer_settings(cache_dir, **overrides) -> ml_collections.ConfigDict:
    """`config.tokenizer` as both text tasks' base configs define it."""
    settings = {
        "vocab_size": 150,
        "model_type": "unigram",
        "cache_dir": str(cache_dir),
        "max_training_sentences": 2_000_000,
        "character_coverage": 1.0,
    }
    return ml_collections.ConfigDict({**settings, **overrides})


# Reading lines.


def test_lines_lose_only_their_line_endings_in_plain_and_gzipped_files(tmp_path):
    content = b"caf\xc3\xa9\r\nstray\rcarriage return\nnext\xc2\x85line\n\nlast"
    (tmp_path / "plain.txt").write_bytes(content)
    (tmp_path / "packed.txt.gz").write_bytes(gzip.compress(content + b"\n"))
    expected = ["café", "stray\rcarriage return", "next\x85line", "", "last"]
    assert text.read_lines(tmp_path / "plain.txt") == expected
    assert text.read_lines(tmp_path / "packed.txt.gz") == expected


def test_a_line_that_is_not_utf8_is_named_by_file_and_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"ein hund\nzwei katzen\ncaf\xe9 au lait\n")
    with pytest.raises(ValueError) as error:
        text.read_lines(path)
    assert str(error.value) == (
        f"{path} line 3 is not UTF-8 text; convert the file to UTF-8 (for example with iconv) "
        "or remove that line."
    )
    packed = tmp_path / "train.de.gz"
    packed.write_bytes(gzip.compress(b"\xff\n"))
    with pytest.raises(ValueError, match=r"train\.de\.gz line 1 .* or delete it\.$"):
        text.read_lines(packed, "delete it")


# Reserved ids.


def test_both_text_tasks_pad_start_and_end_with_the_shared_ids():
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID, NUM_RESERVED_IDS) == (0, 1, 2, 3, 4)
    words = seq2seq_tokenizers.WordTokenizer.from_texts(["a b"])
    assert seq2seq_task._encode(["b a c"], words, 6).tolist() == [
        [NUM_RESERVED_IDS + 1, NUM_RESERVED_IDS, UNK_ID, EOS_ID, PAD_ID, PAD_ID]
    ]
    a = NUM_RESERVED_IDS + ord("a")
    windows = lm_task.windows(lm_tokenizers.ByteTokenizer(), ["a", "aa"], 4)
    np.testing.assert_array_equal(windows["inputs"], [[BOS_ID, a, EOS_ID, a], [a, EOS_ID, 0, 0]])
    np.testing.assert_array_equal(windows["targets"], [[a, EOS_ID, a, a], [EOS_ID, 0, 0, 0]])


def test_sentencepiece_reserves_the_shared_ids(tmp_path, sentencepiece_corpus):
    texts, vocab_size = sentencepiece_corpus
    tokenizer = text.train_or_load_sentencepiece(texts, vocab_size, "unigram", tmp_path)
    processor = sentencepiece.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    pieces = [processor.id_to_piece(i) for i in (PAD_ID, BOS_ID, EOS_ID, UNK_ID)]
    assert pieces == ["<pad>", "<s>", "</s>", "<unk>"]
    assert min(processor.encode(" ".join(texts[:50]))) >= NUM_RESERVED_IDS


# SentencePiece.


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_round_trips_sentences(tmp_path, sentencepiece_corpus, model_type):
    texts, vocab_size = sentencepiece_corpus
    tokenizer = text.train_or_load_sentencepiece(texts, vocab_size, model_type, tmp_path)
    assert tokenizer.vocab_size == vocab_size
    for sentence in texts[:500]:
        ids = tokenizer.encode(sentence)
        assert min(ids) >= NUM_RESERVED_IDS, "no special ids inside a sentence"
        assert tokenizer.decode(ids) == sentence
        padded = [BOS_ID, *ids, EOS_ID, 7, PAD_ID]
        assert tokenizer.decode(padded) == sentence


def test_sentencepiece_training_is_byte_identical_when_repeated(sentencepiece_corpus):
    texts, vocab_size = sentencepiece_corpus
    for model_type in ("unigram", "bpe"):
        first = text.train_sentencepiece(texts, vocab_size, model_type)
        second = text.train_sentencepiece(texts, vocab_size, model_type)
        assert first.model_proto == second.model_proto


def test_sentencepiece_cache_is_reused_without_retraining(tmp_path, sentencepiece_corpus):
    texts, vocab_size = sentencepiece_corpus
    trained = text.train_or_load_sentencepiece(texts, vocab_size, "bpe", tmp_path)
    (cached_file,) = tmp_path.glob("*.model")
    key = text.sentencepiece_cache_key(texts, vocab_size, "bpe")
    assert cached_file.name == f"{key}.model"
    modified = cached_file.stat().st_mtime_ns
    refuse = AssertionError("retrained although the model was cached")
    with mock.patch.object(sentencepiece.SentencePieceTrainer, "train", side_effect=refuse):
        loaded = text.train_or_load_sentencepiece(texts, vocab_size, "bpe", tmp_path)
    assert cached_file.stat().st_mtime_ns == modified
    assert loaded.model_proto == trained.model_proto
    # Any change to what is trained on is a different cache entry.
    assert text.sentencepiece_cache_key(texts[:-1], vocab_size, "bpe") != key
    assert text.sentencepiece_cache_key(texts, vocab_size - 1, "bpe") != key
    assert text.sentencepiece_cache_key(texts, vocab_size, "unigram") != key
    assert text.sentencepiece_cache_key(texts, vocab_size, "bpe", 0.9995) != key


def test_a_saved_sentencepiece_tokenizer_loads_identically_in_both_tasks(
    tmp_path, sentencepiece_corpus
):
    texts, vocab_size = sentencepiece_corpus
    tokenizer = text.train_or_load_sentencepiece(texts, vocab_size, "unigram", tmp_path / "cache")
    tokenizer.save(tmp_path / "artifacts")
    assert (tmp_path / "artifacts" / text.SENTENCEPIECE_FILE).read_bytes() == tokenizer.model_proto
    for load in (seq2seq_tokenizers.load_tokenizer, lm_tokenizers.load_tokenizer):
        loaded = load(tmp_path / "artifacts")
        assert isinstance(loaded, text.SentencePieceTokenizer)
        assert loaded.model_proto == tokenizer.model_proto
        assert [loaded.encode(s) for s in texts[:200]] == [tokenizer.encode(s) for s in texts[:200]]


def test_sentencepiece_vocabulary_too_large_names_the_key_and_the_largest_that_works(tmp_path):
    texts = ["ein hund läuft im park", "eine katze schläft", "zwei kinder spielen"] * 3
    with pytest.raises(ValueError, match=r"--config\.tokenizer\.vocab_size=5000") as error:
        text.train_or_load_sentencepiece(texts, 5000, "unigram", tmp_path)
    largest = int(re.search(r"set it to (\d+) or less", str(error.value)).group(1))
    assert text.train_sentencepiece(texts, largest, "unigram").vocab_size == largest
    assert not list(tmp_path.iterdir()), "a failed training caches nothing"


def test_character_coverage_below_one_leaves_a_rare_character_unknown():
    texts = FIXTURE_SENTENCES * 10 + ["Ein Bœuf."]  # "œ" is 1 of about 11,000 characters
    covered = text.train_sentencepiece(texts, 150, "unigram", character_coverage=1.0)
    assert UNK_ID not in covered.encode("Bœuf")
    assert covered.decode(covered.encode("Bœuf")) == "Bœuf"
    uncovered = text.train_sentencepiece(texts, 150, "unigram", character_coverage=0.9995)
    assert UNK_ID in uncovered.encode("Bœuf")


def test_the_config_trains_on_its_first_sentences_and_caches_under_the_users_home(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = tokenizer_settings("~/cache", max_training_sentences=20, model_type="bpe")
    tokenizer = text.sentencepiece_from_config(iter(FIXTURE_SENTENCES), settings)
    key = text.sentencepiece_cache_key(FIXTURE_SENTENCES[:20], 150, "bpe")
    assert (tmp_path / "cache" / f"{key}.model").read_bytes() == tokenizer.model_proto
    assert (
        tokenizer.model_proto
        == text.train_sentencepiece(FIXTURE_SENTENCES[:20], 150, "bpe").model_proto
    )


def test_a_vocabulary_the_text_cannot_support_is_a_config_error_naming_the_size_that_works(
    tmp_path,
):
    texts = ["ein hund läuft im park", "eine katze schläft", "zwei kinder spielen"] * 3
    with pytest.raises(ConfigError, match=r"vocab_size=5000 .* set it to \d+ or less\.$"):
        text.sentencepiece_from_config(texts, tokenizer_settings(tmp_path, vocab_size=5000))
    with pytest.raises(ConfigError, match=r"model_type 'wordpiece'; use 'unigram' or 'bpe'"):
        text.sentencepiece_from_config(texts, tokenizer_settings(tmp_path, model_type="wordpiece"))
