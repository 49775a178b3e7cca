"""A few steps of every seq2seq config on SCAN, a small text folder, and a missing WMT."""

import gzip
import json
import os
import shutil

import pytest
import tensorflow_datasets as tfds

from research.core import data
from research.runtime import workdir as workdir_lib
from tests import helpers
from tests.helpers import (
    REPO_ROOT,
    check_golden,
    load_config,
    run_experiment,
)

CONFIGS = os.path.join(REPO_ROOT, "experiments/seq2seq/configs")
TINY_TRANSFORMER = {
    "model.num_layers": 1,
    "model.width": 32,
    "model.num_heads": 2,
    "model.mlp_width": 64,
}
SHORT_RUN = {
    "batch_size": 32,
    "eval_batch_size": 1024,
    "num_train_steps": 6,
    "warmup_steps": 2,
    "log_every_steps": 3,
    "eval_every_steps": 6,
    "checkpoint_every_steps": 3,
}
GERMAN = ["ein hund läuft", "eine katze schläft", "zwei kinder spielen", "ein mann liest"]
ENGLISH = ["a dog runs", "a cat sleeps", "two children play", "a man reads"]


def _scan_config(name, split, **overrides):
    path = os.path.join(CONFIGS, name)
    config = load_config(path, **SHORT_RUN, **overrides)
    config.scan_split = split
    return config


def _check_seq2seq_workdir(workdir, summary, split):
    assert {"loss", "token_accuracy", "exact_match", "bleu"} <= set(summary[split])
    assert 0.0 <= summary[split]["exact_match"] <= 1.0
    signature = summary["evaluation_details"][split]["sacrebleu_signature"]
    assert signature.startswith("nrefs:1|") and "tok:13a" in signature
    with open(workdir / workdir_lib.EXAMPLES_FILE) as file:
        examples = [json.loads(line) for line in file]
    assert examples and {"source", "reference", "hypothesis"} <= set(examples[0])
    artifacts = workdir / workdir_lib.ARTIFACTS_DIR
    assert os.listdir(artifacts / "source_tokenizer") and os.listdir(artifacts / "target_tokenizer")


def test_scan_transformer_runs_and_decodes_every_test_example(tmp_path):
    config = _scan_config("scan_transformer.py", "length", **TINY_TRANSFORMER)
    summary = run_experiment(config, tmp_path)
    _check_seq2seq_workdir(tmp_path, summary, "test")
    check_golden("seq2seq/configs/scan_transformer.py", tmp_path)


def test_scan_lstm_runs_with_beam_search(tmp_path):
    config = _scan_config(
        "scan_lstm.py",
        "addprim_turn_left",
        **{"model.embedding_size": 16, "model.hidden_size": 16, "model.num_layers": 1},
    )
    config.decode.beam_size = 2
    summary = run_experiment(config, tmp_path)
    _check_seq2seq_workdir(tmp_path, summary, "test")
    check_golden("seq2seq/configs/scan_lstm.py", tmp_path)


def test_scan_config_argument_selects_the_split():
    config = load_config(os.path.join(CONFIGS, "scan_transformer.py"))
    assert config.scan_split == "simple"
    from experiments.seq2seq.configs import scan_lstm

    assert scan_lstm.get_config("split=addprim_jump").scan_split == "addprim_jump"


def _write_folder(folder, repeats=10):
    folder.mkdir()
    for language, sentences in (("de", GERMAN), ("en", ENGLISH)):
        (folder / f"train.{language}").write_text("\n".join(sentences * repeats) + "\n")
        (folder / f"val.{language}").write_text("\n".join(sentences) + "\n")
        with gzip.open(folder / f"test_2016_flickr.{language}.gz", "wt") as file:
            file.write("\n".join(sentences[:3]) + "\n")


