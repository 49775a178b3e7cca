"""Training batches read from ArrayRecord files by Grain worker processes, for splits too
large to hold in memory; batch `s` is the in-memory path's batch `s`, row for row.
"""

import contextlib
import dataclasses
import gc
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import flags

from research.core import augmentation as augmentation_lib
from research.core import data
from research.core.splits import Split
from research.runtime import parallel

ROWS_PER_READ = 256  # rows read at once when a split is read whole: bounded memory


def tfds_source(builder, split: str) -> "TfdsRecords":
    """The random-access source of a tfds split prepared as ArrayRecord."""
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format != "array_record":
        raise data.DatasetMissingError(
            f"Dataset '{builder.name}' in {builder.data_dir} is prepared as {file_format}, which "
            "Grain cannot read at random; prepare it with file_format='array_record' into "
            "another --config.data_dir, or set --config.input_pipeline=memory."
        )
    return TfdsRecords(builder.as_data_source(split=split).data_source, builder.info.features)


class TfdsRecords:
    """A tfds split's serialized rows (`splits.Records`), decoded a batch at a time by one TF
    function per process.

    tfds' own data source decodes row by row in Python: for Fashion-MNIST's PNG images that is
    1.8x the CPU of decoding the batch's rows in one `tf.function` (13 against 7 ms per 128; see
    benchmarks/NOTES.md), CPU the Grain workers take from the training step.
    """

    rows_per_read = ROWS_PER_READ

    def __init__(self, records, features):
        self.records, self.features, self._decode = records, features, None

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict:  # the compiled function stays in the process that made it
        return {**self.__dict__, "_decode": None}

    def read(self, indices) -> data.Arrays:
        """Rows `indices` (row numbers or a slice), decoded and stacked."""
        indices = [int(i) for i in np.arange(len(self))[indices]]
        if self._decode is None:
            tf = data.import_tensorflow()
            spec = tf.nest.map_structure(
                lambda info: tf.TensorSpec(info.shape, info.tf_dtype),
                self.features.get_tensor_info(),
            )
            self._decode = tf.function(
                lambda rows: tf.map_fn(
                    self.features.deserialize_example, rows, fn_output_signature=spec
                ),
                input_signature=[tf.TensorSpec([None], tf.string)],
            )
        rows = self._decode(np.array(self.records.__getitems__(indices), dtype=object))
        return {key: value.numpy() for key, value in rows.items()}


def read_whole(split: Split) -> data.Arrays:
    """Every prepared row of a split, in order, read `ROWS_PER_READ` rows at a time."""
    return split.arrays


def description(builder, split: str) -> str:
    """What identifies a prepared split: name, version, size and its files' sizes."""
    files = sorted(
        (name, os.path.getsize(os.path.join(builder.data_dir, name)))
        for name in os.listdir(builder.data_dir)
        if name.startswith(f"{builder.name}-{split}.")
    )
    text = f"{builder.name}/{builder.version}/{split}/{builder.info.splits[split].num_examples}"
    return text + "/" + hashlib.sha256(repr(files).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class BatchReader:
    """Builds this host's rows of the global batch at a step (in a Grain worker process)."""

    split: Split
    global_batch_size: int
    seed: int
    rows: slice  # this host's rows of every global batch
    augmentation: augmentation_lib.Augmentation | None
    order: str = "numpy"  # config.train_order

    def __call__(self, step: int) -> data.Arrays:
        step = int(step)
        # The in-memory path's own index function: the two paths cannot drift apart.
        indices = data.train_batch_indices(
            self.split.num_examples, self.global_batch_size, self.seed, step, self.order
        )
        batch = self.split.take(indices[self.rows])
        return augmentation_lib.augment(
            batch, self.augmentation, self.global_batch_size, self.seed, step, self.rows
        )


def _start_worker(worker_index: int, worker_count: int) -> None:
    """Grain worker start: end with the training process, even when it is killed with -9;
    import TensorFlow (which decodes the records) with its start-up notices hidden.

    A thread watches for the worker's parent to change. The kernel's parent-death signal
    (PR_SET_PDEATHSIG) would fire when the *thread* that started the worker ends, and Grain
    starts workers from its own threads, which end when the stream closes: workers were then
    killed with batches in flight, whose shared memory nobody unlinked ("leaked
    shared_memory objects" at exit). A watched worker instead stops as Grain asks it to.
    """
    del worker_index, worker_count
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)  # the training process is gone; its resource tracker cleans up

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()
    data.import_tensorflow()


