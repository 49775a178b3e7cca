"""Language modeling: token windows, metrics over whole splits, cached sampling, n-gram, runs."""

import gzip
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import experiments
from experiments.language_modeling import corpora, generation, ngram, sample, task, tokenizers
from experiments.language_modeling.models.lstm import LSTMLM
from experiments.language_modeling.models.transformer import TransformerLM
from research.core import data, trainer
from research.deploy import export, inference
from research.runtime import workdir as workdir_lib
from tests.helpers import REPO_ROOT, load_config, run_experiment

CONFIGS = os.path.join(REPO_ROOT, "experiments/language_modeling/configs")
WORDS = ("the", "a", "dog", "cat", "runs", "sleeps", "in", "park", "garden", "and", "with", "big",
         "small", "café", "über", "naïve")  # fmt: skip
TINY_TRANSFORMER = {
    "model.num_layers": 1,
    "model.width": 16,
    "model.num_heads": 2,
    "model.mlp_width": 32,
    "model.max_length": 16,
}
SHORT_RUN = {
    "sequence_length": 16,
    "batch_size": 8,
    "eval_batch_size": 16,
    "num_train_steps": 4,
    "warmup_steps": 1,
    "log_every_steps": 2,
    "eval_every_steps": 4,
    "checkpoint_every_steps": 4,
    "reference_ngram_order": 3,
    "samples.prompts": ("the",),
    "samples.num_samples": 3,
    "samples.max_new_tokens": 5,
}


def sentences(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, 8))) for _ in range(count)]


