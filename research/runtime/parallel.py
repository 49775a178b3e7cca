"""The one module that knows about devices, hosts and how arrays are laid out over them.

A run has one `Mesh` over every device of every process, with two named axes: `data` and
`fsdp`. A batch is one global `jax.Array` whose rows are split over both axes (each process
contributes its own rows); the train state is replicated over `data` and, with
`config.mesh.fsdp` > 1, its large arrays are split over `fsdp` (fully sharded data
parallelism). Steps are `jax.jit` functions of these global arrays: what `pmap` + `pmean` did
by hand, XLA now derives from the shardings.
"""

import functools
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.errors import UserError

DATA, FSDP = "data", "fsdp"
MESH_AXES = (DATA, FSDP)
BATCH_AXES = (DATA, FSDP)  # a batch's rows are split over every device
# Arrays with fewer elements stay replicated under FSDP: splitting them saves little memory
# and costs a gather each.
MIN_SHARDED_ELEMENTS = 1024

PyTree = Any


class MeshError(UserError, ValueError):
    """A `config.mesh` the devices cannot form or the model cannot use."""


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


def fix_cpu_threads(batch_groups: int) -> None:
    """Gives XLA's CPU thread pool the same size on any device count, before the backend starts.

    XLA:CPU runs matrix products on a pool of max(cores, devices in this process) threads
    (`NPROC`, when set, replaces the core count), and how a product splits and adds its terms
    depends on that size: simulating 4 devices on 2 cores changes the last bits of a weight
    gradient. With `config.batch_groups` (gradients that do not depend on the device count),
    the pool gets max(cores, batch_groups) threads, enough for every device count that divides
    it. An `NPROC` the user set is kept; other platforms ignore it.
    """
    if batch_groups and "NPROC" not in os.environ:
        os.environ["NPROC"] = str(max(_usable_cores(), batch_groups))


def _usable_cores() -> int:
    """The cores this process may run on (the count XLA uses); all of them where Python
    cannot tell (macOS has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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


def mesh_shape(mesh_config, device_count: int) -> dict[str, int]:
    """{"data": d, "fsdp": f} with d * f = `device_count`; one axis may be -1 (the rest).

    Raises `MeshError` naming the key and the fix.
    """
    sizes = {axis: mesh_config.get(axis, -1 if axis == DATA else 1) for axis in MESH_AXES}
    for axis, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
            raise MeshError(
                f"config.mesh.{axis}={size!r} must be a positive integer or -1 (the devices "
                f"left); set --config.mesh.{axis}=-1."
            )
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise MeshError(
            "config.mesh.data and config.mesh.fsdp are both -1; give one of them a size."
        )
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free and device_count % fixed == 0:
        sizes[free[0]] = device_count // fixed
    if math.prod(sizes.values()) != device_count:
        shown = " x ".join(f"{axis} {size}" for axis, size in sizes.items())
        raise MeshError(
            f"config.mesh ({shown}) does not cover the {device_count} devices; make the sizes "
            f"multiply to {device_count}, for example --config.mesh.data=-1 "
            f"--config.mesh.fsdp=<a divisor of {device_count}>."
        )
    return sizes


def make_mesh(mesh_config) -> Mesh:
    """The run's mesh over all devices of all processes.

    Devices are ordered by process, so each process holds a contiguous block of every
    batch's rows: the block `host_slice` names.
    """
    devices = sorted(jax.devices(), key=lambda device: (device.process_index, device.id))
    sizes = mesh_shape(mesh_config, len(devices))
    return Mesh(np.array(devices).reshape([sizes[axis] for axis in MESH_AXES]), MESH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def replicated_on_all_devices() -> NamedSharding:
    """Every device of every process holds the whole array (for reading checkpoints outside
    a run's mesh)."""
    devices = sorted(jax.devices(), key=lambda device: (device.process_index, device.id))
    return NamedSharding(Mesh(np.array(devices), ("all",)), PartitionSpec())


def batch_sharding(mesh: Mesh, *, steps: bool = False) -> NamedSharding:
    """Rows `[batch, ...]` split over every device; with `steps`, `[steps, batch, ...]`."""
    spec = PartitionSpec(None, BATCH_AXES) if steps else PartitionSpec(BATCH_AXES)
    return NamedSharding(mesh, spec)


def in_order(stacked: PyTree) -> PyTree:
    """The sum over the leading axis of every leaf, added first to last: ((x0 + x1) + x2)...
    (float addition is not associative, and a reduction's order is the compiler's choice)."""
    return jax.tree.map(
        lambda leaf: functools.reduce(lambda a, b: a + b, [leaf[i] for i in range(len(leaf))]),
        stacked,
    )


def block_sums(mesh: Mesh, block_fn: Callable, groups: int) -> Callable:
    """`f(shared, batch)`: the sum of `block_fn(shared, block, index)` over the `groups` blocks
    of consecutive rows of `batch` (`[rows, ...]`, split over every device), added first
    block to last and replicated.

    Each device runs `block_fn` on its own blocks one after another, so every block is the
    same program on any mesh whose device count divides `groups`; the outputs are gathered
    (a copy) before the fixed-order sum. The result's bits do not depend on the device count.
    `shared` (parameters, keys) must be replicated.
    """
    devices = mesh.size

    def per_device(shared, batch, indices):
        blocks = jax.tree.map(
            lambda leaf: leaf.reshape(groups // devices, -1, *leaf.shape[1:]), batch
        )
        outputs = jax.lax.map(lambda block: block_fn(shared, *block), (blocks, indices))
        return in_order(jax.lax.all_gather(outputs, BATCH_AXES, tiled=True))

    spread = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(BATCH_AXES), PartitionSpec(BATCH_AXES)),
        out_specs=PartitionSpec(),
        check_vma=False,
    )
    return lambda shared, batch: spread(shared, batch, jnp.arange(groups))


