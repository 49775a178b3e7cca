"""Saving and restoring the train state with orbax; the last K checkpoints are kept.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a
checkpoint being written when the process dies is never the one restored. A checkpoint that
is complete but unreadable (truncated or corrupted later) is moved aside and the previous one
is restored.
"""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from research import parallel
from research.steps import TrainState

CORRUPT_DIR = "corrupt_checkpoints"


class CheckpointError(OSError):
    """A checkpoint could not be written or no checkpoint could be read."""


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
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState) -> None:
        """Starts saving a host copy of `state`; `wait` blocks until it is written."""
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
        """The newest readable checkpoint as a state shaped like `like`, or None if none."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as error:  # orbax raises many types for damaged files
                logging.warning(
                    "The checkpoint of step %d is unreadable (%s); restoring the one before.",
                    step,
                    error,
                )
                self._set_aside(step)
                continue
            logging.info("Restored the checkpoint of step %d from %s.", step, self.directory)
            return state
        return None

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
        self._manager.close()


def saved_steps(directory: str) -> list[int]:
    """The steps of the complete checkpoints in `directory`, oldest first (read-only)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def restore_params(directory: str, step: int, like: TrainState) -> TrainState:
    """The checkpoint of `step` shaped like `like`, opened read-only (nothing is moved)."""
    abstract = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf), np.asarray(leaf).dtype), like
    )
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.join(directory, str(step), "default"), abstract)


def average_of_last(directory: str, count: int, like: TrainState) -> tuple[TrainState, list[int]]:
    """`like` with the mean parameters of the newest `count` checkpoints, and their steps.

    Averaging the weights of the last few checkpoints smooths the noise of the final steps
    (Vaswani et al. 2017 average the last 5 or 20); the mean is taken in float64.
    """
    chosen = saved_steps(directory)[-count:]
    if not chosen:
        raise CheckpointError(f"No checkpoint in {directory} to average.")
    total = None
    for step in chosen:
        params = jax.tree.map(
            lambda leaf: np.asarray(leaf, np.float64), restore_params(directory, step, like).params
        )
        total = params if total is None else jax.tree.map(np.add, total, params)
    mean = jax.tree.map(
        lambda summed, leaf: (summed / len(chosen)).astype(leaf.dtype), total, like.params
    )
    return like.replace(params=mean), chosen