def write_text_folder(folder, sizes=(120, 20, 20), gzip_test=True):
    """train.txt, valid.txt and test.txt[.gz] of generated sentences (some non-ASCII)."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, size) in enumerate(zip(corpora.SPLITS, sizes, strict=True)):
        text = "".join(line + "\n" for line in sentences(size, seed))
        if split == "test" and gzip_test:
            with gzip.open(folder / "test.txt.gz", "wt", encoding="utf-8") as file:
                file.write(text)
        else:
            (folder / f"{split}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("kind", ["characters", "bytes"])
def test_windows_predict_every_token_once_and_count_every_byte(kind):
    lines = sentences(30, seed=1) + ["", "tab\there"]
    tokenizer = (
        tokenizers.CharacterTokenizer.from_lines(lines[:10])
        if kind == "characters"
        else tokenizers.ByteTokenizer()
    )
    arrays = task.windows(tokenizer, lines, length=7)
    text = "".join(line + "\n" for line in lines)
    stream = tokenizers.encode_text(tokenizer, lines)
    targets = arrays["targets"].reshape(-1)
    assert targets[: len(stream)].tolist() == stream and not targets[len(stream) :].any()
    assert arrays["inputs"].reshape(-1)[1 : len(stream)].tolist() == stream[:-1]
    assert arrays["bytes"].sum() == len(text.encode("utf-8"))
    if kind == "bytes":  # characters outside the first ten lines may be unknown
        assert tokenizers.decode_text(tokenizer, stream) == text


def test_ngram_reference_is_a_distribution_and_matches_a_hand_computation():
    model = ngram.fit("abracadabra\ncadabra abc\n", order=3)
    for context in ("ab", "zq", "", "a"):
        total = sum(
            math.exp(ngram.log_probabilities(model, context + c)[-1])
            for c in [*model.alphabet, "?"]
        )
        assert total == pytest.approx(1.0, abs=1e-12)
    # Order 1 on "aab\n": counts a 2, b 1, newline 1; D = n1/(n1 + 2 n2) = 2/4; uniform 1/4.
    unigram = ngram.fit("aab\n", order=1)
    expected = (2 - 0.5) / 4 + 0.5 * 3 / 4 * (1 / 4)
    assert math.exp(ngram.log_probabilities(unigram, "a")[0]) == pytest.approx(expected)


def _models():
    return [
        TransformerLM(vocab_size=24, num_layers=2, width=16, num_heads=2, mlp_width=32,
                      max_length=16),
        TransformerLM(vocab_size=24, num_layers=1, width=16, num_heads=2, mlp_width=32,
                      positions="rotary", tie_embeddings=False),
        LSTMLM(vocab_size=24, embedding_size=8, hidden_size=12, num_layers=2,
               tie_embeddings=True),
    ]  # fmt: skip


@pytest.mark.parametrize("model", _models(), ids=["learned", "rotary", "lstm"])
def test_cached_generation_equals_recomputing_the_prefix_and_is_seeded(model):
    prompts = jnp.array([[1, 5, 6, 7, 8], [1, 9, 9, 4, 20]], jnp.int32)
    params = model.init(jax.random.PRNGKey(0), prompts, train=False)["params"]
    greedy = generation.Sampling(temperature=0.0)
    cached = generation.generate(
        model, params, prompts, jax.random.PRNGKey(1), max_new_tokens=8, sampling=greedy
    )
    recomputed = generation.generate_without_cache(model, params, prompts, max_new_tokens=8)
    np.testing.assert_array_equal(cached, recomputed)
    if not isinstance(model, LSTMLM):
        return  # one model shows that sampling is a function of the seed (the code is shared)
    sampling = generation.Sampling(temperature=1.5, top_k=10, top_p=0.95)
    draw = lambda seed: generation.generate(
        model, params, prompts, jax.random.PRNGKey(seed), max_new_tokens=8, sampling=sampling
    )
    np.testing.assert_array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))


@pytest.mark.parametrize("model", _models()[::2], ids=["learned", "lstm"])
def test_rows_of_different_prompt_lengths_generate_as_each_would_alone(model):
    prompts = jnp.array([[1, 5, 6, 7, 8], [1, 9, 4, 0, 0], [1, 3, 0, 0, 0]], jnp.int32)
    lengths = jnp.array([5, 3, 2], jnp.int32)
    params = model.init(jax.random.PRNGKey(0), prompts, train=False)["params"]
    greedy = generation.Sampling(temperature=0.0)

    def rows(batch, settings, seeds):  # settings: (temperature, top_k, top_p) for every row
        count = len(batch)
        t, k, p = (jnp.full((count,), v) for v in settings)
        return generation.generate_rows(
            model, params, prompts[batch], lengths[batch], jnp.asarray(seeds), t,
            k.astype(jnp.int32), p, max_new_tokens=6,
        )  # fmt: skip

    together = rows(np.arange(3), (0.0, 0, 1.0), [0, 0, 0])
    for row in range(3):
        alone = generation.generate(
            model, params, prompts[row : row + 1, : lengths[row]], jax.random.PRNGKey(0),
            max_new_tokens=6, sampling=greedy,
        )  # fmt: skip
        np.testing.assert_array_equal(together[row], alone[0])
    sampled = rows(np.arange(3), (1.5, 10, 0.95), [3, 4, 5])
    np.testing.assert_array_equal(sampled[1], rows(np.array([1]), (1.5, 10, 0.95), [4])[0])
    assert not np.array_equal(sampled[1], rows(np.array([1]), (1.5, 10, 0.95), [7])[0])


def test_sampling_each_row_with_its_own_key_equals_sampling_it_alone():
    logits = jax.random.normal(jax.random.PRNGKey(1), (4, 30)) * 3
    keys = jax.random.split(jax.random.PRNGKey(2), 4)
    settings = [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.9), (0.8, 4, 0.5), (0.0, 0, 1.0)]
    for temperature, top_k, top_p in settings:
        full = lambda value, dtype=jnp.float32: jnp.full((4,), value, dtype)  # noqa: E731
        rows = generation.sample_rows(
            logits, keys, full(temperature), full(top_k, jnp.int32), full(top_p)
        )
        sampling = generation.Sampling(temperature, top_k, top_p)
        alone = [
            generation.sample_logits(logits[i : i + 1], keys[i], sampling)[0] for i in range(4)
        ]
        np.testing.assert_array_equal(rows, np.array(alone))


def test_top_k_and_top_p_keep_only_the_most_probable_tokens():
    probabilities = jnp.array([[0.05, 0.05, 0.5, 0.3, 0.1]])  # ids 0, 1 (PAD, BOS) never drawn
    logits = jnp.log(probabilities)
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)

    def drawn(sampling):
        tokens = jax.vmap(lambda key: generation.sample_logits(logits, key, sampling))(keys)
        return set(np.asarray(tokens).ravel().tolist())

    assert drawn(generation.Sampling(1.0, top_k=2)) == {2, 3}
    assert drawn(generation.Sampling(1.0, top_p=0.7)) == {2, 3}  # 0.5 < 0.7 <= 0.5 + 0.3
    assert drawn(generation.Sampling(1.0, top_p=0.5)) == {2}
    assert drawn(generation.Sampling(1.0)) == {2, 3, 4}  # PAD and BOS masked
    assert drawn(generation.Sampling(0.0)) == {2}


def test_missing_corpus_stops_with_how_to_prepare_it(tmp_path):
    config = load_config(os.path.join(CONFIGS, "transformer_char.py"), data_dir=str(tmp_path / "x"))
    with pytest.raises(data.DatasetMissingError, match="prepare_kjv"):
        task.load_data(config, str(tmp_path / "artifacts"))


def _loss_recomputed(workdir, split_lines, sequence_length):
    """Cross-entropy per token and bits per byte of the restored model over a whole split."""
    model, params, tokenizer = sample.load_run(str(workdir))
    arrays = task.windows(tokenizer, split_lines, sequence_length)
    logits = model.apply({"params": params}, jnp.asarray(arrays["inputs"]), train=False)
    targets = arrays["targets"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    nats = float(np.sum(np.asarray(losses, np.float64) * (targets != 0)))
    text_bytes = sum(len(line.encode("utf-8")) + 1 for line in split_lines)
    return nats / np.sum(targets != 0), nats / math.log(2) / text_bytes


def test_transformer_run_metrics_samples_sample_command_and_export(tmp_path, capsys):
    folder = write_text_folder(tmp_path / "text")
    config = load_config(
        os.path.join(CONFIGS, "transformer_char.py"),
        data_dir=str(folder), seed=7, **SHORT_RUN, **TINY_TRANSFORMER,
    )  # fmt: skip
    summary = run_experiment(config, tmp_path / "run")
    test_lines = corpora.read_text_folder(folder)["test"]
    loss, bits_per_byte = _loss_recomputed(tmp_path / "run", test_lines, 16)
    assert summary["test"]["loss"] == pytest.approx(loss, rel=1e-5)
    assert summary["test"]["bits_per_byte"] == pytest.approx(bits_per_byte, rel=1e-5)
    assert summary["test"]["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert 0 < summary["test"]["ngram3_bits_per_byte"] < 8
    with open(tmp_path / "run" / workdir_lib.EXAMPLES_FILE) as file:
        samples = [json.loads(line) for line in file]
    assert len(samples) == 3 and {s["split"] for s in samples} == {"samples"}
    # The settings of the evaluation's samples, so the compiled generation is reused.
    arguments = ["--workdir", str(tmp_path / "run"), "--prompt", "the", "--max_new_tokens", "5",
                 "--top_p", "0.95"]  # fmt: skip
    first = sample.main([*arguments, "--seed", "7"])
    assert sample.main([*arguments, "--seed", "7"]) == first and len(first) == 3
    assert first == [s["sample"] for s in samples]  # the run's samples: seed 7 = config seed
    assert "--- sample 0 (seed 7)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # learned positions run out
        sample.main([*arguments, "--max_new_tokens", "50"])
    assert "learned positions" in capsys.readouterr().err

    # Exported, the model answers greedy prompts with the in-process cached generation's tokens.
    options = {"max_prompt_length": 6, "max_new_tokens": 5}
    export.export_run(
        str(tmp_path / "run"),
        str(tmp_path / "model"),
        options=options,
        get_task=experiments.get_task,
    )
    model, params, tokenizer = sample.load_run(str(tmp_path / "run"))
    predictor = inference.Predictor(
        str(tmp_path / "model"), {"temperature": 0.0}, get_task=experiments.get_task
    )
    prompts = ["the", "a", "café"]  # 4, 2 and 5 tokens with BOS: three lengths in one batch
    answers = predictor.predict([predictor.codec.parse(prompt) for prompt in prompts])
    for prompt, answer in zip(prompts, answers, strict=True):
        expected = generation.generate(
            model, params, jnp.asarray([task.prompt_ids(tokenizer, prompt)]),
            jax.random.PRNGKey(0), max_new_tokens=5, sampling=generation.Sampling(0.0),
        )[0].tolist()  # fmt: skip
        assert answer == {"continuation": tokenizers.decode_text(tokenizer, expected),
                          "tokens": expected}  # fmt: skip
    # Sampled (the run's settings), a row's answer depends on its seed, not on its batch.
    sampled = inference.Predictor(str(tmp_path / "model"), get_task=experiments.get_task)
    seeded = [sampled.codec.parse({"prompt": "the", "seed": seed}) for seed in (3, 4, 3)]
    first, other, again = sampled.predict(seeded)
    assert first == again and first == sampled.predict(seeded[:1])[0] and first != other
    with pytest.raises(inference.InputError, match="at most 6"):
        predictor.codec.parse("the dog")
    with pytest.raises(inference.InputError, match="top_p must be in"):
        predictor.codec.parse({"prompt": "the", "top_p": 0})


def test_lstm_on_sentencepiece_and_fine_tuning_with_the_pretrained_tokenizer(tmp_path):
    folder = write_text_folder(tmp_path / "text", gzip_test=False)
    config = load_config(
        os.path.join(CONFIGS, "lstm_char.py"),
        data_dir=str(folder), **{**SHORT_RUN,
            "tokenizer.type": "sentencepiece", "tokenizer.vocab_size": 40,
            "tokenizer.cache_dir": str(tmp_path / "cache"), "model.embedding_size": 8,
            "model.hidden_size": 8, "model.num_layers": 1, "eval_splits": ("test",),
            "samples.num_samples": 0,
        },
    )  # fmt: skip
    summary = run_experiment(config, tmp_path / "pretrained")
    test_lines = corpora.read_text_folder(folder)["test"]
    loss, bits_per_byte = _loss_recomputed(tmp_path / "pretrained", test_lines, 16)
    assert summary["test"]["bits_per_byte"] == pytest.approx(bits_per_byte, rel=1e-5)
    # Fine-tuning on other text: the pretrained run's tokenizer and parameters.
    other = tmp_path / "other"
    other.mkdir()
    for split in corpora.SPLITS:
        (other / f"{split}.txt").write_text("a big dog\nthe cat\n" * 5, encoding="utf-8")
    tokenizer_dir = tmp_path / "pretrained" / workdir_lib.ARTIFACTS_DIR / task.TOKENIZER_DIR
    config.data_dir, config.tokenizer.path = str(other), str(tokenizer_dir)
    run = trainer.setup(config, str(tmp_path / "tuned"), experiments.get_task(config),
                        init_from=str(tmp_path / "pretrained"))  # fmt: skip
    try:
        _, pretrained_params, _ = sample.load_run(str(tmp_path / "pretrained"))
        assert jax.tree.all(jax.tree.map(np.array_equal, run.state.params, pretrained_params))
        saved = tmp_path / "tuned" / workdir_lib.ARTIFACTS_DIR / task.TOKENIZER_DIR
        assert (saved / "sentencepiece.model").read_bytes() == (
            tokenizer_dir / "sentencepiece.model"
        ).read_bytes()
    finally:
        run.close()
