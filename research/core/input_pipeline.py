"""Where the training loop's batches come from: one `TrainingSource` interface over the input
pipelines, chosen from `config.input_pipeline` and the training split, never by the task.

"memory": batches cut from the split held in memory; "grain": batches read from the split's
files by Grain (research/core/streaming.py); "device": the split copied to every device and
each batch gathered inside the step. Every pipeline gives batch `s` the same rows.
"""

import functools
import resource
from collections.abc import Callable
from typing import Protocol

import ml_collections
import numpy as np
from absl import logging

from research.core import augmentation as augmentation_lib
from research.core import data, steps, streaming
from research.core.config import ConfigError
from research.core.splits import Split
from research.runtime import parallel

PIPELINES = ("auto", "memory", "grain", "device")
# "auto" streams a split read from files whose prepared arrays would take more than this share
# of the memory the process may still use.
AUTO_MEMORY_SHARE = 0.5


def requested(config: ml_collections.ConfigDict) -> str:
    """`config.input_pipeline`, checked."""
    pipeline = config.input_pipeline
    if pipeline not in PIPELINES:
        raise ConfigError(
            f"config.input_pipeline '{pipeline}' is unknown; choose one of {', '.join(PIPELINES)}."
        )
    return pipeline


def reads_at_random(config: ml_collections.ConfigDict) -> bool:
    """Whether the config asks for Grain, which reads the rows of a split at random from its
    files: a task then hands records of files that allow it (ArrayRecord), not arrays."""
    return requested(config) == "grain"


def memory_available_bytes() -> int:
    """What this process may still allocate: free memory, or less under an RLIMIT_DATA."""
    import psutil

    available = psutil.virtual_memory().available
    limit, _ = resource.getrlimit(resource.RLIMIT_DATA)
    if limit != resource.RLIM_INFINITY:
        with open("/proc/self/status") as status:
            used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData"))
        available = min(available, limit - used)
    return available


def choose(config: ml_collections.ConfigDict, dataset: data.Dataset) -> tuple[str, data.Dataset]:
    """The run's pipeline ("memory", "grain" or "device"; logged) and the dataset as it reads
    it: Grain reads every split from its files, the others hold every split in memory.

    "auto" is "grain" for a training split read from files whose prepared arrays would take
    more than `AUTO_MEMORY_SHARE` of the memory this process may still use, else "memory".
    """
    pipeline, train = requested(config), dataset.train
    what = f"{config.get('dataset', config.task)}'s train split"
    if pipeline == "grain" and not train.read_from_files:
        raise ConfigError(
            f"Task '{config.task}' reads its data into memory only; set "
            "--config.input_pipeline=memory."
        )
    if pipeline != "auto":
        logging.info("Reading %s through the %s input pipeline (config).", what, pipeline)
    else:
        prepared_bytes = train.num_examples * sum(
            array.nbytes for array in train.take(slice(0, 1)).values()
        )
        available = memory_available_bytes()
        pipeline = "memory"
        if train.read_from_files and prepared_bytes > AUTO_MEMORY_SHARE * available:
            pipeline = "grain"
            logging.warning(
                "Reading %s through Grain: its arrays (%.0f MB) would take more than half of "
                "the %.0f MB this process may still use.",
                what, prepared_bytes / 2**20, available / 2**20,
            )  # fmt: skip
        else:
            logging.info("Reading %s into memory (%.0f MB).", what, prepared_bytes / 2**20)
    return pipeline, dataset if pipeline == "grain" else dataset.held_in_memory()


class TrainingSource(Protocol):
    """The training batches of a run, whichever pipeline makes them.

    The loop calls `train_step(state, device_batches(step), rng, *resident)` with the
    `train_step` that `step_function` made, every `steps_per_dispatch` steps.
    """

    pipeline: str
    resident: tuple  # what the train step takes after its rng: the split on every device

    def batch(self, step: int) -> data.Arrays:
        """This host's rows of the global batch at `step`, prepared and augmented as the step
        sees them: `[host_batch, ...]`."""
        ...

    def device_batches(self, step: int):
        """What one call of the train step takes from `step` on, as global arrays on the mesh."""
        ...

    def step_function(self, train_step: Callable) -> Callable:
        """`train_step(state, batches, rng)` made to take `device_batches(step)` and `resident`."""
        ...

    def close(self) -> None: ...


