"""The training loop's view of the steps since the last log: metrics, speed, divergence."""

import time

import jax
import numpy as np
from absl import logging

from research.core.task import Task
from research.errors import UserError
from research.runtime import parallel

# Steps dispatched ahead of the host. Unbounded, a CPU with fewer cores than simulated devices
# can start a later step's collectives on some devices while others still wait in an earlier
# one, and the all-reduce times out; two keep the devices busy without that.
MAX_STEPS_IN_FLIGHT = 2


class TrainingDivergedError(UserError, FloatingPointError):
    """The loss or a gradient became NaN or infinite."""


class Interval:
    """The step outputs since the last log: divergence check, metrics and speed.

    Each `add` holds the outputs of one dispatch: one step, or `steps_per_dispatch` steps
    stacked on a leading axis.
    """

    def __init__(self, first_step: int, steps_per_dispatch: int = 1):
        self.first_step, self.start, self.outputs, self._host = first_step, time.time(), [], []
        self.steps_per_dispatch, self._fetched_dispatches = steps_per_dispatch, 0

    def add(self, outputs: dict) -> None:
        self.outputs.append(outputs)
        if len(self.outputs) > MAX_STEPS_IN_FLIGHT:
            jax.block_until_ready(self.outputs[-MAX_STEPS_IN_FLIGHT - 1])

    def _fetched(self) -> dict:
        """Host copies of the outputs, each leaf `[steps, ...]` over the interval's steps (each
        dispatch fetched and joined once: the divergence check and the log both read them)."""
        new = self.outputs[self._fetched_dispatches :]
        if new:
            for outputs in new:
                host = parallel.to_host(outputs)
                if self.steps_per_dispatch == 1:
                    host = jax.tree.map(lambda leaf: np.asarray(leaf)[None], host)
                self._host.append(host)
            self._host = [jax.tree.map(lambda *leaves: np.concatenate(leaves), *self._host)]
            self._fetched_dispatches = len(self.outputs)
        return self._host[0]

    def first_nonfinite_step(self) -> int | None:
        """The 1-based step number whose loss or gradient was not finite, if any."""
        finite = self._fetched()["diagnostics"]["all_finite"]
        return None if finite.all() else self.first_step + 1 + int(np.argmin(finite))

    def summarize(self, task: Task, done: int) -> dict[str, float]:
        """Training metrics over the interval; starts the next interval at `done`."""
        fetched = self._fetched()
        sums = {
            name: float(np.sum(values, dtype=np.float64))
            for name, values in fetched["sums"].items()
        }
        diagnostics = fetched["diagnostics"]
        now = time.time()
        metrics = {
            **task.summarize_checked(sums),
            "grad_norm": float(np.mean(diagnostics["grad_norm"])),
            "learning_rate": float(diagnostics["learning_rate"][-1]),
            **(
                {"loss_scale": float(diagnostics["loss_scale"][-1])}
                if "loss_scale" in diagnostics
                else {}
            ),
            "steps_per_second": (done - self.first_step) / (now - self.start),
        }
        self.first_step, self.start, self.outputs, self._host = done, now, [], []
        self._fetched_dispatches = 0
        return metrics


def raise_if_diverged(interval: Interval, last_saved: int | None, config) -> None:
    """Stops training at a non-finite loss or gradient unless such steps are skipped."""
    if config.skip_nonfinite_steps:
        return
    bad_step = interval.first_nonfinite_step()
    if bad_step is not None:
        kept = (
            f"the checkpoint of step {last_saved} is intact"
            if last_saved
            else "no checkpoint had been saved yet"
        )
        raise TrainingDivergedError(
            f"The loss or a gradient became NaN or infinite at step {bad_step}; {kept}: lower "
            "the learning rate, set --config.grad_clip_norm, or set "
            "--config.skip_nonfinite_steps=True."
        )


def log_progress(done: int, num_steps: int, train_metrics: dict[str, float], speed) -> None:
    """One line; the ETA uses `speed`, the rate since the first step compiled."""
    logging.info(
        "step %d/%d  loss %.5g  %.1f steps/s  ETA %s",
        done,
        num_steps,
        train_metrics["loss"],
        speed,
        time.strftime("%H:%M:%S", time.gmtime((num_steps - done) / speed)),
    )
