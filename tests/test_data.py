"""Batches are pure functions of (seed, step); evaluation counts every example once."""

import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.core import data


def test_training_order_is_a_pure_function_of_seed_and_step():
    first = [data.train_batch_indices(100, 32, seed=7, step=step) for step in range(10)]
    again = [data.train_batch_indices(100, 32, seed=7, step=step) for step in reversed(range(10))]
    assert all(np.array_equal(a, b) for a, b in zip(first, reversed(again), strict=True))
    other_seed = data.train_batch_indices(100, 32, seed=8, step=0)
    assert not np.array_equal(first[0], other_seed)


def test_each_epoch_visits_every_example_once():
    # 100 examples, batches of 20: steps 0-4 are epoch 0, steps 5-9 epoch 1.
    for epoch in range(2):
        stream = np.concatenate(
            [data.train_batch_indices(100, 20, seed=3, step=5 * epoch + s) for s in range(5)]
        )
        assert sorted(stream) == list(range(100))


def test_batch_that_straddles_two_epochs_takes_the_end_of_one_and_start_of_next():
    epoch0 = np.random.default_rng([5, 0]).permutation(10)
    epoch1 = np.random.default_rng([5, 1]).permutation(10)
    # Batch 2 of size 4 covers stream positions 8..11.
    batch = data.train_batch_indices(10, 4, seed=5, step=2)
    np.testing.assert_array_equal(batch, np.concatenate([epoch0[8:], epoch1[:2]]))


def test_hosts_read_disjoint_rows_that_together_form_the_global_batch():
    train = {"x": np.arange(50) * 10}
    rows = []
    for host in range(2):
        with (
            mock.patch.object(data.parallel, "process_count", return_value=2),
            mock.patch.object(data.parallel, "process_index", return_value=host),
        ):
            rows.append(data.train_batch(train, 8, seed=0, step=3)["x"])
    global_batch = data.train_batch(train, 8, seed=0, step=3)["x"]
    np.testing.assert_array_equal(np.concatenate(rows), global_batch)


def test_eval_batches_pad_the_last_batch_and_mask_the_padding():
    arrays = {"x": np.arange(10, dtype=np.float32)}
    batches = list(data.eval_batches(arrays, 4))
    assert [len(b["x"]) for b in batches] == [4, 4, 4]
    masks = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(masks, [1] * 10 + [0] * 2)
    values = np.concatenate([b["x"] for b in batches])
    assert (values * masks).sum() == arrays["x"].sum()


def test_eval_batches_split_over_hosts_count_each_example_once():
    arrays = {"x": np.arange(11, dtype=np.float32)}
    seen = []
    for host in range(2):
        with (
            mock.patch.object(data.parallel, "process_count", return_value=2),
            mock.patch.object(data.parallel, "process_index", return_value=host),
        ):
            for batch in data.eval_batches(arrays, 4):
                seen.extend(batch["x"][batch["mask"] == 1].tolist())
    assert sorted(seen) == list(range(11))


def test_fingerprint_changes_when_any_value_changes():
    train = {"x": np.zeros(4, np.float32)}
    dataset = data.Dataset(train=train, eval_splits={"test": {"x": np.ones(2, np.float32)}})
    changed = data.Dataset(train=train, eval_splits={"test": {"x": np.array([1, 2], np.float32)}})
    assert data.fingerprint(dataset) == data.fingerprint(dataset)
    assert data.fingerprint(dataset) != data.fingerprint(changed)


