"""A split of a task's data: its raw rows, read at random, and the preparation that turns them
into the arrays the model takes. Data held in memory and data read from files are both a
`Split`, so every input pipeline and the evaluation read every split alike.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

Arrays = dict[str, np.ndarray]  # every array has the same leading (example) dimension


class Records(Protocol):
    """Raw rows at random: `read(indices)` stacks the rows `indices` (row numbers `[rows]`, or
    a slice) as `{feature: [rows, ...]}`."""

    # How many rows a whole read takes at once: bounded memory for files; None: all at once.
    rows_per_read: int | None

    def __len__(self) -> int: ...

    def read(self, indices) -> Arrays: ...


class ArrayRecords:
    """Rows of arrays held in memory, read by indexing them."""

    rows_per_read = None  # a whole read is the arrays themselves, not a copy

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        sizes = {len(value) for value in arrays.values()}
        assert len(sizes) == 1, f"arrays of different lengths: {sizes}"
        self.arrays, self._length = dict(arrays), sizes.pop()

    def __len__(self) -> int:
        return self._length

    def read(self, indices) -> Arrays:
        return {key: value[indices] for key, value in self.arrays.items()}


def unchanged(arrays: Arrays) -> Arrays:
    """The preparation of rows that are already the model's arrays."""
    return arrays


@dataclasses.dataclass(frozen=True, eq=False)
class Split(Mapping):
    """One split: `records` (raw rows at random, `Records`) and `prepare`, which turns stacked
    raw rows into the model's arrays (normalizing, casting, relabelling) row by row.

    `prepare` is pickled into Grain's worker processes, so it must be a module-level function
    or a `functools.partial` of one. `description` names the files the records are read from
    (for the run's fingerprint); None for records held in memory, fingerprinted by their values.

    As a mapping, a split is its whole prepared arrays (`arrays`, prepared once on first use):
    `split["inputs"]` is `[examples, ...]`.
    """

    records: Records
    prepare: Callable[[Arrays], Arrays] = unchanged
    description: str | None = None

    @classmethod
    def in_memory(cls, arrays: Mapping[str, np.ndarray]) -> "Split":
        """The split of arrays already prepared and held in memory."""
        return cls(ArrayRecords(arrays))

    @property
    def num_examples(self) -> int:
        return len(self.records)

    @property
    def read_from_files(self) -> bool:
        """Whether the rows are read from files when asked for (Grain can stream them)."""
        return self.description is not None

    def raw(self, indices) -> Arrays:
        """Raw rows `indices`, stacked: `{feature: [rows, ...]}`."""
        return self.records.read(indices)

    def take(self, indices) -> Arrays:
        """Prepared rows `indices`: `{key: [rows, ...]}`."""
        return self.prepare(self.records.read(indices))

    @functools.cached_property
    def arrays(self) -> Arrays:
        """Every prepared row, in order, prepared `records.rows_per_read` rows at a time."""
        count = self.num_examples
        chunk = self.records.rows_per_read or max(count, 1)
        parts = [
            self.take(slice(start, min(start + chunk, count)))
            for start in range(0, max(count, 1), chunk)
        ]
        if len(parts) == 1:
            return parts[0]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def held_in_memory(self) -> "Split":
        """This split prepared whole and held in memory."""
        return Split.in_memory(self.arrays)

    def update_digest(self, digest: Any, name: str) -> None:
        """Adds this split, called `name`, to a hashlib digest: the files' description, or
        every array (data too large for memory is not read whole to be hashed)."""
        if self.read_from_files:
            digest.update(f"{name}/{self.description}".encode())
            return
        for key in sorted(self.arrays):
            array = np.ascontiguousarray(self.arrays[key])
            digest.update(f"{name}/{key}/{array.dtype}/{array.shape}".encode())
            digest.update(array.tobytes())

    # The mapping of whole prepared arrays; splits compare and hash as objects, not by value.
    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __iter__(self):
        return iter(self.arrays)

    def __len__(self) -> int:  # the number of arrays; `num_examples` counts rows
        return len(self.arrays)

    __eq__ = object.__eq__
    __hash__ = object.__hash__


def as_split(split: "Split | Mapping[str, np.ndarray]") -> Split:
    """`split`; arrays (which tasks and callers may hand in for data held in memory) become
    the `Split` of those arrays."""
    return split if isinstance(split, Split) else Split.in_memory(split)
