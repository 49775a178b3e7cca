"""The training loop's view of the steps since the last log: metrics, speed, divergence."""

import time

import jax
import numpy as np
from absl import logging

from research import parallel
from research.errors import UserError
from research.task import Task

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

    def _fetched(self) -> list[dict]:
        """Host copies of the outputs, each fetched once (checkpoints and logs both read them)."""
        for outputs in self.outputs[self._fetched_dispatches :]:
            host = parallel.unreplicate(outputs)
            if self.steps_per_dispatch == 1:
                self._host.append(host)
            else:
                count = self.steps_per_dispatch
                self._host += [jax.tree.map(lambda leaf, i=i: leaf[i], host) for i in range(count)]
        self._fetched_dispatches = len(self.outputs)
        return self._host

    def first_nonfinite_step(self) -> int | None:
        """The 1-based step number whose loss or gradient was not finite, if any."""
        finite = [bool(f["diagnostics"]["all_finite"]) for f in self._fetched()]
        return None if all(finite) else self.first_step + 1 + finite.index(False)

    def summarize(self, task: Task, done: int) -> dict[str, float]:
        """Training metrics over the interval; starts the next interval at `done`."""
        fetched = self._fetched()
        sums = {
            name: float(np.sum([f["sums"][name] for f in fetched], dtype=np.float64))
            for name in fetched[0]["sums"]
        }
        now = time.time()
        metrics = {
            **task.summarize_checked(sums),
            "grad_norm": float(np.mean([f["diagnostics"]["grad_norm"] for f in fetched])),
            "learning_rate": float(fetched[-1]["diagnostics"]["learning_rate"]),
            **(
                {"loss_scale": float(fetched[-1]["diagnostics"]["loss_scale"])}
                if "loss_scale" in fetched[-1]["diagnostics"]
                else {}
            ),
            "steps_per_second": (done - self.first_step) / (now - self.start),
        }
        self.first_step, self.start, self.outputs, self._host = done, now, [], []
        self._fetched_dispatches = 0
        return metrics


def raise_if_diverged(interval: Interval, last_saved: int | None, config) -> None:
    """Stops training at a non-finite loss or gradient unless such steps are skipped."""
    if config.get("skip_nonfinite_steps", False):
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
