"""Seq2seq models and decoding: cached steps match teacher forcing, padding is ignored, greedy
and beam search find what brute force finds."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.seq2seq import decoding
from experiments.seq2seq.models.lstm import LSTMSeq2Seq
from experiments.seq2seq.models.transformer import Transformer
from research.core.text import EOS_ID, PAD_ID

INPUT_LENGTH = 6
TARGET_LENGTH = 5
BATCH_SIZE = 3

jitted_decode = jax.jit(decoding.decode, static_argnames=("model", "max_length", "beam_size"))


def tiny_transformer(**overrides):
    fields = dict(
        input_vocab_size=8,
        target_vocab_size=8,
        num_layers=2,
        width=16,
        num_heads=2,
        mlp_width=32,
        dropout_rate=0.3,
        attention_dropout_rate=0.3,
        max_length=16,
    )
    return Transformer(**{**fields, **overrides})


def tiny_lstm(**overrides):
    fields = dict(
        input_vocab_size=8,
        target_vocab_size=7,
        embedding_size=12,
        hidden_size=16,
        num_layers=2,
        dropout_rate=0.3,
        bidirectional_encoder=True,
    )
    return LSTMSeq2Seq(**{**fields, **overrides})


# name -> (model, scale and seed of its random parameters). Random tiny models often emit one
# token forever; these parameters make greedy and beam search disagree and stop at varied
# lengths, so the decoding tests below say something.
MODELS = {
    "transformer_pre_ln_sinusoidal": (tiny_transformer(num_layers=1), 0.3, 3),
    "transformer_post_ln_learned_shared": (
        tiny_transformer(pre_layer_norm=False, positions="learned", share_embeddings=True),
        0.3,
        0,
    ),
    "lstm_bidirectional": (tiny_lstm(), 1.0, 0),
}
DECODING_MODELS = ["transformer_pre_ln_sinusoidal", "lstm_bidirectional"]


def random_sequences(rng, batch_size, length, vocab_size):
    """Real tokens (ids >= 3) of random lengths in `[1, length - 1]`, then EOS, then PAD."""
    tokens = rng.integers(EOS_ID + 1, vocab_size, size=(batch_size, length))
    real_lengths = rng.integers(1, length, size=batch_size)
    positions = np.arange(length)[None, :]
    tokens = np.where(positions == real_lengths[:, None], EOS_ID, tokens)
    tokens = np.where(positions > real_lengths[:, None], PAD_ID, tokens)
    return jnp.asarray(tokens, jnp.int32)


def example_batch(model, seed=0):
    rng = np.random.default_rng(seed)
    inputs = random_sequences(rng, BATCH_SIZE, INPUT_LENGTH, model.input_vocab_size)
    targets = random_sequences(rng, BATCH_SIZE, TARGET_LENGTH, model.target_vocab_size)
    return inputs, targets


def random_variables(model, inputs, targets, scale=0.3, seed=0):
    """Random parameters in the model's shapes; the tests do not depend on the initializers,
    and skipping `init` saves compiling it."""
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), inputs, targets
    )
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: jnp.asarray(rng.normal(0, scale, leaf.shape), leaf.dtype), shapes
    )


@functools.cache
def initialized(name):
    """(model, variables, inputs, targets) for one of MODELS, built once per test session."""
    model, parameter_scale, parameter_seed = MODELS[name]
    inputs, targets = example_batch(model)
    variables = random_variables(model, inputs, targets, parameter_scale, parameter_seed)
    return model, variables, inputs, targets


@functools.cache
def teacher_forced(name):
    """The model's jitted teacher-forced logits function `(inputs, targets) -> logits`."""
    model, variables, _, _ = initialized(name)
    return jax.jit(lambda inputs, targets: model.apply(variables, inputs, targets, train=False))


@pytest.mark.parametrize("name", MODELS)
def test_output_shapes(name):
    model, variables, inputs, targets = initialized(name)
    logits = teacher_forced(name)(inputs, targets)
    assert logits.shape == (BATCH_SIZE, TARGET_LENGTH, model.target_vocab_size)
    encoded = jax.eval_shape(lambda: model.apply(variables, inputs, method=model.encode))
    assert encoded.shape[:2] == (BATCH_SIZE, INPUT_LENGTH)
    cache = jax.eval_shape(
        lambda: model.apply(
            variables, jnp.zeros(encoded.shape), inputs, TARGET_LENGTH, method="initialize_cache"
        )
    )
    assert all(leaf.shape[0] == BATCH_SIZE for leaf in jax.tree.leaves(cache))