class Stream:
    """`batch(step)` from a Grain iterator started at a step: its position is the step alone.

    Consecutive steps come from the running iterator (prefetched by `workers` processes); any
    other step starts a new iterator there, so a resumed run needs no saved iterator state.
    """

    def __init__(self, reader: BatchReader, num_steps: int, workers: int, prefetch: int = 2):
        self.reader, self.num_steps, self.workers, self.prefetch = (
            reader, num_steps, workers, prefetch
        )  # fmt: skip
        self._iterator, self._next_step = None, None

    def _start(self, step: int):
        import grain

        if not flags.FLAGS.is_parsed():  # Grain reads its absl flags; keep their defaults
            flags.FLAGS.mark_as_parsed()
        steps = grain.MapDataset.range(step, max(step + 1, self.num_steps))
        dataset = steps.map(self.reader).to_iter_dataset(
            grain.ReadOptions(num_threads=0 if self.workers else 1, prefetch_buffer_size=0)
        )
        if self.workers:
            dataset = dataset.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self.workers, per_worker_buffer_size=self.prefetch
                ),
                worker_init_fn=_start_worker,
            )
        return iter(dataset)

    def batch(self, step: int) -> data.Arrays:
        """This host's rows of the global batch at `step`: `[host_batch, ...]`."""
        if self._iterator is None or step != self._next_step:
            self.close()
            self._iterator = self._start(step)
        self._next_step = step + 1
        # Copied out of Grain's shared memory, whose segment is then unlinked at once: a
        # batch that outlives the stream (held by an error's traceback until exit) would
        # otherwise leave its segment to the resource tracker.
        return {key: np.array(value) for key, value in next(self._iterator).items()}

    def close(self) -> None:
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()
            del iterator
            # Grain's iterators hold their last batches in reference cycles; collected now,
            # their shared memory is unlinked before the process exits, which otherwise warns
            # of "leaked shared_memory objects" (the resource tracker removes them then).
            gc.collect()
            _finish_shared_memory_deletes()


def _finish_shared_memory_deletes() -> None:
    """Waits for the unlinks Grain queued on its one deleter thread (batches collected above):
    a task queued after them runs after them. Grain keeps that thread private."""
    from grain._src.python.ipc import shared_memory_array

    deleter = getattr(shared_memory_array.SharedMemoryArray, "_del_thread_pool", None)
    if deleter is not None:
        # "Pool not running" (shut down at exit): nothing is left to wait for.
        with contextlib.suppress(ValueError):
            deleter.apply(int)


class Prefetcher:
    """`get(key)` is `produce(key)`, made by a thread ahead of the loop for the keys `key`,
    `key + stride`, ... below `stop` (at most `depth` waiting); any other key restarts it there.

    For the streamed path the thread takes Grain's batch and puts it on the devices: in the
    training thread those took 8-9% of Fashion-MNIST's loop, mostly waiting for the GIL that
    Grain's own threads in this process hold (benchmarks/NOTES.md).
    """

    def __init__(self, produce: Callable[[int], Any], stride: int, stop: int, depth: int = 2):
        self.produce, self.stride, self.stop, self.depth = produce, stride, stop, depth
        self._thread = self._queue = self._stopping = self._next = None

    def _run(self, key: int, out: queue.Queue, stopping: threading.Event) -> None:
        """Fills `out` from `key` on; its own queue and event, so that a thread outliving
        `close` cannot feed its successor."""
        for at in range(key, self.stop, self.stride):
            try:
                item = (self.produce(at), None)
            except Exception as error:  # raised again by `get` in the training thread
                item = (None, error)
            while not stopping.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stopping.is_set() or item[1] is not None:
                return

    def get(self, key: int) -> Any:
        if self._thread is None or key != self._next:
            self.close()
            self._queue, self._stopping = queue.Queue(self.depth), threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(key, self._queue, self._stopping), daemon=True
            )
            self._thread.start()
        self._next = key + self.stride
        value, error = self._queue.get()
        if error is not None:
            self.close()
            raise error
        return value

    def close(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout=60)  # it ends after the batch it is making
        # Batches made ahead and never taken go with their queue: on a CPU their device
        # arrays can share the memory of Grain's batches, which must be freed before exit.
        self._thread = self._next = self._queue = self._stopping = None


def stream(split: Split, config, augmentation, workers: int) -> Stream:
    """The training `Stream` of `split` for `config` (batch size, seed, steps)."""
    reader = BatchReader(
        split, config.batch_size, config.seed, parallel.host_slice(config.batch_size),
        augmentation, config.train_order,
    )  # fmt: skip
    return Stream(reader, config.num_train_steps, workers)