class _HostBatches:
    """Batches made on the host and put on the mesh, `steps_per_dispatch` of them stacked."""

    resident = ()

    def __init__(self, config: ml_collections.ConfigDict, mesh):
        self.config, self.mesh = config, mesh
        self.count = config.steps_per_dispatch

    def batch(self, step: int) -> data.Arrays:
        raise NotImplementedError

    def host_batches(self, step: int) -> data.Arrays:
        """`batch(step)`, or with `steps_per_dispatch = k` the batches of steps `step .. step +
        k - 1` stacked: `[k, host_batch, ...]`."""
        if self.count == 1:
            return self.batch(step)
        batches = [self.batch(s) for s in range(step, step + self.count)]
        return {key: np.stack([b[key] for b in batches]) for key in batches[0]}

    def device_batches(self, step: int):
        return parallel.put_batch(self.host_batches(step), self.mesh, steps=self.count > 1)

    def step_function(self, train_step: Callable) -> Callable:
        return train_step

    def close(self) -> None:
        pass


class InMemory(_HostBatches):
    """Batches cut from the training split held in memory (grouped by length with `buckets`)
    and augmented on the host."""

    pipeline = "memory"

    def __init__(self, split: Split, config, mesh, augmentation, buckets):
        super().__init__(config, mesh)
        self.split, self.augmentation, self.buckets = split, augmentation, buckets

    def batch(self, step: int) -> data.Arrays:
        config = self.config
        batch = data.train_batch(
            self.split, config.batch_size, config.seed, step, self.buckets,
            config.train_order,
        )  # fmt: skip
        rows = parallel.host_slice(config.batch_size)
        return augmentation_lib.augment(
            batch, self.augmentation, config.batch_size, config.seed, step, rows
        )


class Streamed(_HostBatches):
    """Batches read from the split's files by Grain, and put on the mesh by a thread ahead of
    the loop (in the training thread those took 8-9% of Fashion-MNIST's loop, mostly waiting
    for the GIL that Grain's own threads in this process hold; benchmarks/NOTES.md)."""

    pipeline = "grain"

    def __init__(self, split: Split, config, mesh, augmentation):
        super().__init__(config, mesh)
        workers = config.input_workers
        self.stream = streaming.stream(split, config, augmentation, workers)
        self._prefetcher = streaming.Prefetcher(
            super().device_batches, stride=self.count, stop=config.num_train_steps
        )

    def batch(self, step: int) -> data.Arrays:
        return self.stream.batch(step)

    def device_batches(self, step: int):
        return self._prefetcher.get(step)

    def close(self) -> None:
        self._prefetcher.close()
        self.stream.close()


class DeviceResident:
    """The training split copied to every device; each step gathers its own rows there, from
    indices the host sends or, in the "hash" train order, that the devices draw themselves."""

    pipeline = "device"

    def __init__(self, split: Split, config, mesh):
        self.split, self.config, self.mesh = split, config, mesh
        self.count = config.steps_per_dispatch
        self.drawn_on_device = config.train_order == "hash"
        self.resident = (parallel.put_replicated(split.arrays, mesh),)

    def batch(self, step: int) -> data.Arrays:
        config = self.config
        return data.train_batch(
            self.split, config.batch_size, config.seed, step, None,
            config.train_order,
        )  # fmt: skip

    def device_batches(self, step: int):
        if self.drawn_on_device:
            indices = {}  # the step draws its rows itself (`data.device_train_indices`)
        else:
            indices = data.host_train_indices(
                self.split.num_examples, self.config.batch_size, self.config.seed, step,
                self.count, self.config.train_order,
            )  # fmt: skip
            indices = indices[0] if self.count == 1 else indices
        return parallel.put_batch(indices, self.mesh, steps=self.count > 1)

    def step_function(self, train_step: Callable) -> Callable:
        draw = None
        if self.drawn_on_device:
            draw = functools.partial(
                data.device_train_indices,
                num_train_examples=self.split.num_examples,
                global_batch_size=self.config.batch_size,
                seed=self.config.seed,
                count=self.count,
            )
        return functools.partial(
            steps.train_step_on_resident_data, step=train_step,
            batch_sharding=parallel.batch_sharding(self.mesh, steps=self.count > 1),
            draw_indices=draw,
        )  # fmt: skip

    def close(self) -> None:
        pass


def training_source(
    pipeline: str,
    split: Split,
    config: ml_collections.ConfigDict,
    mesh,
    *,
    augmentation: augmentation_lib.Augmentation | None,
    buckets: data.LengthBuckets | None,
) -> TrainingSource:
    """The `TrainingSource` of `pipeline` (from `choose`) over the training split."""
    if pipeline == "grain":
        return Streamed(split, config, mesh, augmentation)
    if pipeline == "device":
        return DeviceResident(split, config, mesh)
    return InMemory(split, config, mesh, augmentation, buckets)
