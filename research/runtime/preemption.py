"""Turns SIGTERM and SIGINT into a request to checkpoint and stop at the next step."""

import signal
import types

import numpy as np

from research.runtime import parallel


class Preempted(Exception):
    """Training stopped on a signal after saving a checkpoint; the message says how to resume."""


class SignalWatcher:
    """Records SIGTERM/SIGINT while installed; a second signal falls through to the default."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> "SignalWatcher":
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: types.FrameType | None) -> None:
        del frame
        self.received = number
        for signal_number, handler in self._previous.items():
            signal.signal(signal_number, handler)  # a second Ctrl-C interrupts at once

    def should_stop(self, at_sync_point: bool) -> bool:
        """With one process: whether a signal arrived. With several, hosts agree at sync points."""
        if parallel.process_count() == 1:
            return self.received is not None
        if not at_sync_point:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array(self.received is not None))
        return bool(np.any(flags))