def _fsdp_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """The largest dimension `fsdp` divides is split over the `fsdp` axis; small arrays and
    arrays it divides nowhere are replicated."""
    if fsdp == 1 or math.prod(shape) < MIN_SHARDED_ELEMENTS:
        return PartitionSpec()
    candidates = [axis for axis, size in enumerate(shape) if size % fsdp == 0]
    if not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda a: shape[a])
    return PartitionSpec(*(FSDP if a == axis else None for a in range(len(shape))))


def state_shardings(abstract_state: PyTree, mesh: Mesh) -> PyTree:
    """A `NamedSharding` for every leaf of a train state (shapes are enough): replicated over
    `data`, and split over `fsdp` where `_fsdp_spec` says."""
    fsdp = mesh.shape[FSDP]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, _fsdp_spec(tuple(np.shape(leaf)), fsdp)), abstract_state
    )


def check_fsdp_divides(abstract_state: PyTree, mesh: Mesh) -> None:
    """Refuses an `fsdp` size that splits no array of the state (nothing would be sharded)."""
    fsdp = mesh.shape[FSDP]
    if fsdp == 1:
        return
    shapes = [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(abstract_state)]
    if not any(_fsdp_spec(shape, fsdp) != PartitionSpec() for shape in shapes):
        raise MeshError(
            f"config.mesh.fsdp={fsdp} divides no dimension of any array of this model with "
            f"{MIN_SHARDED_ELEMENTS} or more elements, so nothing would be sharded; choose a "
            "size that divides the model's widths (for example 2 or 4), or "
            "--config.mesh.fsdp=1."
        )


def put(tree: PyTree, shardings: PyTree) -> PyTree:
    """Host values (the same on every process) as global arrays laid out by `shardings`."""

    def put_leaf(leaf, sharding):
        leaf = np.asarray(leaf)
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

    return jax.tree.map(put_leaf, tree, shardings)


def put_replicated(tree: PyTree, mesh: Mesh) -> PyTree:
    """Host values (the same on every process) copied to every device of `mesh`."""
    return put(tree, jax.tree.map(lambda _: replicated(mesh), tree))


def put_batch(tree: PyTree, mesh: Mesh, *, steps: bool = False) -> PyTree:
    """This process's rows `[host_batch, ...]` (or `[steps, host_batch, ...]` with `steps`)
    as the global batch `[batch, ...]` split over every device; no data crosses hosts."""
    sharding = batch_sharding(mesh, steps=steps)
    count = process_count()
    if count == 1:  # this process's rows are the whole batch: one transfer, no index maps
        return jax.device_put(tree, sharding)

    def put_leaf(leaf):
        leaf = np.asarray(leaf)
        shape = list(leaf.shape)
        shape[1 if steps else 0] *= count
        return jax.make_array_from_process_local_data(sharding, leaf, tuple(shape))

    return jax.tree.map(put_leaf, tree)


def to_host(tree: PyTree) -> PyTree:
    """Global arrays as numpy arrays holding their whole value, on every process.

    A replicated array is read from this process's first copy; an array split across
    processes is gathered from all of them (then every process must call this).
    """

    def fetch(leaf):
        if not isinstance(leaf, jax.Array):
            return np.asarray(leaf)
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        if leaf.is_fully_addressable:
            return np.asarray(leaf)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(fetch, tree)


def state_bytes(state: PyTree) -> dict[str, int]:
    """{"state_bytes": the whole tree, "state_bytes_per_device": the most one device holds}
    measured from the live arrays' shard shapes."""
    total, per_device = 0, {}
    for leaf in jax.tree.leaves(state):
        total += leaf.size * leaf.dtype.itemsize
        shard_bytes = math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        for device in leaf.sharding.device_set:
            per_device[device.id] = per_device.get(device.id, 0) + shard_bytes
    return {"state_bytes": int(total), "state_bytes_per_device": int(max(per_device.values()))}


def host_slice(global_batch_size: int) -> slice:
    """The rows of a global batch that this host reads (the block its devices hold)."""
    per_host = global_batch_size // process_count()
    start = process_index() * per_host
    return slice(start, start + per_host)


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
