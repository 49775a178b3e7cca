"""Saving and restoring the train state with orbax; the last K checkpoints are kept.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a
checkpoint being written when the process dies is never the one restored. Before a restore the
checkpoint's recorded shapes are compared with the model's: a checkpoint of another model stops
the launch and is left where it is. Only a checkpoint whose bytes cannot be read (truncated or
damaged later) is moved aside, and the previous one is restored.
"""

import dataclasses
import os
import shutil
from collections.abc import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from research.core import parameters
from research.core.steps import TrainState
from research.errors import UserError
from research.runtime import parallel
from research.runtime.workdir import params_sha256

CORRUPT_DIR = "corrupt_checkpoints"
ITEM = "default"  # the folder orbax gives a single saved item inside a step's folder


class CheckpointError(UserError, OSError):
    """A checkpoint could not be written or no checkpoint could be read."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint of a different model: nothing is moved, the user decides."""


Shapes = dict[str, tuple[int, ...]]


def expected_shapes(tree) -> Shapes:
    """{"params/encoder/kernel": shape} for every array leaf of a state or parameter tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {parameters.path_name(path): tuple(np.shape(leaf)) for path, leaf in leaves}


def _metadata_shapes(tree, prefix: str = "") -> Shapes:
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    elif tree is None:  # an empty optimizer state
        return {}
    else:
        return {prefix: tuple(tree.shape)}
    shapes: Shapes = {}
    for key, value in items:
        shapes.update(_metadata_shapes(value, f"{prefix}/{key}" if prefix else str(key)))
    return shapes


def _first_mismatch(saved: Shapes, expected: Shapes) -> str | None:
    """A sentence fragment naming the first path whose shape differs, or None if none does."""
    # Parameters first: they name the layer that changed.
    for path in sorted(set(saved) | set(expected), key=lambda p: (not p.startswith("params"), p)):
        if saved.get(path) != expected.get(path):
            there, here = saved.get(path, "absent"), expected.get(path, "absent")
            return f"{path} is {there} in the checkpoint but {here} in this model"
    return None


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _abstract(like) -> object:
    """Shapes, dtypes and shardings of `like` as restore targets: global arrays or
    `jax.ShapeDtypeStruct`s keep their sharding (the restoring run's mesh, whatever mesh
    saved the checkpoint); host arrays are restored whole onto every device."""

    def target(leaf):
        sharding = getattr(leaf, "sharding", None) or parallel.replicated_on_all_devices()
        return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=sharding)

    return jax.tree.map(target, like)


def _read_only_manager(directory: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_handlers=ocp.StandardCheckpointHandler(),
    )


class Checkpointer:
    """Checkpoints of one workdir; every process takes part, as orbax requires."""

    def __init__(self, directory: str, keep: int):
        self.directory = os.path.abspath(directory)
        self._keep = keep
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True),
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState) -> None:
        """Starts saving `state` (global arrays: each process writes the shards it holds,
        nothing is gathered); `wait` blocks until it is written."""
        if step in self._manager.all_steps():
            return
        try:
            self._manager.save(step, args=ocp.args.StandardSave(state))
        except Exception as error:
            self._manager.wait_until_finished()  # let earlier checkpoints finish writing
            raise self._write_error(step, error) from error

    def _write_error(self, step: int, error: Exception) -> CheckpointError:
        return CheckpointError(
            f"Could not write the checkpoint of step {step} to {self.directory} ({error}); "
            "earlier checkpoints are intact: free disk space or fix the directory, then "
            "launch the same command again to resume."
        )

    def wait(self) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            raise self._write_error(self.latest_step() or -1, error) from error

    def restore_latest(self, like: TrainState) -> TrainState | None:
        """The newest readable checkpoint as a state shaped like `like`, or None if none.

        Raises `CheckpointMismatchError` (moving nothing) when a checkpoint holds another model.
        """
        abstract = _abstract(like)
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                saved = _metadata_shapes(self._manager.item_metadata(step).tree)
            except Exception as error:  # orbax raises many types for damaged files
                self._report_unreadable(step, error)
                continue
            mismatch = _first_mismatch(saved, expected_shapes(like))
            if mismatch:
                raise CheckpointMismatchError(
                    f"The checkpoint of step {step} in {self.directory} holds another model "
                    f"({mismatch}); it was left untouched: launch into a new --workdir (or "
                    "--init_from a run of this model), or go back to the config and code that "
                    "wrote it."
                )
            try:
                state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as error:
                self._report_unreadable(step, error)
                continue
            logging.info("Restored the checkpoint of step %d from %s.", step, self.directory)
            return state
        return None

    def _report_unreadable(self, step: int, error: Exception) -> None:
        logging.warning(
            "The checkpoint of step %d is unreadable (%s); it was moved to %s and the one "
            "before it is tried.",
            step,
            _short(error),
            CORRUPT_DIR,
        )
        self._set_aside(step)

    def _set_aside(self, step: int) -> None:
        """Moves a damaged checkpoint out of the way (kept for inspection, not deleted)."""
        parallel.sync_hosts(f"set_aside_{step}")
        if parallel.process_index() == 0:
            destination = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR, str(step))
            shutil.rmtree(destination, ignore_errors=True)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), destination)
        parallel.sync_hosts(f"set_aside_done_{step}")
        self._manager.close()
        self._manager = self._open()

    def close(self) -> None:
        """Waits for checkpoint writes in flight, then closes (again: does nothing)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def saved_steps(directory: str) -> list[int]:
    """The steps of the complete checkpoints in `directory`, oldest first (read-only)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def restore_state(directory: str, step: int, like: TrainState) -> TrainState:
    """The checkpoint of `step` shaped like `like`, opened read-only (nothing is moved)."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(
            os.path.join(os.path.abspath(directory), str(step), ITEM), _abstract(like)
        )


