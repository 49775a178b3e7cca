"""Datasets of splits (research/core/splits.py), batches as pure functions of (seed, step).

A training batch depends only on the seed and the step, so a resumed run sees exactly the
batches an uninterrupted one would. Each host takes its own rows of every global batch.
Evaluation batches are padded and masked so that every example counts exactly once.
"""

import dataclasses
import functools
import hashlib
import os
import sys
import zipfile
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from research.core.splits import Arrays, Split, as_split
from research.errors import UserError
from research.runtime import parallel

MASK_KEY = "mask"


class DatasetMissingError(UserError, FileNotFoundError):
    """A dataset that must be prepared in `data_dir` is not there."""


class MalformedDataError(UserError, ValueError):
    """Data files that exist but cannot be used as they are; the message names them."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A task's data: the training split, the evaluated splits and facts models need.

    Each split is a `Split` (its raw rows and their preparation); a task may hand arrays held
    in memory instead, which become one. `info` is the same whichever input pipeline reads
    the splits.
    """

    train: Split
    eval_splits: dict[str, Split]  # split name ("valid", "test") -> split
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. num_classes
    # What the task's score_predictions needs besides predictions (a type the task defines,
    # e.g. the tokenizer and reference texts), or None.
    evaluation_context: Any = None

    def __post_init__(self):
        object.__setattr__(self, "train", as_split(self.train))
        splits = {name: as_split(split) for name, split in self.eval_splits.items()}
        object.__setattr__(self, "eval_splits", splits)

    def held_in_memory(self) -> "Dataset":
        """Every split prepared whole and held in memory."""
        return dataclasses.replace(
            self,
            train=self.train.held_in_memory(),
            eval_splits={name: split.held_in_memory() for name, split in self.eval_splits.items()},
        )


def num_examples(split: Split | Arrays) -> int:
    """The number of rows of a split (or of arrays held in memory)."""
    return as_split(split).num_examples


def fingerprint(dataset: Dataset) -> str:
    """SHA-256 over every array of every split (of splits read from files: their files'
    description), in a fixed order."""
    digest = hashlib.sha256()
    splits = {"train": dataset.train, **dataset.eval_splits}
    for name in sorted(splits):
        splits[name].update_digest(digest, name)
    return digest.hexdigest()


# How each epoch orders the training examples (`config.train_order`):
# "numpy": a permutation drawn by `np.random.default_rng([seed, epoch])` (PCG64);
# "hash": position p of the epoch holds example `hash_permutation(seed, epoch, p)`, a keyed
#   bijection that numpy and XLA compute to the same bits, so a device can find the examples
#   of its own batch rows itself (`device_train_indices`), with no sort and no transfer.
TRAIN_ORDERS = ("numpy", "hash")
# One odd 32-bit constant per round (multiplying by one is a bijection modulo any power of
# two). Six rounds: with four, the orders of different epochs were measurably correlated
# (tests/test_data.py, `test_hash_order_shuffles_like_a_random_permutation`).
_MULTIPLIERS = (0x2C1B3C6D, 0x297A2D39, 0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F)


def _mix32(x):
    """MurmurHash3's finalizer on uint32 numpy or jax arrays: a bijection of 32-bit words in
    which every input bit flips about half of the output bits."""
    x = x ^ (x >> 16)
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _round_keys(seed: int, epochs, stream: int) -> list:
    """One key per round of `_permute_bits` for each of `epochs` (a uint32 array)."""
    digest = hashlib.sha256(f"train_order/{seed}/{stream}".encode()).digest()
    epoch_keys = _mix32(epochs ^ np.uint32(int.from_bytes(digest[:4], "little")))
    return [_mix32(epoch_keys ^ np.uint32(r + 1)) for r in range(len(_MULTIPLIERS))]