def test_translate_folder_transformer_runs_on_a_small_folder(tmp_path):
    folder = tmp_path / "corpus"
    _write_folder(folder)
    config = load_config(
        os.path.join(CONFIGS, "translate_folder_transformer.py"), **SHORT_RUN, **TINY_TRANSFORMER
    )
    config.data_dir = str(folder)
    config.eval_splits = ("valid", "test_2016_flickr")
    config.tokenizer.vocab_size = 40
    config.tokenizer.cache_dir = str(tmp_path / "cache")
    config.decode.beam_size = 2
    config.decode.max_length = 12
    summary = run_experiment(config, tmp_path / "run")
    assert set(summary) >= {"valid", "test_2016_flickr"}
    _check_seq2seq_workdir(tmp_path / "run", summary, "test_2016_flickr")
    check_golden("seq2seq/configs/translate_folder_transformer.py", tmp_path / "run")

    # A resumed run decodes with the tokenizer stored in the workdir, not a new one.
    shutil.rmtree(tmp_path / "cache")
    again = run_experiment(config, tmp_path / "run")
    assert again["params_sha256"] == summary["params_sha256"]
    assert not (tmp_path / "cache").exists()


def test_folder_with_mismatched_sides_is_refused(tmp_path):
    folder = tmp_path / "corpus"
    _write_folder(folder)
    (folder / "train.en").write_text("only one line\n")
    config = load_config(os.path.join(CONFIGS, "translate_folder_transformer.py"), **SHORT_RUN)
    config.data_dir = str(folder)
    with pytest.raises(data.MalformedDataError, match="train"):
        run_experiment(config, tmp_path / "run")


def test_wmt_transformer_runs_on_mock_wmt(tmp_path):
    config = load_config(
        os.path.join(CONFIGS, "wmt_transformer.py"), **SHORT_RUN, **TINY_TRANSFORMER
    )
    config.data_dir = str(tmp_path / "no_data_here")
    config.tokenizer.vocab_size = 60
    config.tokenizer.cache_dir = str(tmp_path / "cache")
    short = 16
    config.max_input_length = config.max_target_length = short
    config.model.max_length = config.decode.max_length = short
    with tfds.testing.mock_data(num_examples=32):  # random strings in every split
        summary = run_experiment(config, tmp_path / "run")
    assert set(summary) >= {"valid", "test"}
    _check_seq2seq_workdir(tmp_path / "run", summary, "test")
    check_golden("seq2seq/configs/wmt_transformer.py", tmp_path / "run")


def test_missing_wmt_is_reported_with_how_to_prepare_it(tmp_path):
    result = helpers.launch(
        f"--config={os.path.join(CONFIGS, 'wmt_transformer.py')}",
        f"--config.data_dir={tmp_path / 'no_tfds_here'}",
        f"--workdir={tmp_path / 'run'}",
        timeout=120,
    )
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert "wmt14_translate/de-en" in message and "tfds build" in message, message


@pytest.mark.parametrize("source,target,tokenizer", [("zh", "en", "13a"), ("en", "zh", "zh")])
def test_chinese_folder_trains_both_ways_and_is_scored_with_the_target_tokenizer(
    source, target, tokenizer, tmp_path
):
    folder = helpers.write_chinese_english_folder(tmp_path / "corpus")
    config = load_config(
        os.path.join(CONFIGS, "translate_folder_transformer.py"), **SHORT_RUN, **TINY_TRANSFORMER
    )
    config.data_dir = str(folder)
    config.source_language, config.target_language = source, target
    config.eval_splits = ("valid", "test_2016_flickr")
    config.tokenizer.vocab_size = 120
    config.tokenizer.character_coverage = 0.9995
    config.tokenizer.cache_dir = str(tmp_path / "cache")
    config.decode.max_length = 24
    summary = run_experiment(config, tmp_path / "run")
    signature = summary["evaluation_details"]["test_2016_flickr"]["sacrebleu_signature"]
    assert f"tok:{tokenizer}" in signature
    assert 0.0 <= summary["test_2016_flickr"]["bleu"] <= 100.0
    examples = [
        json.loads(line)
        for line in (tmp_path / "run" / workdir_lib.EXAMPLES_FILE).read_text().splitlines()
    ]
    pairs = helpers.CHINESE_ENGLISH
    by_source = dict(
        pairs if source == "zh" else [(english, chinese) for chinese, english in pairs]
    )
    assert all(by_source[e["source"]] == e["reference"] for e in examples)
