"""The one module that knows about devices, hosts and `jax.pmap`.

Arrays that enter a pmapped function carry a leading axis of size `local_device_count()`;
this module puts them there (`replicate`, `shard`) and takes them off (`unreplicate`),
written as the JAX pmap migration guide recommends for the jit/shard_map-based pmap.
"""

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS_NAME = "batch"

PyTree = Any


def initialize_distributed(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    heartbeat_timeout_seconds: int = 30,
) -> None:
    """Joins a multi-process run; with no arguments JAX detects the cluster (TPU, SLURM, MPI).

    A process that stops answering for `heartbeat_timeout_seconds` makes the others exit with
    an error instead of waiting forever in a collective.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )


def exit_with_error(code: int) -> None:
    """Ends this process with `code`; in a multi-process run, abruptly.

    JAX's graceful shutdown looks like a normal exit to the other processes, which would then
    wait at their next meeting point until it times out (minutes). Leaving without it lets the
    coordination service stop them within seconds, so a failing run ends everywhere, fast.
    """
    if several_processes():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def several_processes() -> bool:
    """Whether this process joined a run of several (without starting the backend if not)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def local_device_count() -> int:
    return jax.local_device_count()


def global_device_count() -> int:
    return jax.device_count()


def device_description() -> dict[str, Any]:
    """Facts about the devices a run used, for `run.json`."""
    return {
        "platform": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
    }


@functools.cache
def _local_sharding() -> NamedSharding:
    mesh = Mesh(np.array(jax.local_devices()), (AXIS_NAME,))
    return NamedSharding(mesh, PartitionSpec(AXIS_NAME))


def replicate(tree: PyTree) -> PyTree:
    """Copies every leaf to each local device: `[...]` -> `[local_devices, ...]`."""
    count = local_device_count()

    def put(leaf):
        leaf = np.asarray(leaf)
        return jax.device_put(np.broadcast_to(leaf, (count, *leaf.shape)), _local_sharding())

    return jax.tree.map(put, tree)


def unreplicate(tree: PyTree) -> PyTree:
    """The first local device's copy of each leaf as a host array: `[devices, ...]` -> `[...]`."""
    return jax.tree.map(lambda leaf: np.asarray(leaf.addressable_shards[0].data)[0], tree)


def shard(tree: PyTree, *, steps: bool = False) -> PyTree:
    """Splits this host's batch: `[batch, ...]` -> `[devices, batch / devices, ...]`.

    With `steps`, leaves hold the batches of several steps, `[steps, batch, ...]` ->
    `[devices, steps, batch / devices, ...]`.
    """
    count = local_device_count()

    def put(leaf):
        if steps:
            size = leaf.shape[1]
            assert size % count == 0, (leaf.shape, count)
            split = leaf.reshape(leaf.shape[0], count, size // count, *leaf.shape[2:])
            return jax.device_put(np.swapaxes(split, 0, 1), _local_sharding())
        assert leaf.shape[0] % count == 0, (leaf.shape, count)
        return jax.device_put(
            leaf.reshape(count, leaf.shape[0] // count, *leaf.shape[1:]), _local_sharding()
        )

    return jax.tree.map(put, tree)


def pmap(function: Callable, *, donate_argnums: tuple[int, ...] = ()) -> Callable:
    """Maps `function` over the local devices; collectives use the axis `AXIS_NAME`."""
    return jax.pmap(function, axis_name=AXIS_NAME, donate_argnums=donate_argnums)


def mean_over_devices(tree: PyTree) -> PyTree:
    """Inside a pmapped function: the mean of each leaf over all devices of all hosts."""
    return jax.lax.pmean(tree, AXIS_NAME)


def sum_over_devices(tree: PyTree) -> PyTree:
    """Inside a pmapped function: the sum of each leaf over all devices of all hosts."""
    return jax.lax.psum(tree, AXIS_NAME)


def device_index() -> jax.Array:
    """Inside a pmapped function: this device's index among all devices of all hosts."""
    return jax.lax.axis_index(AXIS_NAME)


def host_slice(global_batch_size: int) -> slice:
    """The rows of a global batch that this host reads."""
    per_host = global_batch_size // process_count()
    start = process_index() * per_host
    return slice(start, start + per_host)


def gather_rows(local_rows: np.ndarray) -> np.ndarray:
    """Every host's rows of a global batch, in global order: `[host_rows, ...]` -> `[rows, ...]`."""
    if process_count() == 1:
        return local_rows
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(local_rows))
    return gathered.reshape(-1, *local_rows.shape[1:])


def sync_hosts(name: str) -> None:
    """Waits until every host reaches this point (a no-op with one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def wait_for_processes(name: str, timeout_s: float = 600.0) -> None:
    """Waits until every process reaches this point, through the coordination service.

    Unlike `sync_hosts` this uses no collective: the first collective builds the CPU (gloo)
    context, which gives up after 30 s, so a host still preparing data (or importing
    TensorFlow) that much later than the others would end the run. Meeting here first keeps
    the hosts within moments of each other. A no-op with one process.
    """
    if process_count() > 1:
        from jax._src import distributed  # the client of jax.distributed.initialize

        distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))
