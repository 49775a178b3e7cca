"""Seq2seq data: word tokenizers round-trip, corpora read exactly, metrics match sacreBLEU
(SentencePiece is tested with the shared text tools in test_text.py)."""

import gzip
import pathlib
import time
from unittest import mock

import pytest
import sacrebleu

from experiments.seq2seq import corpora, metrics, scan, tokenizers
from research.core.text import BOS_ID, EOS_ID, NUM_RESERVED_IDS, PAD_ID, UNK_ID

MULTI30K = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"
needs_multi30k = pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"Multi30k is not at {MULTI30K}")


def write_lines(path: pathlib.Path, lines: list[str]) -> None:
    content = "".join(f"{line}\n" for line in lines).encode("utf-8")
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)


# Tokenizers.


def test_word_tokenizer_round_trips_every_scan_sentence():
    split = scan.load_split("simple")
    tokenizer = tokenizers.WordTokenizer.from_texts(tokenizers.training_texts(split["train"]))
    assert tokenizer.words == sorted(tokenizer.words)
    assert tokenizer.vocab_size == NUM_RESERVED_IDS + len(tokenizer.words)
    for command, actions in split["train"] + split["test"]:
        for text in (command, actions):
            ids = tokenizer.encode(text)
            assert min(ids) >= NUM_RESERVED_IDS
            assert tokenizer.decode(ids) == text


def test_word_tokenizer_maps_unknown_words_to_unk_and_decode_stops_at_eos():
    tokenizer = tokenizers.WordTokenizer.from_texts(["walk left", "jump"])
    # Sorted words: jump=4, left=5, walk=6.
    assert tokenizer.encode("walk fly left") == [6, UNK_ID, 5]
    ids = [BOS_ID, 6, PAD_ID, 4, EOS_ID, 5, PAD_ID]
    assert tokenizer.decode(ids) == "walk jump"
    assert tokenizer.decode([UNK_ID]) == tokenizers.UNK_TOKEN


def test_saved_word_tokenizer_loads_identically(tmp_path):
    tokenizer = tokenizers.WordTokenizer.from_texts(["turn left twice", "I_TURN_LEFT I_WALK"])
    tokenizer.save(tmp_path)
    loaded = tokenizers.load_tokenizer(tmp_path)
    assert isinstance(loaded, tokenizers.WordTokenizer)
    assert loaded.words == tokenizer.words
    assert loaded.encode("turn left I_WALK x") == tokenizer.encode("turn left I_WALK x")


def test_training_texts_takes_both_sides_or_one():
    pairs = [("a b", "x"), ("c", "y z")]
    assert tokenizers.training_texts(pairs) == ["a b", "c", "x", "y z"]
    assert tokenizers.training_texts(pairs, "source") == ["a b", "c"]
    assert tokenizers.training_texts(pairs, "target") == ["x", "y z"]


def test_loading_a_tokenizer_from_an_empty_directory_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="word_vocabulary.json and sentencepiece.model"):
        tokenizers.load_tokenizer(tmp_path)


# Corpora.


def test_folder_reader_reads_plain_and_gzipped_files_into_named_splits(tmp_path):
    write_lines(tmp_path / "train.de", ["Ein Hund.", "  Zwei  Katzen. "])
    write_lines(tmp_path / "train.en.gz", ["A dog.", "  Two  cats. "])
    write_lines(tmp_path / "val.de.gz", ["Hallo."])
    write_lines(tmp_path / "val.en", ["Hello."])
    write_lines(tmp_path / "test_2016_flickr.de.gz", ["Ja.", ""])
    write_lines(tmp_path / "test_2016_flickr.en.gz", ["Yes.", ""])
    # Windows line endings are stripped too, and files of other languages are ignored.
    (tmp_path / "test_2017_flickr.de").write_bytes(b"Nein.\r\n")
    (tmp_path / "test_2017_flickr.en").write_bytes(b"No.\r\n")
    write_lines(tmp_path / "test_2018_flickr.fr", ["Oui."])
    write_lines(tmp_path / "README", ["not a split"])
    splits = corpora.read_parallel_folder(tmp_path, "de", "en")
    assert splits == {
        "train": [("Ein Hund.", "A dog."), ("  Zwei  Katzen. ", "  Two  cats. ")],
        "valid": [("Hallo.", "Hello.")],
        "test_2016_flickr": [("Ja.", "Yes."), ("", "")],
        "test_2017_flickr": [("Nein.", "No.")],
    }
    assert corpora.read_parallel_folder(tmp_path, "en", "de")["train"][0] == ("A dog.", "Ein Hund.")


def test_folder_reader_refuses_sides_of_different_lengths(tmp_path):
    write_lines(tmp_path / "train.de", ["a", "b", "c"])
    write_lines(tmp_path / "train.en", ["x", "y"])
    with pytest.raises(ValueError, match=r"train\.de has 3 lines but .*train\.en has 2"):
        corpora.read_parallel_folder(tmp_path, "de", "en")


def test_folder_reader_names_the_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist; prepare .*train\.de\[\.gz\]"):
        corpora.read_parallel_folder(tmp_path / "nowhere", "de", "en")
    write_lines(tmp_path / "train.de", ["a"])
    with pytest.raises(FileNotFoundError, match=r"lacks .*train\.en\[\.gz\]"):
        corpora.read_parallel_folder(tmp_path, "de", "en")