def test_decoded_splits_are_read_back_without_tensorflow_and_decoded_again_when_stale(tmp_path):
    """The first load decodes MNIST-1D's TFRecords and keeps the arrays beside them; a later
    process reads those without importing TensorFlow; touching the files, or mocking tfds,
    makes the loader read the files again, and a mock never overwrites the kept arrays."""
    import subprocess
    import sys

    import tensorflow_datasets as tfds

    from experiments.image_classification import datasets
    from tests import helpers

    data_dir = str(tmp_path)
    first = data.load_tfds_arrays("mnist1d", "train", data_dir, datasets.Mnist1d)
    script = (
        "import sys; from research.core import data; "
        "from experiments.image_classification import datasets; "
        f"a = data.load_tfds_arrays('mnist1d', 'train', {data_dir!r}, datasets.Mnist1d); "
        "print(data.fingerprint(data.Dataset(a, {}, {})), 'tensorflow' in sys.modules)"
    )
    later = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=helpers.REPO_ROOT,
        env=helpers.subprocess_environment(), timeout=300,
    )  # fmt: skip
    assert later.returncode == 0, later.stderr[-2000:]
    assert later.stdout.split() == [data.fingerprint(data.Dataset(first, {}, {})), "False"]

    decodes = []
    original = data._read_tfrecord
    with mock.patch.object(data, "_read_tfrecord", lambda *a: decodes.append(1) or original(*a)):
        folder = tmp_path / "mnist1d" / "1.0.0"
        os.utime(folder / "dataset_info.json")  # as a re-prepared dataset would be
        again = data.load_tfds_arrays("mnist1d", "train", data_dir, datasets.Mnist1d)
        assert len(decodes) == 1 and data.fingerprint(data.Dataset(again, {}, {})) == (
            data.fingerprint(data.Dataset(first, {}, {}))
        )
        data.load_tfds_arrays("mnist1d", "train", data_dir, datasets.Mnist1d)
        assert len(decodes) == 1  # kept again under the new key
        kept_file = folder / "decoded_arrays.train.npz"
        kept_file.write_bytes(kept_file.read_bytes()[:1000])  # a damaged copy
        damaged = data.load_tfds_arrays("mnist1d", "train", data_dir, datasets.Mnist1d)
        assert len(decodes) == 2 and np.array_equal(damaged["signal"], first["signal"])
        with tfds.testing.mock_data(num_examples=5):
            mocked = data.load_tfds_arrays("mnist1d", "train", data_dir, datasets.Mnist1d)
        assert len(mocked["signal"]) == 5
        kept = data.load_tfds_arrays("mnist1d", "train", data_dir, datasets.Mnist1d)
        assert len(decodes) == 3 and np.array_equal(kept["signal"], first["signal"])


def test_hash_order_is_a_permutation_for_every_size():
    for size in (1, 2, 3, 7, 8, 9, 100, 353, 1024, 1025):
        orders = {
            (seed, epoch, stream): data.epoch_permutation(size, seed, epoch, "hash", stream)
            for seed in (0, 1) for epoch in (0, 1) for stream in (0, 1)
        }  # fmt: skip
        for order in orders.values():
            np.testing.assert_array_equal(np.sort(order), np.arange(size))
        if size >= 100:  # seed, epoch and stream each change the order
            assert len({order.tobytes() for order in orders.values()}) == len(orders)


def test_hash_order_shuffles_like_a_random_permutation():
    """Statistics a random permutation meets (the order is fixed, so this cannot flake): every
    example's mean position is near the middle, about one example per epoch stays where it
    was, and the rank correlations between the orders of any two epochs spread as those of
    independent permutations do. With four rounds instead of six that spread was 23% wide."""
    size, epochs = 100, 400
    orders = np.stack([data.epoch_permutation(size, 3, e, "hash") for e in range(epochs)])
    positions = np.argsort(orders, axis=1)  # positions[e, i]: where example i sits in epoch e
    # Each mean has standard deviation 29 / sqrt(400) = 1.44 about 49.5.
    assert np.abs(positions.mean(axis=0) - 49.5).max() < 7
    assert 300 < (orders == np.arange(size)).sum() < 500  # 400 expected
    # Between independent permutations: mean 0, standard deviation 1 / sqrt(size - 1).
    correlations = np.corrcoef(positions)[np.triu_indices(epochs, 1)]
    assert abs(correlations.mean()) < 0.005
    assert abs(correlations.std() * np.sqrt(size - 1) - 1) < 0.05


@pytest.mark.parametrize(
    "size, batch, count", [(353, 32, 100), (100, 8, 1), (7, 4, 3), (4000, 128, 10)]
)
def test_devices_draw_the_hash_order_rows_the_host_would_send(size, batch, count):
    """`device_train_indices` (XLA, inside a compiled function) equals `host_train_indices`
    (numpy), bit for bit, at steps whose batches straddle epochs."""

    def draw(step):
        return data.device_train_indices(step, size, batch, seed=5, count=count)

    drawn = jax.jit(draw)
    for step in (0, 1, 3, 11, 1000, 123457):
        on_devices = np.asarray(drawn(jnp.int32(step)))
        host = data.host_train_indices(size, batch, 5, step, count, "hash")
        np.testing.assert_array_equal(on_devices.reshape(host.shape), host)
