"""Host side of predict and serve: an exported model with its task's codec, run in fixed batches.

A task's codec (`experiments/<task>/serving.py`, class `Codec(model, options)`) turns raw inputs
into example arrays (`parse` one JSON instance, `read` a file or stdin) and one example's outputs
into the JSON object both `predict` and `serve` answer with (`format`). An example's `NOTES`
entry (what parsing changed: tokens cut, unknown words) is added to its answer as it is.
"""

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from research.core.task import TaskLookup
from research.errors import UserError

# Every batch is padded to one of these sizes, so predict and serve run the same compiled shapes.
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
RUNTIME_FILE = "serving_runtime.py"
NOTES = "notes"  # an example's entry that is not a model input but part of its answer


class InputError(UserError, ValueError):
    """One input (a line, file or JSON instance) that cannot be used; the others still are."""


def load_runtime(directory: str):
    """The `serving_runtime` module copied into an exported directory, imported from there."""
    path = os.path.join(directory, RUNTIME_FILE)
    if not os.path.exists(path):
        raise UserError(
            f"{directory} holds no {RUNTIME_FILE}; pass --model a directory written by "
            "python -m experiments.export."
        )
    name = "serving_runtime_" + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Predictor:
    """An exported model and its task's codec; `predict` answers a list of examples.

    `get_task` (`experiments.get_task`) finds the codec: the exported config's task's serving
    module's; `options` are the codec's (the serving module's `PREDICT_OPTIONS`).
    """

    def __init__(
        self, directory: str, options: dict[str, Any] | None = None, *, get_task: TaskLookup
    ):
        runtime = load_runtime(directory)
        try:
            self.model = runtime.ExportedModel(directory)
        except runtime.ModelDirectoryError as error:
            raise UserError(str(error)) from None
        signature = self.model.signature
        task = get_task(ml_collections.ConfigDict(signature["config"]))
        self.codec = task.serving().Codec(self.model, dict(options or {}))
        self.batch_sizes = BATCH_SIZES

    @property
    def signature(self) -> dict:
        return self.model.signature

    def warm_up(self) -> None:
        """Compiles every batch size now, so that no request waits for a compilation."""
        for size in self.batch_sizes:
            self.model.run(self.codec.function, self.model.zeros(self.codec.function, size))

    def padded_size(self, count: int) -> int:
        return next(size for size in self.batch_sizes if size >= count)

    def run_batch(self, examples: Sequence[dict[str, np.ndarray]]) -> list[dict]:
        """Formatted outputs of at most `max(batch_sizes)` examples, run as one padded batch."""
        count = len(examples)
        size = self.padded_size(count)
        # Padding repeats the last example: a decoder stops as soon as every row is done.
        rows = list(examples) + [examples[-1]] * (size - count)
        names = [name for name in examples[0] if name != NOTES]
        batch = {name: np.stack([row[name] for row in rows]) for name in names}
        outputs = self.model.run(self.codec.function, batch)
        return [
            {
                **self.codec.format({name: value[index] for name, value in outputs.items()}),
                **examples[index].get(NOTES, {}),
            }
            for index in range(count)
        ]

    def predict(self, examples: Sequence[dict[str, np.ndarray]]) -> list[dict]:
        """Formatted outputs of any number of examples, in order."""
        largest = self.batch_sizes[-1]
        results = []
        for start in range(0, len(examples), largest):
            results.extend(self.run_batch(examples[start : start + largest]))
        return results


def to_json(value: dict) -> str:
    return json.dumps(value, ensure_ascii=False)


def parse_line(parse, where: str, text: str) -> dict[str, np.ndarray] | InputError:
    """`parse(text)`, or the InputError it raised naming `where` (one bad line loses no other)."""
    try:
        return parse(text)
    except InputError as error:
        return InputError(f"{where}: {error}")


def text_lines(source: str) -> Iterator[tuple[str, str | InputError]]:
    """(where, the line's text or an InputError) for every line of `source` ("-" = stdin),
    for codecs whose inputs are lines of text."""
    if source == "-":
        content = sys.stdin.buffer.read()
    else:
        with open(source, "rb") as file:
            content = file.read()
    lines = content.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        where = f"{source} line {number}"
        try:
            yield where, line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            yield where, InputError(f"{where} is not UTF-8; expected one text per line")
