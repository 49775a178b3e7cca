"""Evaluation over whole splits: metric sums, and the task's predictions when it makes any."""

import functools
from typing import Any

import jax
import numpy as np
from absl import logging

from research import data, parallel, steps
from research.task import Task


def metrics_of_split(
    p_eval_step, p_state, arrays: data.Arrays, batch_size: int, task: Task, buckets=None
):
    """Metrics over every example of one split, each counted exactly once."""
    totals = None
    for batch in data.eval_batches(arrays, batch_size, buckets):
        sums = p_eval_step(p_state, parallel.shard(batch))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = parallel.unreplicate(totals)
    return task.summarize_checked({name: float(value) for name, value in totals.items()})


def predictions_of_split(
    p_predict_step, p_state, arrays: data.Arrays, batch_size: int, buckets=None
):
    """The task's predictions for every example of a split, in split order: `[examples, ...]`.

    Bucketed batches visit the examples sorted by length; the rows are put back in order.
    """
    rows = []
    for batch in data.eval_batches(arrays, batch_size, buckets):
        predictions = np.asarray(p_predict_step(p_state, parallel.shard(batch)))
        local_rows = predictions.reshape(-1, *predictions.shape[2:])
        rows.append(parallel.gather_rows(local_rows))
    order = data.eval_order(arrays, buckets)
    in_split_order = np.empty_like(rows[0], shape=(len(order), *rows[0].shape[1:]))
    in_split_order[order] = np.concatenate(rows)[: len(order)]  # padding rows come last
    return in_split_order


class Evaluator:
    """Evaluates the replicated state on every split of `dataset.eval_splits`."""

    def __init__(
        self, model, task: Task, dataset: data.Dataset, batch_size: int, writer, boundaries=()
    ):
        self.task, self.dataset, self.batch_size, self.writer = task, dataset, batch_size, writer
        self.model = model
        self.buckets = {
            split: data.length_buckets(arrays, task.sequence_keys, boundaries)
            for split, arrays in dataset.eval_splits.items()
            if boundaries
        }
        self.reference = task.reference_metrics(dataset) if task.reference_metrics else {}
        self.details: dict[str, Any] = {}
        self._p_eval_step = parallel.pmap(
            functools.partial(steps.eval_step, model=model, task=task)
        )
        self._p_predict_step = None
        if task.predict is not None:
            self._p_predict_step = parallel.pmap(
                functools.partial(steps.predict_step, model=model, task=task)
            )

    def __call__(self, step: int, p_state, suffix: str = "") -> dict[str, dict[str, float]]:
        """Metrics per split, recorded as `<split><suffix>` (e.g. "valid_averaged")."""
        results = {}
        for split, arrays in self.dataset.eval_splits.items():
            buckets = self.buckets.get(split)
            metrics = metrics_of_split(
                self._p_eval_step, p_state, arrays, self.batch_size, self.task, buckets
            )
            if self._p_predict_step is not None:
                predictions = predictions_of_split(
                    self._p_predict_step, p_state, arrays, self.batch_size, buckets
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
            state = parallel.unreplicate(p_state)
            variables = {"params": state.params, **state.model_state}
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
