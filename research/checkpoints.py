"""Saving and restoring the train state with orbax; the last K checkpoints are kept.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a
checkpoint being written when the process dies is never the one restored.
"""

import os

import jax
import orbax.checkpoint as ocp

from research.steps import TrainState


class Checkpointer:
    """Checkpoints of one workdir; every process takes part, as orbax requires."""

    def __init__(self, directory: str, keep: int):
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState) -> None:
        """Saves a host copy of `state` (asynchronously; `wait` blocks until written)."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, step: int, like: TrainState) -> TrainState:
        """The state saved at `step`, with the structure and dtypes of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