@dataclasses.dataclass
class InitializedFrom:
    """What `restore_model_from` did with each array (paths within their collection)."""

    step: int
    restored: list[str]
    reinitialized: list[str]  # matched by the `reinitialize` patterns: fresh
    absent: list[str]  # not in the other run: fresh
    unused: list[str]  # in the other run, not in this model
    params_sha256: str = ""  # of the other run's parameters, as in its summary.json


def restore_model_from(
    directory: str, like: TrainState, reinitialize: tuple[str, ...] = (), step: int | None = None
) -> tuple[TrainState, InitializedFrom]:
    """`like` with the parameters and model state of the checkpoint of `step` in `directory`
    (the newest complete one when None: a run still training keeps adding them).

    Arrays are matched by path; those whose path within its collection ("Dense_1/kernel",
    "BatchNorm_0/mean") a `reinitialize` pattern matches, and those the checkpoint lacks, keep
    their values in `like`. Opens `directory` read-only: nothing there is created, moved or
    written. The optimizer state is not read, so the other run may have used another optimizer.
    Raises `CheckpointError` when there is no checkpoint and `CheckpointMismatchError` naming
    the first other array whose shape differs.
    """
    steps = saved_steps(directory)
    if not steps:
        raise CheckpointError(
            f"{directory} holds no checkpoint; pass the workdir of a run that saved one."
        )
    if step is not None and step not in steps:
        raise CheckpointError(
            f"{directory} has no checkpoint of step {step} (it holds steps "
            f"{', '.join(map(str, steps))}); pass one of those, or the run without @STEP for "
            "its newest."
        )
    step = steps[-1] if step is None else step
    manager = _read_only_manager(directory)
    try:
        saved_tree = manager.item_metadata(step).tree
        # A run with moving averages is evaluated with them: those are what it passes on.
        averaged = bool(saved_tree.get("ema"))
        wanted = {"params": like.params, "model_state": like.model_state}
        saved = {
            path: shape
            for path, shape in _metadata_shapes(
                saved_tree["ema"] if averaged else saved_tree
            ).items()
            if path.split("/")[0] in wanted
        }
        expected = expected_shapes(wanted)
        report, fresh = InitializedFrom(step, [], [], [], []), set()
        for path, shape in expected.items():
            name = shown_name(path)
            if parameters.matches(reinitialize, _within_collection(path)):
                report.reinitialized.append(name)
                fresh.add(path)
            elif path not in saved:
                report.absent.append(name)
                fresh.add(path)
            elif saved[path] != shape:
                raise CheckpointMismatchError(
                    f"--init_from={os.path.dirname(directory)}: {name} is {saved[path]} in "
                    f"its checkpoint of step {step} but {shape} in this model; add a pattern "
                    "matching it to config.init.reinitialize to initialize it fresh, or pass "
                    "--init_from a run of this architecture."
                )
            else:
                report.restored.append(name)
        report.unused = [shown_name(path) for path in saved if path not in expected]
        everywhere = parallel.replicated_on_all_devices()
        abstract = jax.tree.map(
            lambda metadata: jax.ShapeDtypeStruct(
                metadata.shape, metadata.dtype, sharding=everywhere
            ),
            saved_tree,
        )
        restored = parallel.to_host(manager.restore(step, args=ocp.args.StandardRestore(abstract)))
    finally:
        manager.close()
    if averaged:
        restored = restored["ema"]
    report.params_sha256 = params_sha256(restored["params"])

    def take(collection):
        def value(key_path, leaf):
            path = f"{collection}/{parameters.path_name(key_path)}"
            if path in fresh:
                return leaf
            source = restored
            for name in path.split("/"):
                source = source[name]
            return np.asarray(source, dtype=leaf.dtype)

        return value

    params = jax.tree_util.tree_map_with_path(take("params"), like.params)
    model_state = jax.tree_util.tree_map_with_path(take("model_state"), like.model_state)
    restored_state = like.replace(params=params, model_state=model_state)
    if like.ema:  # this run's moving averages start at what it starts from
        restored_state = restored_state.replace(ema={"params": params, "model_state": model_state})
    return restored_state, report


