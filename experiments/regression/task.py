"""Regression: features -> a real target, trained with squared error.

Metrics are the mean squared error and R², with the closed-form least-squares solution's
metrics on the same split beside them (`closed_form_mse`, `closed_form_r2`). With
`config.loss = "binary_cross_entropy"` the task is logistic regression (`logistic.py`).
"""

import functools
import importlib

import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.regression import datasets, models
from research.core import data, precision
from research.core.config import ConfigError
from research.core.task import Task, model_from_config

BUILDERS = {
    "linear_synthetic": datasets.LinearSynthetic,
    "nonlinear_synthetic": datasets.NonlinearSynthetic,
    "diabetes": datasets.Diabetes,
    "breast_cancer": datasets.BreastCancer,
}
LOSSES = ("squared_error", "binary_cross_entropy")


def load_data(config: ml_collections.ConfigDict, artifacts_dir: str) -> data.Dataset:
    """Train and test splits with features standardized by the training split's statistics."""
    del artifacts_dir  # nothing is learned from the data besides these statistics
    if config.dataset not in BUILDERS:
        raise ConfigError(
            f"config.dataset '{config.dataset}' is not a regression dataset; "
            f"choose one of {', '.join(BUILDERS)}."
        )
    splits = {
        split: data.load_tfds_arrays(
            config.dataset, split, config.data_dir, builder_class=BUILDERS[config.dataset]
        )
        for split in ("train", "test")
    }
    train_features = splits["train"]["features"].astype(np.float64)
    mean, std = train_features.mean(axis=0), train_features.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    standardized = {
        split: {
            "features": ((arrays["features"] - mean) / std).astype(np.float32),
            "target": arrays["target"].astype(np.float32),
        }
        for split, arrays in splits.items()
    }
    targets = standardized["train"]["target"].astype(np.float64)
    info = {"target_mean": float(targets.mean()), "target_std": float(targets.std())}
    info |= {"feature_mean": mean.tolist(), "feature_std": std.tolist()}  # for export
    info["raw_dtype"] = str(splits["train"]["features"].dtype)
    return data.Dataset(
        train=standardized["train"], eval_splits={"test": standardized["test"]}, info=info
    )


MODELS = {"mlp": models.MLP}


def create_model(config: ml_collections.ConfigDict, info: dict) -> models.MLP:
    """`config.model.name` picks the model; the other `config.model` keys are its fields."""
    return model_from_config(
        MODELS,
        config.model,
        target_mean=info["target_mean"],
        target_std=info["target_std"],
        **precision.model_dtypes(config),
    )


def model_inputs(batch):
    return (batch["features"],)


def loss(predictions, batch):
    """Squared error per example, each example weighted 1."""
    return (predictions - batch["target"]) ** 2, jnp.ones_like(predictions)


def metric_sums(predictions, batch):
    target = batch["target"]
    return {
        "squared_error": (predictions - target) ** 2,
        "target": target,
        "target_squared": target**2,
        "count": jnp.ones_like(target),
    }


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Mean squared error and R² = 1 - SSE / total sum of squares about the split's mean."""
    count = sums["count"]
    total_sum_of_squares = sums["target_squared"] - sums["target"] ** 2 / count
    return {
        "loss": sums["squared_error"] / count,
        "mse": sums["squared_error"] / count,
        "r2": 1.0 - sums["squared_error"] / total_sum_of_squares,
    }


def closed_form_metrics(dataset: data.Dataset) -> dict[str, dict[str, float]]:
    """The least-squares solution (with intercept) on train, evaluated on every split."""

    def design(features):
        features = features.astype(np.float64)
        return np.concatenate([features, np.ones((len(features), 1))], axis=1)

    train = dataset.train
    solution, *_ = np.linalg.lstsq(
        design(train["features"]), train["target"].astype(np.float64), rcond=None
    )
    results = {}
    for split, arrays in dataset.eval_splits.items():
        target = arrays["target"].astype(np.float64)
        residual = design(arrays["features"]) @ solution - target
        mse = float(np.mean(residual**2))
        results[split] = {
            "closed_form_mse": mse,
            "closed_form_r2": float(1.0 - mse / np.var(target)),
        }
    return results


def get_task(config: ml_collections.ConfigDict) -> Task:
    """Least squares, or logistic regression when `config.loss` is binary_cross_entropy."""
    loss_name = config.get("loss", "squared_error")
    if loss_name not in LOSSES:
        raise ConfigError(
            f"config.loss '{loss_name}' is not a regression loss; "
            f"choose one of {', '.join(LOSSES)}."
        )
    if loss_name == "binary_cross_entropy":
        from experiments.regression import logistic  # it builds on this module

        return logistic.get_task(config)
    return Task(
        load_data=functools.partial(load_data, config),
        create_model=functools.partial(create_model, config),
        model_inputs=model_inputs,
        loss=loss,
        metric_sums=metric_sums,
        summarize=summarize,
        reference_metrics=closed_form_metrics,
        serving=lambda: importlib.import_module("experiments.regression.serving"),
    )