@pytest.mark.parametrize("name", MODELS)
def test_cached_step_decoding_matches_teacher_forcing(name):
    model, variables, inputs, targets = initialized(name)
    expected = teacher_forced(name)(inputs, targets)

    @jax.jit
    def step_by_step(inputs, targets):
        encoded = model.apply(variables, inputs, method=model.encode)
        cache = model.apply(
            variables, encoded, inputs, TARGET_LENGTH, method=model.initialize_cache
        )

        def step(cache, last_tokens):
            logits, cache = model.apply(
                variables, encoded, inputs, last_tokens, cache, method=model.decode_step
            )
            return cache, logits

        _, logits = jax.lax.scan(step, cache, decoding.shift_right(targets).T)
        return logits.transpose(1, 0, 2)

    np.testing.assert_allclose(step_by_step(inputs, targets), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_extra_input_padding_does_not_change_logits(name):
    _, _, inputs, targets = initialized(name)
    padded_inputs = jnp.pad(inputs, ((0, 0), (0, 3)), constant_values=PAD_ID)
    np.testing.assert_allclose(
        teacher_forced(name)(padded_inputs, targets),
        teacher_forced(name)(inputs, targets),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("name", ["transformer_pre_ln_sinusoidal", "lstm_bidirectional"])
def test_dropout_is_active_only_in_training(name):
    model, variables, inputs, targets = initialized(name)

    @jax.jit
    def train_logits(seed):
        # An "rbg" key compiles much faster on CPU than the default threefry.
        rngs = {"dropout": jax.random.key(seed, impl="rbg")}
        return model.apply(variables, inputs, targets, train=True, rngs=rngs)

    assert not np.allclose(train_logits(1), train_logits(2))
    # Flax raises when a dropout layer needs a "dropout" key and none is given, so running
    # without one shows that evaluation draws no randomness.
    eval_logits = teacher_forced(name)(inputs, targets)
    assert not np.allclose(train_logits(1), eval_logits)


def test_configuration_errors_name_the_field():
    inputs, targets = example_batch(tiny_transformer())
    init = lambda model: jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), inputs, targets
    )
    with pytest.raises(ValueError, match="share_embeddings"):
        init(tiny_transformer(share_embeddings=True, target_vocab_size=7))
    with pytest.raises(ValueError, match="learned positions"):
        init(tiny_transformer(positions="learned", max_length=INPUT_LENGTH - 1))
    model, variables, inputs, _ = initialized("transformer_post_ln_learned_shared")
    with pytest.raises(ValueError, match="learned positions"):
        jitted_decode(model, variables, inputs, max_length=model.max_length + 1)


@pytest.mark.parametrize("name", DECODING_MODELS)
def test_greedy_decode_feeds_back_the_argmax_of_teacher_forced_logits(name):
    model, variables, inputs, _ = initialized(name)
    tokens, log_probs = jitted_decode(model, variables, inputs, max_length=TARGET_LENGTH)

    prefix = np.full((BATCH_SIZE, TARGET_LENGTH), PAD_ID, np.int32)
    expected_log_probs = np.zeros(BATCH_SIZE)
    finished = np.zeros(BATCH_SIZE, bool)
    for position in range(TARGET_LENGTH):
        logits = teacher_forced(name)(inputs, jnp.asarray(prefix))[:, position]
        token_log_probs = np.asarray(jax.nn.log_softmax(logits))
        next_tokens = np.where(finished, PAD_ID, token_log_probs.argmax(-1))
        expected_log_probs += np.where(finished, 0, token_log_probs[range(BATCH_SIZE), next_tokens])
        prefix[:, position] = next_tokens
        finished |= next_tokens == EOS_ID
    np.testing.assert_array_equal(tokens, prefix)
    np.testing.assert_allclose(log_probs, expected_log_probs, atol=1e-5)
    assert len({tuple(row) for row in prefix}) > 1, "every example decodes alike"


def test_beam_size_one_is_greedy_decoding():
    model, variables, inputs, _ = initialized("transformer_pre_ln_sinusoidal")
    # Called as in the greedy test, so the compiled function is reused.
    greedy_tokens, greedy_log_probs = jitted_decode(
        model, variables, inputs, max_length=TARGET_LENGTH
    )

    @jax.jit
    def beam_search_of_size_one(inputs):
        encoded = model.apply(variables, inputs, method=model.encode)
        cache = model.apply(
            variables, encoded, inputs, TARGET_LENGTH, method=model.initialize_cache
        )

        def step_fn(cache, last_tokens):
            return model.apply(
                variables, encoded, inputs, last_tokens, cache, method=model.decode_step
            )

        return decoding.beam_search(
            step_fn, cache, BATCH_SIZE, TARGET_LENGTH, beam_size=1, length_penalty=1.0
        )

    beam_tokens, beam_log_probs = beam_search_of_size_one(inputs)
    np.testing.assert_array_equal(beam_tokens, greedy_tokens)
    np.testing.assert_allclose(beam_log_probs, greedy_log_probs, atol=1e-6)