def _within_collection(path: str) -> str:
    """What patterns match: 'Dense_1/kernel' for params/Dense_1/kernel, 'BatchNorm_0/mean'
    for model_state/batch_stats/BatchNorm_0/mean."""
    parts = path.split("/")
    return "/".join(parts[1:] if parts[0] == "params" else parts[2:])


def shown_name(path: str) -> str:
    """What the log shows: 'Dense_1/kernel', 'batch_stats/BatchNorm_0/mean'."""
    return path.split("/", 1)[1]


def average_of_last(directory: str, count: int, like: TrainState) -> tuple[TrainState, list[int]]:
    """`like` with the mean parameters of the newest `count` checkpoints, and their steps.

    Averaging the weights of the last few checkpoints smooths the noise of the final steps
    (Vaswani et al. 2017 average the last 5 or 20); the mean is taken in float64.
    """
    if like.ema:
        raise CheckpointError(
            "This run evaluates moving averages of its parameters (config.ema_decay), which "
            "checkpoint averaging would ignore; average the checkpoints of a run without them."
        )
    chosen = saved_steps(directory)[-count:]
    if not chosen:
        raise CheckpointError(f"No checkpoint in {directory} to average.")
    total = None
    for step in chosen:
        params = jax.tree.map(
            lambda leaf: np.asarray(leaf, np.float64),
            parallel.to_host(restore_state(directory, step, like).params),
        )
        total = params if total is None else jax.tree.map(np.add, total, params)
    mean = jax.tree.map(
        lambda summed, leaf: (summed / len(chosen)).astype(leaf.dtype), total, like.params
    )
    return like.replace(params=mean), chosen
