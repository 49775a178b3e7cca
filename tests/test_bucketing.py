"""Length-bucketed sequence batches: deterministic, host-independent, exact, each example once."""

import functools
from unittest import mock

import jax
import numpy as np
import pytest

from research.core import data, evaluation, steps
from research.core.task import Task
from research.runtime import parallel

NUM_EXAMPLES, WIDTH = 300, 32
BOUNDARIES = (8, 16, 24)


def _sequences(seed: int = 0) -> data.Arrays:
    """Right-padded token ids of random lengths 1..WIDTH, and each example's index."""
    rng = np.random.default_rng(seed)
    arrays = {
        "inputs": np.zeros((NUM_EXAMPLES, WIDTH), np.int32),
        "targets": np.zeros((NUM_EXAMPLES, WIDTH), np.int32),
        "index": np.arange(NUM_EXAMPLES),
    }
    for key in ("inputs", "targets"):
        for row, length in enumerate(rng.integers(1, WIDTH + 1, NUM_EXAMPLES)):
            arrays[key][row, :length] = rng.integers(3, 50, length)
    return arrays


def _true_lengths(arrays):
    return np.maximum((arrays["inputs"] != 0).sum(1), (arrays["targets"] != 0).sum(1))


def test_sequence_lengths_are_the_longest_sequence_of_each_example():
    arrays = _sequences()
    lengths = data.sequence_lengths(arrays, ("inputs", "targets"))
    np.testing.assert_array_equal(lengths, _true_lengths(arrays))


def test_boundaries_end_with_the_full_width():
    buckets = data.length_buckets(_sequences(), ("inputs", "targets"), (24, 8, 16, 99))
    assert buckets.boundaries == (8, 16, 24, WIDTH)


def test_bucketed_batch_is_a_pure_function_of_seed_and_step():
    buckets = data.length_buckets(_sequences(), ("inputs", "targets"), BOUNDARIES)
    forward = [data.bucketed_batch_indices(buckets, 32, seed=4, step=s) for s in range(20)]
    fresh = data.length_buckets(_sequences(), ("inputs", "targets"), BOUNDARIES)
    backward = [data.bucketed_batch_indices(fresh, 32, seed=4, step=s) for s in reversed(range(20))]
    for first, again in zip(forward, reversed(backward), strict=True):
        np.testing.assert_array_equal(first, again)
    other_seed = data.bucketed_batch_indices(buckets, 32, seed=5, step=0)
    assert not np.array_equal(forward[0], other_seed)


@pytest.mark.parametrize("order", ["numpy", "hash"])
def test_each_epoch_uses_each_example_at_most_once_and_reshuffles(order):
    arrays = _sequences()
    buckets = data.length_buckets(arrays, ("inputs", "targets"), BOUNDARIES)
    batches_per_epoch = NUM_EXAMPLES // 32
    epochs = []
    for epoch in range(2):
        steps_of_epoch = range(epoch * batches_per_epoch, (epoch + 1) * batches_per_epoch)
        indices = np.concatenate(
            [data.bucketed_batch_indices(buckets, 32, 0, s, order) for s in steps_of_epoch]
        )
        assert len(set(indices.tolist())) == batches_per_epoch * 32
        epochs.append(indices)
    assert not np.array_equal(epochs[0], epochs[1])


def test_batches_are_cut_to_the_smallest_boundary_holding_their_longest_row():
    arrays = _sequences()
    lengths = _true_lengths(arrays)
    buckets = data.length_buckets(arrays, ("inputs", "targets"), BOUNDARIES)
    shapes = set()
    for step in range(30):
        batch = data.train_batch(arrays, 32, seed=1, step=step, buckets=buckets)
        padded = batch["inputs"].shape[1]
        assert batch["targets"].shape[1] == padded
        longest = lengths[batch["index"]].max()
        assert padded == min(b for b in (*BOUNDARIES, WIDTH) if b >= longest)
        # Cutting dropped only padding.
        np.testing.assert_array_equal(batch["inputs"], arrays["inputs"][batch["index"], :padded])
        assert not arrays["inputs"][batch["index"], padded:].any()
        shapes.add(padded)
    assert shapes <= {*BOUNDARIES, WIDTH} and len(shapes) > 1