def all_hypotheses(vocab_size, max_length):
    """Every output beam search can return: token sequences without EOS except at their end,
    ending with EOS or cut off at `max_length`; padded to `[count, max_length]`, with lengths."""
    not_eos = [token for token in range(vocab_size) if token != EOS_ID]
    hypotheses, lengths = [], []
    for length in range(1, max_length + 1):
        last_tokens = range(vocab_size) if length == max_length else [EOS_ID]
        for body in itertools.product(not_eos, repeat=length - 1):
            for last_token in last_tokens:
                hypotheses.append([*body, last_token] + [PAD_ID] * (max_length - length))
                lengths.append(length)
    return np.array(hypotheses, np.int32), np.array(lengths)


# Models whose random parameters (scale, seed) make the search non-trivial: the best hypothesis
# changes with the length penalty and is not always the greedy one (checked in the test).
EXHAUSTIVE_SEARCH_MODELS = {
    "lstm_unidirectional": (
        tiny_lstm(target_vocab_size=5, dropout_rate=0.0, bidirectional_encoder=False, num_layers=1),
        0.6,
        3,
    ),
    "transformer": (
        tiny_transformer(target_vocab_size=5, dropout_rate=0.0, pre_layer_norm=False),
        1.0,
        3,
    ),
}


@pytest.mark.parametrize("name", EXHAUSTIVE_SEARCH_MODELS)
def test_beam_search_finds_the_exhaustive_best_hypothesis(name):
    model, parameter_scale, seed = EXHAUSTIVE_SEARCH_MODELS[name]
    max_length = 4
    inputs, targets = example_batch(model)
    variables = random_variables(model, inputs, targets[:, :max_length], parameter_scale, seed)
    hypotheses, lengths = all_hypotheses(model.target_vocab_size, max_length)

    @jax.jit
    def hypothesis_log_probs(inputs):  # [batch, hypotheses]
        repeated_inputs = jnp.repeat(inputs, len(hypotheses), axis=0)
        repeated_hypotheses = jnp.tile(hypotheses, (BATCH_SIZE, 1))
        logits = model.apply(variables, repeated_inputs, repeated_hypotheses, train=False)
        token_log_probs = jnp.take_along_axis(
            jax.nn.log_softmax(logits), repeated_hypotheses[..., None], axis=-1
        )[..., 0]
        scored = jnp.arange(max_length)[None, :] < jnp.tile(lengths, BATCH_SIZE)[:, None]
        return jnp.sum(jnp.where(scored, token_log_probs, 0.0), axis=1).reshape(BATCH_SIZE, -1)

    log_probs = np.asarray(hypothesis_log_probs(inputs))
    # No pruning: before the last step there are 4^3 alive and 1 + 4 + 16 finished hypotheses.
    beam_size = 85
    greedy_tokens, _ = jitted_decode(model, variables, inputs, max_length=max_length)
    best_hypotheses, greedy_was_best = set(), []
    for length_penalty in (0.0, 1.0, 2.0):
        tokens, beam_log_probs = jitted_decode(
            model,
            variables,
            inputs,
            max_length=max_length,
            beam_size=beam_size,
            length_penalty=length_penalty,
        )
        penalized = log_probs / decoding.length_penalty_factor(lengths, length_penalty)
        best = np.argmax(penalized, axis=1)
        np.testing.assert_array_equal(tokens, hypotheses[best])
        np.testing.assert_allclose(beam_log_probs, log_probs[range(BATCH_SIZE), best], atol=1e-5)
        best_hypotheses.add(tokens.tobytes())
        greedy_was_best.append(np.array_equal(tokens, greedy_tokens))
    assert len(best_hypotheses) > 1 and not all(greedy_was_best), "the search is trivial"


@pytest.mark.parametrize("name", DECODING_MODELS)
def test_beam_search_returns_its_hypothesis_log_probability_with_pad_after_eos(name):
    model, variables, inputs, _ = initialized(name)
    tokens, log_probs = jitted_decode(
        model, variables, inputs, max_length=TARGET_LENGTH, beam_size=3, length_penalty=0.6
    )
    greedy_tokens, _ = jitted_decode(model, variables, inputs, max_length=TARGET_LENGTH)
    assert not np.array_equal(tokens, greedy_tokens), "beam search should find another hypothesis"
    tokens = np.asarray(tokens)
    ends = np.cumsum(tokens == EOS_ID, axis=1)
    after_eos = (ends - (tokens == EOS_ID)) > 0
    np.testing.assert_array_equal(np.where(after_eos, tokens, PAD_ID), PAD_ID)
    logits = teacher_forced(name)(inputs, jnp.asarray(tokens))
    token_log_probs = np.take_along_axis(
        np.asarray(jax.nn.log_softmax(logits)), tokens[..., None], axis=-1
    )[..., 0]
    expected = np.sum(np.where(after_eos, 0.0, token_log_probs), axis=1)
    np.testing.assert_allclose(log_probs, expected, atol=1e-5)
