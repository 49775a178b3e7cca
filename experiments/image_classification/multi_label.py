"""Multi-label classification: several 0/1 labels per example, each derived from the class,
trained with binary cross-entropy per label (`config.loss = "binary_cross_entropy"`).
"""

import functools

import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.image_classification import task as single_label
from research.core import binary_metrics, data
from research.core.config import ConfigError
from research.core.task import Task

# config.labels -> (datasets it describes, {label name: the classes for which it is 1}).
LABEL_SETS = {
    "digit_attributes": (
        ("mnist1d", "mnist"),
        {
            "digit_ge_5": (5, 6, 7, 8, 9),
            "even_digit": (0, 2, 4, 6, 8),
            "digit_in_0689": (0, 6, 8, 9),
        },
    ),
}
PER_LABEL_METRICS = ("accuracy", "precision", "recall", "f1")


def label_set(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
    """{label name: its classes} of `config.labels`, checked against `config.dataset`."""
    labels = config.get("labels", "class")
    if labels not in LABEL_SETS:
        raise ConfigError(
            f"config.loss 'binary_cross_entropy' needs multi-label targets, and config.labels "
            f"is '{labels}'; set --config.labels to one of {', '.join(LABEL_SETS)}."
        )
    datasets, classes_of_label = LABEL_SETS[labels]
    if config.dataset not in datasets:
        raise ConfigError(
            f"config.labels '{labels}' describes the classes of {', '.join(datasets)}, not "
            f"config.dataset '{config.dataset}'; choose one of those datasets."
        )
    return classes_of_label


def label_matrix(classes: np.ndarray, classes_of_label: dict[str, tuple[int, ...]]) -> np.ndarray:
    """0/1 targets `[examples, labels]` float32 from class indices `[examples]`."""
    return np.stack(
        [np.isin(classes, members) for members in classes_of_label.values()], axis=1
    ).astype(np.float32)


def load_data(config: ml_collections.ConfigDict, artifacts_dir: str) -> data.Dataset:
    """The single-label data with each class replaced by its row of 0/1 labels."""
    classes_of_label = label_set(config)
    dataset = single_label.load_data(config, artifacts_dir)
    # With config.classes the single-label data numbers the chosen classes 0..k-1: undo that.
    original = np.asarray(
        config.get("classes", ()) or range(single_label.DATASETS[config.dataset][3])
    )
    relabel = lambda arrays: {
        **arrays,
        "label": label_matrix(original[arrays["label"]], classes_of_label),
    }
    eval_splits = {split: relabel(arrays) for split, arrays in dataset.eval_splits.items()}
    return data.Dataset(
        train=relabel(dataset.train),
        eval_splits=eval_splits,
        info={**dataset.info, "num_classes": len(classes_of_label)},  # one logit per label
        evaluation_context={split: arrays["label"] for split, arrays in eval_splits.items()},
    )


def loss(logits, batch):
    """Binary cross-entropy per example `[batch]`, the mean over its labels; weight 1."""
    losses = binary_metrics.binary_cross_entropy(logits, batch["label"]).mean(axis=-1)
    return losses, jnp.ones_like(losses)


def metric_sums(logits, batch, *, label_names: tuple[str, ...]):
    """Per example `[batch]`: the loss, exact match and each label's confusion counts."""
    indicators = binary_metrics.confusion_indicators(logits, batch["label"])
    per_label = {
        f"{count}_{label}": indicators[count][:, index]
        for count in binary_metrics.COUNT_NAMES
        for index, label in enumerate(label_names)
    }
    return {
        "binary_cross_entropy": loss(logits, batch)[0],
        "exact_match": indicators["correct"].min(axis=-1),
        "count": jnp.ones(logits.shape[:1], jnp.float32),
        **per_label,
    }


def summarize(sums: dict[str, float], *, label_names: tuple[str, ...]) -> dict[str, float]:
    """Loss, accuracy (mean over labels), exact match, and per label `<metric>_<label>`."""
    count = sums["count"]
    results = {
        "loss": sums["binary_cross_entropy"] / count,
        "accuracy": sum(sums[f"correct_{label}"] for label in label_names)
        / (count * len(label_names)),
        "exact_match": sums["exact_match"] / count,
    }
    for label in label_names:
        counts = {name: sums[f"{name}_{label}"] for name in binary_metrics.COUNT_NAMES}
        per_label = binary_metrics.metrics_from_counts(**counts, count=count)
        results.update({f"{name}_{label}": per_label[name] for name in PER_LABEL_METRICS})
    return results


def predict(model, variables, batch):
    """The logits `[batch, labels]`, from which `score_predictions` ranks the whole split."""
    return model.apply(variables, *single_label.model_inputs(batch), train=False)


def score_predictions(split, logits, labels, *, label_names: tuple[str, ...]):
    """Each label's average precision over the split (logits `[examples, labels]`) and
    their mean, the mean average precision."""
    precisions = [
        binary_metrics.average_precision(labels[split][:, index], logits[:, index])
        for index in range(len(label_names))
    ]
    scores = {
        f"average_precision_{label}": p for label, p in zip(label_names, precisions, strict=True)
    }
    return {"mean_average_precision": float(np.mean(precisions)), **scores}, {}


def get_task(config: ml_collections.ConfigDict) -> Task:
    label_names = tuple(label_set(config))
    return Task(
        load_data=functools.partial(load_data, config),
        create_model=functools.partial(single_label.create_model, config),
        model_inputs=single_label.model_inputs,
        loss=loss,
        metric_sums=functools.partial(metric_sums, label_names=label_names),
        summarize=functools.partial(summarize, label_names=label_names),
        predict=predict,
        score_predictions=functools.partial(score_predictions, label_names=label_names),
    )
