"""Binary cross-entropy against float64 numpy, binary and multi-label metrics against
scikit-learn on the same predictions, and logistic regression against scikit-learn's fit."""

import fractions
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn import metrics
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import experiments
from experiments.image_classification import multi_label
from experiments.regression import logistic
from research.core import binary_metrics, data
from research.core.config import ConfigError
from tests.helpers import REPO_ROOT, load_config, run_experiment

BREAST_CANCER_CONFIG = os.path.join(
    REPO_ROOT, "experiments/regression/configs/breast_cancer_logistic.py"
)
SATURATED_LOGITS = np.array([-100.0, -100.0, 100.0, 100.0, -30.0, 30.0, -17.0, 17.0, 0.0, 0.0])
SATURATED_LABELS = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])


def float64_binary_cross_entropy(logits, labels):
    """-[y log σ(z) + (1 - y) log(1 - σ(z))] as max(z, 0) - z y + log(1 + e^-|z|), float64."""
    logits, labels = np.float64(logits), np.float64(labels)
    return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def random_predictions(seed: int, shape, ties: bool = False):
    """float32 logits and 0/1 labels that agree more often than chance."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, shape)
    logits = rng.normal(size=shape) + 1.5 * (2 * labels - 1) * rng.uniform(size=shape)
    if ties:
        logits = np.round(logits, 1)
    return logits.astype(np.float32), labels


def test_binary_cross_entropy_equals_float64_reference_including_logits_of_100():
    rng = np.random.default_rng(0)
    logits = np.concatenate([SATURATED_LOGITS, 8 * rng.normal(size=200)]).astype(np.float32)
    labels = np.concatenate([SATURATED_LABELS, rng.integers(0, 2, 200)]).astype(np.float32)
    losses = binary_metrics.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    reference = float64_binary_cross_entropy(logits, labels)
    np.testing.assert_allclose(np.asarray(losses), reference, rtol=2e-7, atol=1e-30)
    assert float(losses[1]) == 100.0 and float(losses[2]) == 100.0  # wrong by 100 -> 100
    # The gradient stays finite where σ(z) rounds to 0 or 1: it is σ(z) - y.
    gradient = jax.grad(lambda z: binary_metrics.binary_cross_entropy(z, labels).sum())(logits)
    np.testing.assert_allclose(
        np.asarray(gradient), 1 / (1 + np.exp(-np.float64(logits))) - labels, atol=1e-6
    )


def summed(metric_sums, logits, labels, key, batch_size=128):
    """metric_sums over batches of a split, added up as the trainer does."""
    totals, metric_sums = {}, jax.jit(metric_sums)
    for start in range(0, len(logits), batch_size):
        batch = {key: jnp.asarray(labels[start : start + batch_size], jnp.float32)}
        sums = metric_sums(jnp.asarray(logits[start : start + batch_size]), batch)
        for name, values in sums.items():
            totals[name] = totals.get(name, 0.0) + float(values.sum())
    return totals


@pytest.mark.parametrize("seed", [0, 1])
def test_logistic_metrics_equal_sklearn_on_the_same_predictions(seed):
    logits, labels = random_predictions(seed, 300, ties=True)
    if seed == 1:
        logits = -np.abs(logits)  # nothing predicted positive: precision and F1 are 0
    result = logistic.summarize(summed(logistic.metric_sums, logits, labels, "target"))
    predicted = logits > 0
    assert result["accuracy"] == metrics.accuracy_score(labels, predicted)
    for name, score in (("precision", metrics.precision_score), ("recall", metrics.recall_score)):
        assert result[name] == score(labels, predicted, zero_division=0.0)
    assert result["f1"] == pytest.approx(
        metrics.f1_score(labels, predicted, zero_division=0.0), rel=1e-15
    )
    probabilities = 1 / (1 + np.exp(-np.float64(logits)))
    assert result["log_loss"] == pytest.approx(metrics.log_loss(labels, probabilities), rel=1e-6)
    context = {"test": labels.astype(np.float32)}
    scores, _ = logistic.score_predictions("test", logits, context)
    assert scores["roc_auc"] == pytest.approx(metrics.roc_auc_score(labels, logits), rel=1e-15)


def pairwise_auc(labels, scores) -> fractions.Fraction:
    """The share of (positive, negative) pairs ranked right, ties counting one half."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return fractions.Fraction(2 * int(wins) + int(ties), 2 * len(positives) * len(negatives))


def test_roc_auc_is_the_exact_pairwise_share_and_sklearns_to_rounding():
    for seed in range(20):
        logits, labels = random_predictions(seed, 150, ties=seed % 2 == 0)
        auc = binary_metrics.roc_auc(labels, logits)
        assert auc == float(pairwise_auc(labels, logits))  # correctly rounded
        # scikit-learn rounds each trapezoid; the two differ by at most an ulp or two.
        assert auc == pytest.approx(metrics.roc_auc_score(labels, logits), rel=1e-15, abs=0)
    assert np.isnan(binary_metrics.roc_auc(np.ones(5), np.arange(5.0)))


