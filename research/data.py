"""Datasets as in-memory numpy arrays, batches as pure functions of (seed, step).

A training batch depends only on the seed and the step, so a resumed run sees exactly the
batches an uninterrupted one would. Each host takes its own rows of every global batch.
Evaluation batches are padded and masked so that every example counts exactly once.
"""

import dataclasses
import functools
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from research import parallel

Arrays = dict[str, np.ndarray]  # every array has the same leading (example) dimension

MASK_KEY = "mask"


class DatasetMissingError(FileNotFoundError):
    """A dataset that must be prepared in `data_dir` is not there."""


class MalformedDataError(ValueError):
    """Data files that exist but cannot be used as they are; the message names them."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A task's data: the training split, the evaluated splits and facts models need."""

    train: Arrays
    eval_splits: dict[str, Arrays]  # split name ("valid", "test") -> arrays
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. num_classes


def num_examples(arrays: Arrays) -> int:
    sizes = {len(value) for value in arrays.values()}
    assert len(sizes) == 1, f"arrays of different lengths: {sizes}"
    return sizes.pop()


def fingerprint(dataset: Dataset) -> str:
    """SHA-256 over every array of every split, in a fixed order."""
    digest = hashlib.sha256()
    splits = {"train": dataset.train, **dataset.eval_splits}
    for split in sorted(splits):
        for key in sorted(splits[split]):
            array = np.ascontiguousarray(splits[split][key])
            digest.update(f"{split}/{key}/{array.dtype}/{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_train_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch `epoch` (cached: every step of an epoch reads the same one)."""
    permutation = np.random.default_rng([seed, epoch]).permutation(num_train_examples)
    permutation.flags.writeable = False
    return permutation


def train_batch_indices(
    num_train_examples: int, global_batch_size: int, seed: int, step: int
) -> np.ndarray:
    """Example indices of the global training batch at `step`: `[global_batch_size]`.

    The examples form one stream of epochs, each a fresh permutation drawn from (seed, epoch);
    batch `step` is positions `[step * B, (step + 1) * B)` of that stream.
    """
    positions = np.arange(step * global_batch_size, (step + 1) * global_batch_size)
    epochs, offsets = np.divmod(positions, num_train_examples)
    indices = np.empty(global_batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        permutation = _epoch_permutation(num_train_examples, seed, int(epoch))
        selected = epochs == epoch
        indices[selected] = permutation[offsets[selected]]
    return indices


def train_batch(train: Arrays, global_batch_size: int, seed: int, step: int) -> Arrays:
    """This host's rows of the global training batch at `step`: `[host_batch, ...]`."""
    indices = train_batch_indices(num_examples(train), global_batch_size, seed, step)
    host_indices = indices[parallel.host_slice(global_batch_size)]
    return {key: value[host_indices] for key, value in train.items()}


def eval_batches(arrays: Arrays, global_batch_size: int) -> Iterator[Arrays]:
    """This host's rows of each global evaluation batch, the last one padded.

    Every batch has `global_batch_size / process_count` rows and a `mask` that is 1.0 for
    real examples and 0.0 for padding, so weighted sums count each example exactly once.
    """
    total = num_examples(arrays)
    rows = parallel.host_slice(global_batch_size)
    for start in range(0, total, global_batch_size):
        positions = np.arange(start, start + global_batch_size)[rows]
        mask = (positions < total).astype(np.float32)
        positions = np.minimum(positions, total - 1)  # padding repeats a real row, masked out
        batch = {key: value[positions] for key, value in arrays.items()}
        batch[MASK_KEY] = mask
        yield batch


def load_tfds_arrays(
    name: str, split: str, data_dir: str, builder_class: type | None = None
) -> Arrays:
    """One split of a tensorflow-datasets dataset as numpy arrays.

    `builder_class` is a builder that generates its data locally; it is prepared in
    `data_dir` on first use. Without it, `name` is a registered tfds dataset that must
    already be prepared in `data_dir`: nothing is downloaded.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.set_visible_devices([], "GPU")  # keep TensorFlow off accelerators JAX needs
    data_dir = os.path.expanduser(data_dir)
    if builder_class is not None:
        builder = builder_class(data_dir=data_dir)
        builder.download_and_prepare()
    else:
        builder = tfds.builder(name, data_dir=data_dir)
    try:
        # Batches of a fixed size, concatenated: batch_size=-1 needs the split's size, which
        # tfds.testing.mock_data does not know.
        dataset = builder.as_dataset(split=split, batch_size=4096, shuffle_files=False)
    except AssertionError as error:  # tfds's "dataset not prepared"
        raise DatasetMissingError(
            f"Dataset '{name}' is not prepared in {data_dir}; prepare it there with "
            f"`tfds build {name} --data_dir={data_dir}` on a machine with network access "
            f"and copy the folder, or set --config.data_dir to where it is prepared."
        ) from error
    batches = list(tfds.as_numpy(dataset))
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}
