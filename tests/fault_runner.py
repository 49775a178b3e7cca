"""Runs an experiment with one injected fault (for tests/test_fault_injection.py).

python -m tests.fault_runner CONFIG OVERRIDES_JSON DATA_DIR WORKDIR FAULT STEP
"""

import json
import os
import signal
import sys

import jax
import orbax.checkpoint as ocp

from research.core import data
from research.runtime import checkpoints, preemption
from research.runtime import workdir as workdir_lib
from tests.helpers import load_config, run_experiment


def _wrap(owner, name, before=None, after=None) -> None:
    """Calls `before(*args)` and `after(*args)` around every call of `owner.name`."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if before:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after:
            after(*args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def _die() -> None:
    os._exit(137)  # like kill -9: no clean-up, writes in flight are cut off


def _signal_self(*_) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def inject(fault: str, at_step: int) -> None:
    if fault == "none":
        return
    if fault == "tfds_mock_data":  # not a fault: tfds datasets replaced by `at_step` examples
        import tensorflow_datasets as tfds

        global _MOCK  # kept alive: a collected context manager would undo its patches
        _MOCK = tfds.testing.mock_data(num_examples=at_step)
        _MOCK.__enter__()
        return
    if fault == "kill_in_training":

        def kill_at(train, size, seed, step, *rest):
            if step == at_step:
                _die()

        _wrap(data, "train_batch", before=kill_at)
    elif fault == "kill_after_checkpoint":  # once the checkpoint of `at_step` is complete

        def kill_once_written(checkpointer, step, *args, **kwargs):
            if step == at_step:
                checkpointer.wait()
                _die()

        _wrap(checkpoints.Checkpointer, "save", after=kill_once_written)
    elif fault == "kill_in_checkpoint_write":

        def kill_after_save_starts(manager, step, *args, **kwargs):
            if step == at_step:
                _die()

        _wrap(ocp.CheckpointManager, "save", after=kill_after_save_starts)
    elif fault == "disk_full_in_metrics_write":

        def disk_full_at(writer, step, *rest):
            if step == at_step:
                raise OSError(28, "No space left on device")

        _wrap(workdir_lib.Writer, "_append_metrics", before=disk_full_at)
    elif fault == "sigterm_in_data_preparation":
        from experiments.regression import task

        _wrap(task, "load_data", before=_signal_self)
    elif fault == "sigterm_in_compilation":
        original_jit = jax.jit

        def jit(function, **kwargs):
            compiled = original_jit(function, **kwargs)
            if "donate_argnums" not in kwargs:  # only the train step
                return compiled

            def signal_then_call(*args):
                _signal_self()
                return compiled(*args)

            return signal_then_call

        jax.jit = jit
    else:
        raise ValueError(f"unknown fault {fault!r}")


def main() -> None:
    config_path, overrides, data_dir, run_dir, fault, at_step = sys.argv[1:]
    inject(fault, int(at_step))
    config = load_config(config_path, **json.loads(overrides))
    config.data_dir = data_dir
    try:
        run_experiment(config, run_dir)
    except preemption.Preempted as stop:  # as launch.py does: a clean stop
        print(stop, file=sys.stderr)


if __name__ == "__main__":
    main()