@needs_multi30k
def test_multi30k_folder_has_the_published_split_sizes():
    splits = corpora.read_parallel_folder(MULTI30K, "de", "en")
    sizes = {name: len(pairs) for name, pairs in splits.items()}
    assert sizes == {
        "train": 29_000,
        "valid": 1_014,
        "test_2016_flickr": 1_000,
        "test_2017_flickr": 1_000,
    }
    assert splits["train"][0] == (
        "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
        "Two young, White males are outside near many bushes.",
    )


def test_wmt_that_is_not_prepared_is_refused_quickly_without_network(tmp_path):
    network = AssertionError("read_wmt tried to reach the network")
    started = time.monotonic()
    with (
        mock.patch("socket.socket.connect", side_effect=network),
        pytest.raises(
            FileNotFoundError, match=r"wmt14_translate/de-en is not prepared in .*tfds build"
        ),
    ):
        corpora.read_wmt("wmt14_translate/de-en", tmp_path, "de", "en")
    assert time.monotonic() - started < 20


def test_wmt_reader_returns_train_valid_test_pairs_from_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    mock_data = tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE)
    # mock_data replaces reading but not the prepared-on-disk check.
    prepared = mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True)
    with mock_data, prepared:
        splits = corpora.read_wmt("wmt17_translate/de-en", tmp_path, "en", "de")
    assert list(splits) == ["train", "valid", "test"]
    for pairs in splits.values():
        assert len(pairs) == 3
        assert all(isinstance(text, str) for pair in pairs for text in pair)


# Metrics.

HYPOTHESES = [
    "A man rides a bike down the street.",
    "Two kids play in a park.",
    "The woman is reading a book.",
    "A dog runs across a green meadow.",
]
REFERENCES = [
    "A man rides a bicycle on a street.",
    "Two children are playing in the park.",
    "A woman is reading a book in a cafe.",
    "A dog runs across a green meadow.",
]


def test_corpus_bleu_is_sacrebleu_over_the_whole_set():
    score, signature = metrics.corpus_bleu(HYPOTHESES, REFERENCES)
    assert score == sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score
    assert 0.0 < score < 100.0
    assert "nrefs:1" in signature and "tok:13a" in signature
    assert f"version:{sacrebleu.__version__}" in signature


def test_lowercase_corpus_bleu_is_sacrebleus_case_insensitive_score():
    shouted = [hypothesis.upper() for hypothesis in HYPOTHESES]
    score, signature = metrics.corpus_bleu(shouted, REFERENCES, lowercase=True)
    assert score == sacrebleu.corpus_bleu(shouted, [REFERENCES], lowercase=True).score
    assert "case:lc" in signature
    assert metrics.corpus_bleu(shouted, REFERENCES)[0] < score


def test_corpus_bleu_is_100_for_identical_text_and_0_without_shared_words():
    assert metrics.corpus_bleu(REFERENCES, REFERENCES)[0] == pytest.approx(100.0)
    assert metrics.corpus_bleu(["alpha beta gamma delta"], ["one two three four"])[0] == 0.0


def test_exact_match_counts_identical_strings():
    assert metrics.exact_match(HYPOTHESES, REFERENCES) == 0.25
    assert metrics.exact_match(["walk", "jump"], ["walk", "jump"]) == 1.0
    # Case and spacing count: a near miss is a miss.
    assert metrics.exact_match(["Walk", "jump "], ["walk", "jump"]) == 0.0


def test_chinese_targets_are_scored_with_sacrebleus_zh_tokenizer():
    assert metrics.bleu_tokenizer_for("zh") == "zh"
    assert metrics.bleu_tokenizer_for("zh-Hans") == "zh"
    assert metrics.bleu_tokenizer_for("en") == "13a"
    assert metrics.bleu_tokenizer_for("zh", override="char") == "char"
    # Unsegmented Chinese is one 13a token per sentence, so a near miss scores zero; zh splits
    # the characters and credits the shared ones.
    hypotheses, references = ["我喜欢猫。"], ["我喜欢狗。"]
    assert metrics.corpus_bleu(hypotheses, references, tokenize="13a")[0] == 0.0
    score, signature = metrics.corpus_bleu(hypotheses, references, tokenize="zh")
    expected = sacrebleu.corpus_bleu(hypotheses, [references], tokenize="zh").score
    assert score == expected > 0.0 and "tok:zh" in signature


def test_unknown_bleu_tokenizer_names_the_config_key():
    with pytest.raises(ValueError, match="bleu_tokenizer"):
        metrics.corpus_bleu(["a"], ["a"], tokenize="klingon")


def test_non_utf8_text_names_the_file_and_line(tmp_path):
    (tmp_path / "train.de").write_bytes(b"ein hund\nzwei katzen\n" + b"caf\xe9 au lait\n")
    write_lines(tmp_path / "train.en", ["a dog", "two cats", "coffee"])
    with pytest.raises(ValueError, match=r"train\.de line 3 is not UTF-8 text"):
        corpora.read_parallel_folder(tmp_path, "de", "en")


def test_empty_split_file_is_refused(tmp_path):
    write_lines(tmp_path / "train.de", ["ein hund"])
    write_lines(tmp_path / "train.en", ["a dog"])
    (tmp_path / "val.de").write_text("")
    (tmp_path / "val.en").write_text("")
    with pytest.raises(ValueError, match=r"val\.de is empty"):
        corpora.read_parallel_folder(tmp_path, "de", "en")
