"""Evaluation over whole splits: metric sums, and the task's predictions when it makes any."""

import functools
from typing import Any

import jax
import numpy as np
from absl import logging

from research.core import data, steps
from research.core.task import Task
from research.runtime import parallel


def metrics_of_split(
    eval_step, state, arrays: data.Arrays, batch_size: int, task: Task, mesh, buckets=None
):
    """Metrics over every example of one split, each counted exactly once."""
    totals = None
    for batch in data.eval_batches(arrays, batch_size, buckets):
        sums = eval_step(state, parallel.put_batch(batch, mesh))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = parallel.to_host(totals)
    return task.summarize_checked({name: float(value) for name, value in totals.items()})


def predictions_of_split(
    predict_step, state, arrays: data.Arrays, batch_size: int, mesh, buckets=None
):
    """The task's predictions for every example of a split, in split order: `[examples, ...]`.

    Bucketed batches visit the examples sorted by length; the rows are put back in order.
    """
    rows = []
    for batch in data.eval_batches(arrays, batch_size, buckets):
        rows.append(parallel.to_host(predict_step(state, parallel.put_batch(batch, mesh))))
    order = data.eval_order(arrays, buckets)
    in_split_order = np.empty_like(rows[0], shape=(len(order), *rows[0].shape[1:]))
    in_split_order[order] = np.concatenate(rows)[: len(order)]  # padding rows come last
    return in_split_order


class Evaluator:
    """Evaluates the train state (global arrays on `mesh`) on every split of
    `dataset.eval_splits`."""

    def __init__(
        self, model, task: Task, dataset: data.Dataset, batch_size: int, writer, mesh,
        boundaries=(),
    ):  # fmt: skip
        self.task, self.dataset, self.batch_size, self.writer = task, dataset, batch_size, writer
        self.model, self.mesh = model, mesh
        self.buckets = {
            split: data.length_buckets(arrays, task.sequence_keys, boundaries)
            for split, arrays in dataset.eval_splits.items()
            if boundaries
        }
        self.reference = task.reference_metrics(dataset) if task.reference_metrics else {}
        self.details: dict[str, Any] = {}
        self._eval_step = jax.jit(functools.partial(steps.eval_step, model=model, task=task))
        self._predict_step = None
        if task.predict is not None:
            self._predict_step = jax.jit(
                functools.partial(steps.predict_step, model=model, task=task)
            )

    def __call__(self, step: int, state, suffix: str = "") -> dict[str, dict[str, float]]:
        """Metrics per split, recorded as `<split><suffix>` (e.g. "valid_averaged")."""
        results = {}
        for split, arrays in self.dataset.eval_splits.items():
            buckets = self.buckets.get(split)
            metrics = metrics_of_split(
                self._eval_step, state, arrays, self.batch_size, self.task, self.mesh, buckets
            )
            if self._predict_step is not None:
                predictions = predictions_of_split(
                    self._predict_step, state, arrays, self.batch_size, self.mesh, buckets
                )
                scores, details = self.task.score_predictions(
                    split, predictions, self.dataset.evaluation_context
                )
                metrics.update(scores)
                self.writer.write_examples(step, split + suffix, details.pop("examples", []))
                if details:
                    self.details[split + suffix] = details
            results[split + suffix] = {**metrics, **self.reference.get(split, {})}
            self.writer.write_metrics(step, split + suffix, results[split + suffix])
        if self.task.samples is not None:
            host = parallel.to_host(steps.evaluated(state))
            variables = {"params": host.params, **host.model_state}
            samples = self.task.samples(self.model, variables, self.dataset.evaluation_context)
            self.writer.write_examples(step, "samples" + suffix, samples)
        logging.info(
            "step %d eval: %s",
            step,
            "; ".join(
                f"{split} " + ", ".join(f"{k}={v:.5g}" for k, v in metrics.items())
                for split, metrics in results.items()
            ),
        )
        return results
