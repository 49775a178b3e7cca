"""The interface between the generic trainer and an experiment module.

Each `experiments/<task>/task.py` has `get_task(config) -> Task`. Losses and metrics are
returned per example as sums with weights, so the trainer can mask padding and add them up
exactly over devices, hosts and batches; `summarize` turns the totals into metrics.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from research.core import data
from research.core.config import ConfigError

Batch = dict[str, jax.Array]
Outputs = Any  # whatever the model returns


@dataclasses.dataclass(frozen=True)
class Task:
    """What an experiment gives the trainer.

    `get_task(config)` closes over the config: no callback takes it again.

    load_data: (artifacts_dir) -> `Dataset` of numpy arrays. Whatever the data
        preparation learns (a tokenizer) is stored in `artifacts_dir` inside the workdir and
        loaded from there when the run resumes.
    create_model: (dataset info) -> a Linen module, called as
        `model.apply(variables, *model_inputs(batch), train=...)`.
    model_inputs: batch -> positional inputs of the model (jit-traced; may cast or scale).
    loss: (outputs, batch) -> (per-example loss sum `[batch]`, per-example weight `[batch]`);
        the training loss is the weighted mean over the global batch.
    metric_sums: (outputs, batch) -> {name: per-example value `[batch]`} to be summed.
    summarize: {name: total over a split} -> {metric: value}; must include "loss", the
        metric the trainer logs and checks for divergence.
    reference_metrics: optional dataset -> {split: {metric: value}} computed once (for
        example a closed-form solution) and reported beside the model's metrics.
    predict: optional (model, variables, batch) -> predictions `[batch, ...]` (jit-traced, for
        example beam search); the trainer runs it over every example of each evaluated split.
    score_predictions: with `predict`: (split, predictions `[examples, ...]` in split order,
        `dataset.evaluation_context`) -> (metrics, details); details may hold "examples" (a few
        dicts to show) and other JSON values recorded in summary.json.
    samples: optional (model, variables, `dataset.evaluation_context`) -> a few dicts (for
        example generated text), computed on the host after each evaluation and written to
        examples.jsonl as split "samples".
    sequence_keys: batch entries `[batch, length]` of token ids padded with 0 at the end;
        with `config.bucket_boundaries` the trainer groups examples by their length and pads
        each batch only to the boundary its longest row needs (`data.LengthBuckets`).
    image_keys: batch entries `[batch, height, width, channels]` that `config.augmentation`
        may crop and flip (research/core/augmentation.py).
    serving: optional () -> the task's serving module (`experiments/<task>/serving.py`, imported
        only when exporting or serving): `export_spec(...)` and `Codec` (see
        research/deploy/export.py), and the options they take as flags of the commands,
        `EXPORT_OPTIONS` and `PREDICT_OPTIONS` (see research/deploy/options.py).
    """

    load_data: Callable[[str], data.Dataset]
    create_model: Callable[[dict[str, Any]], nn.Module]
    model_inputs: Callable[[Batch], tuple]
    loss: Callable[[Outputs, Batch], tuple[jax.Array, jax.Array]]
    metric_sums: Callable[[Outputs, Batch], dict[str, jax.Array]]
    summarize: Callable[[dict[str, float]], dict[str, float]]
    reference_metrics: Callable[[data.Dataset], dict[str, dict[str, float]]] | None = None
    predict: Callable[[nn.Module, dict, Batch], jax.Array] | None = None
    score_predictions: Callable[[str, Any, Any], tuple[dict[str, float], dict[str, Any]]] | None = (
        None
    )
    samples: Callable[[nn.Module, dict, Any], list[dict]] | None = None
    sequence_keys: tuple[str, ...] = ()
    image_keys: tuple[str, ...] = ()
    serving: Callable[[], Any] | None = None

    def summarize_checked(self, sums: dict[str, float]) -> dict[str, float]:
        """`summarize`, with the one entry the trainer relies on checked."""
        metrics = self.summarize(sums)
        if "loss" not in metrics:
            raise TypeError(
                f"Task.summarize returned {sorted(metrics)} without 'loss'; return the "
                "task's loss under that name (see research/core/task.py)."
            )
        return metrics


# `experiments.get_task`: config -> its Task. The library names no task; the commands that need
# one (launch.py, export, predict, serve) are handed this lookup by their entry point.
TaskLookup = Callable[[ml_collections.ConfigDict], Task]


def model_from_config(
    classes: dict[str, type[nn.Module]], settings: ml_collections.ConfigDict, **fields
) -> nn.Module:
    """The model class `classes[settings.name]`, built from the other `settings` keys.

    `classes` is a task's plain table of its model classes; `fields` are what the data decides
    (number of classes, vocabulary sizes).
    """
    # Lists come back from config.json where the config file had tuples.
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.to_dict().items()}
    name = settings.pop("name")
    if name not in classes:
        raise ConfigError(
            f"config.model.name '{name}' is unknown; choose one of {', '.join(classes)}."
        )
    try:
        return classes[name](**fields, **settings)
    except TypeError as error:  # a config.model key the class does not take
        raise ConfigError(
            f"config.model does not fit model '{name}' ({error}); remove or rename that key."
        ) from None