def test_bucketing_cuts_padding():
    arrays = _sequences()
    lengths = _true_lengths(arrays)
    buckets = data.length_buckets(arrays, ("inputs", "targets"), range(2, WIDTH + 1, 2))
    real = padded = 0
    for step in range(NUM_EXAMPLES // 32):
        batch = data.train_batch(arrays, 32, seed=0, step=step, buckets=buckets)
        real += lengths[batch["index"]].sum()
        padded += batch["inputs"].size
    # Unbucketed, every row is WIDTH long: efficiency ~ mean length / WIDTH ~ 0.6 here.
    assert real / padded > 0.9 > lengths.mean() / WIDTH


def test_hosts_take_rows_of_one_global_batch_of_one_shape():
    arrays = _sequences()
    buckets = data.length_buckets(arrays, ("inputs", "targets"), BOUNDARIES)
    for step in range(5):
        host_batches = []
        for host in range(2):
            with (
                mock.patch.object(data.parallel, "process_count", return_value=2),
                mock.patch.object(data.parallel, "process_index", return_value=host),
            ):
                host_batches.append(data.train_batch(arrays, 32, 0, step, buckets))
        whole = data.train_batch(arrays, 32, 0, step, buckets)
        assert host_batches[0]["inputs"].shape == host_batches[1]["inputs"].shape
        for key in whole:
            np.testing.assert_array_equal(
                np.concatenate([batch[key] for batch in host_batches]), whole[key]
            )


def test_bucketed_evaluation_visits_every_example_once_on_every_host():
    arrays = _sequences()
    buckets = data.length_buckets(arrays, ("inputs", "targets"), BOUNDARIES)
    seen = []
    for host in range(2):
        with (
            mock.patch.object(data.parallel, "process_count", return_value=2),
            mock.patch.object(data.parallel, "process_index", return_value=host),
        ):
            for batch in data.eval_batches(arrays, 64, buckets):
                seen.extend(batch["index"][batch["mask"] == 1].tolist())
    assert sorted(seen) == list(range(NUM_EXAMPLES))


def _identity_predict_step(state, batch):
    """Predictions that name their example: its index and its inputs padded back to WIDTH."""
    del state
    inputs = jax.numpy.pad(batch["inputs"], ((0, 0), (0, WIDTH - batch["inputs"].shape[1])))
    return jax.numpy.concatenate([batch["index"][:, None], inputs], axis=1)


def test_bucketed_predictions_come_back_in_split_order():
    arrays = _sequences()
    buckets = data.length_buckets(arrays, ("inputs", "targets"), BOUNDARIES)
    mesh = parallel.make_mesh({})
    predictions = evaluation.predictions_of_split(
        jax.jit(_identity_predict_step), {}, arrays, 64, mesh, buckets
    )
    np.testing.assert_array_equal(predictions[:, 0], np.arange(NUM_EXAMPLES))
    np.testing.assert_array_equal(predictions[:, 1:], arrays["inputs"])


@pytest.fixture(scope="module")
def tiny_translation_setup():
    from experiments.seq2seq import task as seq2seq
    from experiments.seq2seq.models.transformer import Transformer

    model = Transformer(
        input_vocab_size=50, target_vocab_size=50, num_layers=1, width=16, num_heads=2,
        mlp_width=32, max_length=WIDTH,
    )  # fmt: skip
    task = Task(
        load_data=None,
        create_model=None,
        model_inputs=seq2seq.model_inputs,
        loss=functools.partial(seq2seq.loss, label_smoothing=0.1),
        metric_sums=seq2seq.metric_sums,
        summarize=seq2seq.summarize,
        sequence_keys=("inputs", "targets"),
    )
    import optax

    arrays = _sequences()
    example = {key: value[:1] for key, value in arrays.items()}
    state = steps.create_train_state(jax.random.PRNGKey(0), model, task, example, optax.sgd(0.1))
    return model, task, state, arrays


def test_loss_of_a_bucketed_batch_equals_the_loss_of_the_full_width_batch(
    tiny_translation_setup,
):
    model, task, state, arrays = tiny_translation_setup
    buckets = data.length_buckets(arrays, ("inputs", "targets"), BOUNDARIES)
    mesh = parallel.make_mesh({})
    eval_step = jax.jit(functools.partial(steps.eval_step, model=model, task=task))
    device_state = parallel.put_replicated(state, mesh)
    bucketed = evaluation.metrics_of_split(eval_step, device_state, arrays, 64, task, mesh, buckets)
    full_width = evaluation.metrics_of_split(eval_step, device_state, arrays, 64, task, mesh)
    assert bucketed["loss"] == pytest.approx(full_width["loss"], rel=1e-6)
    assert bucketed["token_accuracy"] == pytest.approx(full_width["token_accuracy"], rel=1e-6)