def _permute_bits(x, keys: list, bits: int):
    """A keyed bijection of [0, 2**bits): each round xors a key, multiplies by an odd number
    and xors the high half into the low half, all modulo 2**bits (each step invertible)."""
    mask, shift = np.uint32(2**bits - 1), max(1, bits // 2)
    for key, multiplier in zip(keys, _MULTIPLIERS, strict=True):
        x = ((x ^ key) * np.uint32(multiplier)) & mask
        x = x ^ (x >> shift)
    return x


def hash_permutation(seed: int, epochs, positions, num_examples: int, stream: int = 0):
    """The examples at `positions` of `epochs` in the "hash" order (uint32 numpy or jax
    arrays of one shape, each position below `num_examples`).

    `_permute_bits` permutes the smallest power of two at least `num_examples`; a result
    past the end goes through it again until it lands inside ("cycle walking"), which makes
    a bijection of [0, num_examples). Each pass leaves under half of them outside.
    """
    bits = max(1, (num_examples - 1).bit_length())
    keys = _round_keys(seed, epochs, stream)
    examples = _permute_bits(positions, keys, bits)
    if isinstance(examples, np.ndarray):
        outside = examples >= num_examples
        while outside.any():  # only the outside ones: fewer every pass
            examples[outside] = _permute_bits(examples[outside], [k[outside] for k in keys], bits)
            outside = examples >= num_examples
        return examples
    return jax.lax.while_loop(
        lambda x: jnp.any(x >= num_examples),
        lambda x: jnp.where(x >= num_examples, _permute_bits(x, keys, bits), x),
        examples,
    )


@functools.lru_cache(maxsize=4)
def epoch_permutation(
    num_train_examples: int, seed: int, epoch: int, order: str = "numpy", stream: int = 0
) -> np.ndarray:
    """The order of epoch `epoch` (cached: every step of an epoch reads the same one).

    `stream` > 0 draws another permutation of the same epoch (bucketing shuffles its batches).
    """
    if order == "numpy":
        words = [seed, epoch, stream] if stream else [seed, epoch]
        permutation = np.random.default_rng(words).permutation(num_train_examples)
    else:
        positions = np.arange(num_train_examples, dtype=np.uint32)
        epochs = np.full(num_train_examples, epoch, np.uint32)
        permutation = hash_permutation(seed, epochs, positions, num_train_examples, stream)
        permutation = permutation.astype(np.int64)
    permutation.flags.writeable = False
    return permutation


def train_batch_indices(
    num_train_examples: int, global_batch_size: int, seed: int, step: int, order: str = "numpy"
) -> np.ndarray:
    """Example indices of the global training batch at `step`: `[global_batch_size]`.

    The examples form one stream of epochs, each a fresh permutation drawn from (seed, epoch)
    in the way `order` names; batch `step` is positions `[step * B, (step + 1) * B)` of that
    stream.
    """
    return _stream_indices(num_train_examples, global_batch_size, seed, step, 1, order)[0]


def _stream_indices(
    num_train_examples: int,
    global_batch_size: int,
    seed: int,
    step: int,
    count: int,
    order: str = "numpy",
) -> np.ndarray:
    """The global batches of steps `step .. step + count - 1`: `[count, global_batch_size]`."""
    start, stop = step * global_batch_size, (step + count) * global_batch_size
    pieces, position = [], start
    while position < stop:  # the stream's positions, epoch by epoch
        epoch, offset = divmod(position, num_train_examples)
        end = min(stop, (epoch + 1) * num_train_examples)
        permutation = epoch_permutation(num_train_examples, seed, epoch, order)
        pieces.append(permutation[offset : offset + end - position])
        position = end
    return np.concatenate(pieces).reshape(count, global_batch_size)


def host_train_indices(
    num_train_examples: int,
    global_batch_size: int,
    seed: int,
    step: int,
    count: int,
    order: str = "numpy",
) -> np.ndarray:
    """This host's example indices of the training batches of steps `step .. step + count
    - 1`, the rows `train_batch` takes: `[count, host_batch]` (int32)."""
    indices = _stream_indices(num_train_examples, global_batch_size, seed, step, count, order)
    return indices[:, parallel.host_slice(global_batch_size)].astype(np.int32)


def device_train_indices(
    step: jax.Array, num_train_examples: int, global_batch_size: int, seed: int, count: int
) -> jax.Array:
    """Inside a compiled step, in the "hash" order: the example indices of the global
    batches of steps `step .. step + count - 1`, `[count, global_batch_size]` (int32;
    `[global_batch_size]` when `count` is 1, as a single step takes them).

    The rows `host_train_indices` gives, found on the devices, so no indices cross from the
    host. Needs `num_train_examples * global_batch_size < 2**31` (positions are int32).
    """
    n, b = num_train_examples, global_batch_size
    step = step.astype(jnp.int32)
    # The call's first position, step * b, as (epoch, offset) without forming step * b.
    epoch = (step // n) * b + (step % n) * b // n
    offset = (step % n) * b % n
    positions = offset + b * jnp.arange(count)[:, None] + jnp.arange(b)[None, :]
    epochs = (epoch + positions // n).astype(jnp.uint32)
    examples = hash_permutation(seed, epochs, (positions % n).astype(jnp.uint32), n)
    indices = examples.astype(jnp.int32)
    return indices[0] if count == 1 else indices


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: epoch plans are cached
class LengthBuckets:
    """Sequence batches padded only as far as their longest row needs.

    `keys` name arrays `[examples, max_length]` padded with 0 at the end (token ids). Examples
    are grouped by `lengths` (the longest of their sequences) and a batch's sequences are cut
    to the smallest of `boundaries` that holds its longest row, so a step compiles once per
    boundary. Make one per set of arrays with `length_buckets`.
    """

    keys: tuple[str, ...]
    boundaries: tuple[int, ...]  # ascending padded lengths
    lengths: np.ndarray  # [examples]: the longest sequence of each example


def sequence_lengths(arrays: Arrays, keys: tuple[str, ...]) -> np.ndarray:
    """Per example, the position after the last non-zero entry of its longest sequence."""
    lengths = np.zeros(num_examples(arrays), np.int64)
    for key in keys:
        nonzero = arrays[key] != 0
        from_end = np.argmax(nonzero[:, ::-1], axis=1)
        length = np.where(nonzero.any(axis=1), nonzero.shape[1] - from_end, 0)
        lengths = np.maximum(lengths, length)
    return lengths


def length_buckets(arrays: Arrays, keys: tuple[str, ...], boundaries) -> LengthBuckets:
    """The `LengthBuckets` of `arrays`; the arrays' full width is always the last boundary."""
    width = max(arrays[key].shape[1] for key in keys)
    boundaries = sorted({int(b) for b in boundaries if 0 < b < width} | {width})
    return LengthBuckets(tuple(keys), tuple(boundaries), sequence_lengths(arrays, keys))


def padded_length(buckets: LengthBuckets, indices: np.ndarray) -> int:
    """The smallest boundary that holds the longest of the examples `indices`."""
    longest = int(buckets.lengths[indices].max())
    return next(b for b in buckets.boundaries if b >= longest)


def _take(split: Split | Arrays, indices: np.ndarray, buckets: LengthBuckets | None, length: int):
    """Prepared rows `indices` of a split, sequences cut to `length` when bucketed."""
    rows = as_split(split).take(indices)
    if buckets is not None:
        for key in buckets.keys:
            rows[key] = rows[key][:, :length]
    return rows


@functools.lru_cache(maxsize=2)
def _bucketed_epoch(
    buckets: LengthBuckets, global_batch_size: int, seed: int, epoch: int, order: str
):
    """The global batches of one bucketed epoch: `[batches, global_batch_size]` indices.

    A fresh permutation from (seed, epoch), stably sorted by length (so examples of one
    length meet in a new order every epoch), cut into batches whose order is then shuffled.
    The last `examples % global_batch_size` examples of the permutation sit this epoch out.
    """
    num_train_examples = len(buckets.lengths)
    num_batches = num_train_examples // global_batch_size
    examples = epoch_permutation(num_train_examples, seed, epoch, order)
    examples = examples[: num_batches * global_batch_size]
    examples = examples[np.argsort(buckets.lengths[examples], kind="stable")]
    batches = examples.reshape(num_batches, global_batch_size)
    batches = batches[epoch_permutation(num_batches, seed, epoch, order, stream=1)]
    batches.flags.writeable = False
    return batches


def bucketed_batch_indices(
    buckets: LengthBuckets, global_batch_size: int, seed: int, step: int, order: str = "numpy"
) -> np.ndarray:
    """Example indices of the bucketed global batch at `step`: `[global_batch_size]`."""
    num_batches = len(buckets.lengths) // global_batch_size
    assert num_batches > 0, "fewer training examples than one global batch"
    epoch, position = divmod(step, num_batches)
    return _bucketed_epoch(buckets, global_batch_size, seed, epoch, order)[position]


def train_batch(
    train: Split | Arrays,
    global_batch_size: int,
    seed: int,
    step: int,
    buckets: LengthBuckets | None = None,
    order: str = "numpy",
) -> Arrays:
    """This host's rows of the global training batch at `step`: `[host_batch, ...]`.

    With `buckets`, the batch holds examples of similar length and its sequences are cut to
    the padded length of the whole global batch, so every host's step has the same shape.
    """
    if buckets is None:
        indices = train_batch_indices(num_examples(train), global_batch_size, seed, step, order)
        length = 0
    else:
        indices = bucketed_batch_indices(buckets, global_batch_size, seed, step, order)
        length = padded_length(buckets, indices)
    return _take(train, indices[parallel.host_slice(global_batch_size)], buckets, length)


def eval_order(arrays: Split | Arrays, buckets: LengthBuckets | None = None) -> np.ndarray:
    """The order in which `eval_batches` visits the examples: by length when bucketed."""
    if buckets is None:
        return np.arange(num_examples(arrays))
    return np.argsort(buckets.lengths, kind="stable")


def eval_batches(
    arrays: Split | Arrays, global_batch_size: int, buckets: LengthBuckets | None = None
) -> Iterator[Arrays]:
    """This host's rows of each global evaluation batch, the last one padded.

    Every batch has `global_batch_size / process_count` rows and a `mask` that is 1.0 for
    real examples and 0.0 for padding, so weighted sums count each example exactly once.
    Examples come in `eval_order`; bucketed batches are cut to their own padded length.
    """
    order = eval_order(arrays, buckets)
    total = len(order)
    rows = parallel.host_slice(global_batch_size)
    for start in range(0, total, global_batch_size):
        positions = np.arange(start, start + global_batch_size)
        mask = (positions < total).astype(np.float32)
        # Padding repeats a real example of this batch, masked out.
        indices = order[np.minimum(positions, total - 1)]
        length = padded_length(buckets, indices) if buckets is not None else 0
        batch = _take(arrays, indices[rows], buckets, length)
        batch[MASK_KEY] = mask[rows]
        yield batch


class GeneratedLocally:
    """Mixin for tfds builders that generate their data on this machine: one log line in
    place of tfds's "Downloading and preparing dataset Unknown size" notices."""

    def _log_download_bytes(self) -> None:
        logging.info("Generating %s into %s (first use only).", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        pass


def import_tensorflow():
    """TensorFlow, for tfds's readers and writers: imported on first need (seconds), so runs
    on other data never pay for it; its C++ start-up notices (oneDNN, CPU features), written
    straight to stderr, are hidden while Python errors still show."""
    if "tensorflow" not in sys.modules:
        saved_stderr, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        try:
            import tensorflow as tf
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            os.close(null)
        tf.config.set_visible_devices([], "GPU")  # keep TensorFlow off accelerators JAX needs
    return sys.modules["tensorflow"]


def load_tfds_arrays(
    name: str, split: str, data_dir: str, builder_class: type | None = None
) -> Arrays:
    """One split of a tensorflow-datasets dataset as numpy arrays.

    `builder_class` is a builder that generates its data locally; it is prepared in
    `data_dir` on first use. Without it, `name` is a registered tfds dataset that must
    already be prepared in `data_dir`: nothing is downloaded.
    """
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(data_dir)
    if builder_class is not None:
        builder = builder_class(data_dir=data_dir)
        if not builder.is_prepared():
            import_tensorflow()
            builder.download_and_prepare()
    else:
        builder = tfds.builder(name, data_dir=data_dir)
    if str(getattr(builder.info.file_format, "value", "")) == "array_record":
        return _read_array_record(builder, split)
    cache = _DecodedSplit(builder, split)
    arrays = cache.read()
    if arrays is None:
        arrays = _read_tfrecord(builder, name, split, data_dir)
        cache.write(arrays)
    return arrays


class _DecodedSplit:
    """A split's decoded arrays kept beside its TFRecord files (`.npz`), so that later runs
    read them in a moment, without TensorFlow; keyed by the names, sizes and times of the
    split's files and dataset_info.json, so a re-prepared dataset is decoded afresh. No cache
    where the files cannot be listed, while tfds.testing.mock_data is active, or where the
    folder is read-only."""

    def __init__(self, builder, split: str):
        import tensorflow_datasets as tfds

        self.path, self.key = None, None
        reading = tfds.core.dataset_builder.DatasetBuilder.as_dataset
        if reading.__module__.startswith("tensorflow_datasets.testing"):
            return  # tfds.testing.mock_data: its arrays must never pass for the files'
        try:
            files = [str(path) for path in builder.info.splits[split].filepaths]
            folder = str(builder.data_dir)
            files.append(os.path.join(folder, "dataset_info.json"))
            stats = [(os.path.basename(f), os.stat(f)) for f in files]
            stats = [(name, stat.st_size, stat.st_mtime_ns) for name, stat in stats]
        except (KeyError, OSError, TypeError, ValueError):
            return
        self.path = os.path.join(folder, f"decoded_arrays.{split}.npz")
        self.key = hashlib.sha256(repr(stats).encode()).hexdigest()

    def read(self) -> Arrays | None:
        if self.path is None or not os.path.exists(self.path):
            return None
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                if str(stored["__key__"]) != self.key:
                    return None
                return {name: stored[name] for name in stored.files if name != "__key__"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged
            return None  # decoded again, and written anew

    def write(self, arrays: Arrays) -> None:
        if self.path is None or any(array.dtype == object for array in arrays.values()):
            return  # object arrays (strings) would need pickle to load
        temporary = f"{self.path}.{os.getpid()}.tmp.npz"
        try:
            np.savez(temporary, __key__=np.array(self.key), **arrays)
            os.replace(temporary, self.path)  # readers never see half a file
        except (OSError, TypeError):  # a read-only folder; a feature named like savez's "file"
            if os.path.exists(temporary):
                os.remove(temporary)


def _read_tfrecord(builder, name: str, split: str, data_dir: str) -> Arrays:
    import tensorflow_datasets as tfds

    import_tensorflow()
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


def _read_array_record(builder, split: str) -> Arrays:
    """A split prepared as ArrayRecord (random access, no tf.data) read whole."""
    source = builder.as_data_source(split=split)
    rows = [source[i] for i in range(len(source))]
    return {key: np.stack([np.asarray(row[key]) for row in rows]) for key in rows[0]}


def rows_of(split: Split | Arrays, indices: np.ndarray) -> Arrays:
    """Prepared rows `indices` of a split: `[len(indices), ...]`."""
    return _take(split, indices, None, 0)
