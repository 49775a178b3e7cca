"""Logistic regression: features -> a 0/1 target, trained with binary cross-entropy from logits.

scikit-learn's `LogisticRegression`, fit to the same objective, is reported beside the model's
metrics (`sklearn_accuracy`, `sklearn_log_loss`, `sklearn_roc_auc`).
"""

import dataclasses
import functools

import jax.numpy as jnp
import ml_collections
import numpy as np
from sklearn import linear_model, metrics

from experiments.regression import task as regression
from research.core import binary_metrics, data
from research.core.config import ConfigError
from research.core.task import Task, model_from_config


def load_data(config: ml_collections.ConfigDict, artifacts_dir: str) -> data.Dataset:
    """Standardized features as for regression; the 0/1 targets of each evaluated split are
    also kept on the host, where ROC AUC is computed from all of the split's scores."""
    dataset = regression.load_data(config, artifacts_dir)
    splits = {"train": dataset.train, **dataset.eval_splits}
    if any(not np.isin(arrays["target"], (0.0, 1.0)).all() for arrays in splits.values()):
        raise ConfigError(
            f"config.loss 'binary_cross_entropy' needs 0/1 targets, and config.dataset "
            f"'{config.dataset}' has others; use --config.dataset=breast_cancer or "
            "--config.loss=squared_error."
        )
    labels = {split: arrays["target"] for split, arrays in dataset.eval_splits.items()}
    return dataclasses.replace(dataset, evaluation_context=labels)


def create_model(config: ml_collections.ConfigDict, info: dict):
    """A regression model (`config.model`) whose unscaled output is the logit `[batch]`."""
    del info  # the target's mean and scale do not apply to a logit
    return model_from_config(regression.MODELS, config.model)


def loss(logits, batch):
    """Binary cross-entropy per example `[batch]`, each example weighted 1.

    The L2 penalty is the optimizer's coupled `config.weight_decay` (see `reference_metrics`).
    """
    losses = binary_metrics.binary_cross_entropy(logits, batch["target"])
    return losses, jnp.ones_like(losses)


def metric_sums(logits, batch):
    target = batch["target"]
    return {
        "log_loss": binary_metrics.binary_cross_entropy(logits, target),
        **binary_metrics.confusion_indicators(logits, target),
        "count": jnp.ones_like(target),
    }


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Log loss (also the "loss"), accuracy, precision, recall and F1 of the positive class."""
    log_loss = sums["log_loss"] / sums["count"]
    counts = {name: sums[name] for name in binary_metrics.COUNT_NAMES}
    return {
        "loss": log_loss,
        "log_loss": log_loss,
        **binary_metrics.metrics_from_counts(**counts, count=sums["count"]),
    }


def predict(model, variables, batch):
    """The logits `[batch]`, from which `score_predictions` ranks the whole split."""
    return model.apply(variables, *regression.model_inputs(batch), train=False)


def score_predictions(split: str, logits: np.ndarray, labels: dict[str, np.ndarray]):
    """ROC AUC over every example of the split (logits `[examples]` in split order)."""
    return {"roc_auc": binary_metrics.roc_auc(labels[split], logits)}, {}


def sklearn_inverse_regularization(weight_decay: float, num_train_examples: int) -> float:
    """scikit-learn's C for the same objective.

    The run minimizes mean log loss + weight_decay / 2 · |w|² (bias free); scikit-learn
    minimizes C · total log loss + 1/2 · |w|², the run's objective times C · n when
    C = 1 / (weight_decay · n). weight_decay 0 is no penalty (C = inf).
    """
    return 1.0 / (weight_decay * num_train_examples) if weight_decay > 0 else float("inf")


def reference_metrics(config: ml_collections.ConfigDict, dataset: data.Dataset):
    """scikit-learn's linear `LogisticRegression` with the run's L2 strength, fit to
    convergence on the training split and evaluated on every evaluated split."""
    train = dataset.train
    inverse_regularization = sklearn_inverse_regularization(
        config.weight_decay, len(train["target"])
    )
    model = linear_model.LogisticRegression(C=inverse_regularization, tol=1e-10, max_iter=10_000)
    model.fit(train["features"].astype(np.float64), train["target"])
    results = {}
    for split, arrays in dataset.eval_splits.items():
        features, target = arrays["features"].astype(np.float64), arrays["target"]
        results[split] = {
            "sklearn_accuracy": float(model.score(features, target)),
            "sklearn_log_loss": float(metrics.log_loss(target, model.predict_proba(features))),
            "sklearn_roc_auc": float(
                metrics.roc_auc_score(target, model.decision_function(features))
            ),
        }
    return results


def get_task(config: ml_collections.ConfigDict) -> Task:
    return Task(
        load_data=functools.partial(load_data, config),
        create_model=functools.partial(create_model, config),
        model_inputs=regression.model_inputs,
        loss=loss,
        metric_sums=metric_sums,
        summarize=summarize,
        reference_metrics=functools.partial(reference_metrics, config),
        predict=predict,
        score_predictions=score_predictions,
    )