def test_multi_label_metrics_and_mean_average_precision_equal_sklearn():
    label_names = ("a", "b", "c")
    logits, labels = random_predictions(3, (400, 3), ties=True)
    sums = summed(
        lambda z, batch: multi_label.metric_sums(z, batch, label_names=label_names),
        logits,
        labels,
        "label",
    )
    result = multi_label.summarize(sums, label_names=label_names)
    predicted = logits > 0
    assert result["exact_match"] == metrics.accuracy_score(labels, predicted)  # subset accuracy
    assert result["accuracy"] == pytest.approx(np.mean(predicted == labels), rel=1e-15)
    reference = float64_binary_cross_entropy(logits, labels).mean()
    assert result["loss"] == pytest.approx(reference, rel=1e-6)
    for index, name in enumerate(label_names):
        truth, guess = labels[:, index], predicted[:, index]
        assert result[f"accuracy_{name}"] == metrics.accuracy_score(truth, guess)
        assert result[f"precision_{name}"] == metrics.precision_score(truth, guess)
        assert result[f"recall_{name}"] == metrics.recall_score(truth, guess)
        assert result[f"f1_{name}"] == pytest.approx(metrics.f1_score(truth, guess), rel=1e-15)
    context = {"test": labels.astype(np.float32)}
    scores, _ = multi_label.score_predictions("test", logits, context, label_names=label_names)
    assert scores["mean_average_precision"] == metrics.average_precision_score(
        labels, logits, average="macro"
    )
    for index, name in enumerate(label_names):
        expected = metrics.average_precision_score(labels[:, index], logits[:, index])
        assert scores[f"average_precision_{name}"] == expected


def test_digit_attributes_follow_from_the_digit():
    digits = np.arange(10).repeat(3)
    _, classes_of_label = multi_label.LABEL_SETS["digit_attributes"]
    expected = np.stack([digits >= 5, digits % 2 == 0, np.isin(digits, (0, 6, 8, 9))], axis=1)
    np.testing.assert_array_equal(multi_label.label_matrix(digits, classes_of_label), expected)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss": "hinge"}, "config.loss 'hinge'"),
        ({"labels": "class"}, "config.labels"),
        ({"labels": "digit_attributes", "dataset": "fashion_mnist"}, "describes the classes"),
        ({"loss": "cross_entropy"}, "--config.loss=binary_cross_entropy"),
    ],
)
def test_inconsistent_multi_label_configs_are_refused(overrides, message):
    path = os.path.join(
        REPO_ROOT, "experiments/image_classification/configs/mnist1d_multi_label.py"
    )
    config = load_config(path, **overrides)
    with pytest.raises(ConfigError, match=message):
        experiments.get_task(config)


def test_logistic_regression_on_a_real_valued_target_is_refused(monkeypatch):
    real_valued = {"features": np.zeros((3, 2), np.float32), "target": np.float32([0, 1, 2.5])}
    loaded = data.Dataset(train=real_valued, eval_splits={"test": real_valued})
    monkeypatch.setattr(logistic.regression, "load_data", lambda *arguments: loaded)
    config = ml_collections.ConfigDict({"dataset": "diabetes"})
    with pytest.raises(ConfigError, match="'diabetes' has others"):
        logistic.load_data(config, "unused")


def breast_cancer_standardized():
    """scikit-learn's split, standardized by the training split's statistics: float64
    (train features, train target, test features, test target)."""
    features, target = load_breast_cancer(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        features.astype(np.float32), target, test_size=0.2, random_state=42
    )
    mean, std = train_x.mean(0, dtype=np.float64), train_x.std(0, dtype=np.float64)
    standardize = lambda x: ((x - mean) / std).astype(np.float32).astype(np.float64)
    return standardize(train_x), train_y, standardize(test_x), test_y


def sklearn_test_log_loss(inverse_regularization: float) -> float:
    """scikit-learn's fit on the same split and standardization."""
    train_x, train_y, test_x, test_y = breast_cancer_standardized()
    model = LogisticRegression(C=inverse_regularization, tol=1e-12, max_iter=10_000)
    model.fit(train_x, train_y)
    return metrics.log_loss(test_y, model.predict_proba(test_x))


def test_breast_cancer_is_sklearns_split_standardized_by_training_statistics(data_dir, tmp_path):
    config = load_config(BREAST_CANCER_CONFIG, data_dir=data_dir)
    dataset = experiments.get_task(config).load_data(str(tmp_path))
    train_x, train_y, test_x, test_y = breast_cancer_standardized()
    assert dataset.train["features"].shape == (455, 30)
    assert dataset.eval_splits["test"]["features"].shape == (114, 30)
    np.testing.assert_array_equal(dataset.train["features"], train_x.astype(np.float32))
    np.testing.assert_array_equal(
        dataset.eval_splits["test"]["features"], test_x.astype(np.float32)
    )
    np.testing.assert_array_equal(dataset.train["target"], train_y)
    np.testing.assert_array_equal(dataset.evaluation_context["test"], test_y)


@pytest.mark.parametrize("inverse_regularization", [1.0, 0.1])
def test_logistic_regression_matches_sklearn_with_the_same_regularization(
    inverse_regularization, data_dir, tmp_path
):
    config: ml_collections.ConfigDict = load_config(
        BREAST_CANCER_CONFIG,
        num_train_steps=500,
        eval_every_steps=500,
        log_every_steps=250,
        checkpoint_every_steps=500,
        data_dir=data_dir,
    )
    config.weight_decay = 1.0 / (inverse_regularization * 455)
    test = run_experiment(config, tmp_path)["test"]
    expected = sklearn_test_log_loss(inverse_regularization)
    assert abs(test["log_loss"] - expected) < 1e-3
    assert test["sklearn_log_loss"] == pytest.approx(expected, abs=1e-6)
    assert test["accuracy"] == test["sklearn_accuracy"]
