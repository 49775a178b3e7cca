"""Overlapping evaluation windows (`config.eval_stride`): each token scored once, with context."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.language_modeling import task, tokenizers
from experiments.language_modeling.models.transformer import TransformerLM
from research.core.config import ConfigError
from research.core.text import BOS_ID, PAD_ID
from tests.helpers import load_config
from tests.test_language_modeling import CONFIGS, sentences, write_text_folder

LENGTH = 7


def _stream(tokenizer, lines):
    return [BOS_ID, *tokenizers.encode_text(tokenizer, lines)]


@pytest.mark.parametrize("stride", [1, 3, 6])
def test_strided_windows_score_every_token_once_after_at_least_length_minus_stride(stride):
    lines = sentences(25, seed=2) + ["", "café"]
    tokenizer = tokenizers.ByteTokenizer()
    stream = _stream(tokenizer, lines)
    arrays = task.windows(tokenizer, lines, LENGTH, stride)
    scored = arrays["targets"] != PAD_ID
    # Row by row, the scored targets are the stream after BOS, in order, each once.
    assert arrays["targets"][scored].tolist() == stream[1:]
    rows, columns = np.nonzero(scored)
    for row, column in zip(rows, columns, strict=True):
        position = row * stride + column + 1  # of the target in the stream
        context = arrays["inputs"][row, : column + 1].tolist()
        assert context == stream[position - column - 1 : position]
        assert column + 1 >= (LENGTH - stride + 1 if row else 1)
    text_bytes = sum(len(line.encode("utf-8")) + 1 for line in lines)
    assert arrays["bytes"].sum() == text_bytes


def test_stride_of_the_window_length_is_the_side_by_side_windows():
    lines = sentences(12, seed=3)
    tokenizer = tokenizers.ByteTokenizer()
    side_by_side = task.windows(tokenizer, lines, LENGTH)
    stream = _stream(tokenizer, lines)
    padded = np.pad(stream, (0, -(len(stream) - 1) % LENGTH))
    assert np.array_equal(side_by_side["inputs"].reshape(-1), padded[:-1])
    assert np.array_equal(side_by_side["targets"].reshape(-1), padded[1:])
    for key, array in task.windows(tokenizer, lines, LENGTH, LENGTH).items():
        assert np.array_equal(array, side_by_side[key])


def test_strided_evaluation_sums_each_tokens_loss_given_its_window_context():
    lines = sentences(6, seed=4)
    tokenizer = tokenizers.ByteTokenizer()
    stream = _stream(tokenizer, lines)
    model = TransformerLM(vocab_size=tokenizer.vocab_size, num_layers=1, width=16, num_heads=2,
                          mlp_width=32, positions="rotary")  # fmt: skip
    inputs = jnp.zeros((1, LENGTH), jnp.int32)
    params = jax.jit(model.init, static_argnames="train")(
        jax.random.PRNGKey(0), inputs, train=False
    )["params"]
    apply = jax.jit(lambda tokens: model.apply({"params": params}, tokens, train=False))
    stride = 2
    arrays = task.windows(tokenizer, lines, LENGTH, stride)
    logits = apply(jnp.asarray(arrays["inputs"]))
    sums = task.metric_sums(logits, {key: jnp.asarray(value) for key, value in arrays.items()})
    # Each target alone after its window's inputs, left-aligned in a row of its own: the model
    # is causal, so what follows the context in the row does not change the target's logits.
    rows, columns = [], []
    for position in range(1, len(stream)):  # the first window has it, or the one scoring it last
        start = max(0, -(-(position - LENGTH) // stride)) * stride
        rows.append(np.pad(stream[start:position], (0, LENGTH - position + start)))
        columns.append(position - start - 1)
    logits = apply(jnp.asarray(np.stack(rows)))
    chosen = logits[np.arange(len(columns)), np.asarray(columns)]
    expected = optax.softmax_cross_entropy_with_integer_labels(chosen, jnp.asarray(stream[1:]))
    expected = float(expected.sum())
    assert float(sums["cross_entropy"].sum()) == pytest.approx(expected, rel=1e-5)
    assert float(sums["tokens"].sum()) == len(stream) - 1
    assert float(sums["bytes"].sum()) == sum(len(line.encode("utf-8")) + 1 for line in lines)


def test_an_eval_stride_longer_than_the_window_names_the_key(tmp_path):
    folder = write_text_folder(tmp_path / "text")
    config = load_config(
        f"{CONFIGS}/transformer_char.py", data_dir=str(folder), sequence_length=8, eval_stride=9
    )
    with pytest.raises(ConfigError, match="eval_stride"):
        task.load_data(config, str(tmp_path / "artifacts"))
