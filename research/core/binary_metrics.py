"""Binary and multi-label classification: the loss from logits, metrics from summed counts,
and the ranking metrics (ROC AUC, average precision) that need every score of a split.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The counts `confusion_indicators` gives besides "correct", in `metrics_from_counts`' order.
COUNT_NAMES = ("correct", "true_positives", "false_positives", "false_negatives")


def binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """-[y log σ(z) + (1 - y) log(1 - σ(z))] elementwise for logits and 0/1 labels `[...]`.

    Computed from the logits through log-sigmoid, never as `log(sigmoid(z))`, which is
    -inf (and its gradient NaN) once σ(z) rounds to 0 or 1, already near |z| = 17 in float32.
    """
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))


def confusion_indicators(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """0/1 indicators `[...]` (same shape as logits and labels) whose sums give the metrics.

    The predicted label is 1 where σ(z) > 0.5, i.e. z > 0 (scikit-learn's `predict`).
    """
    predicted = logits > 0
    actual = labels > 0.5
    as_float = lambda indicator: indicator.astype(jnp.float32)
    return {
        "correct": as_float(predicted == actual),
        "true_positives": as_float(predicted & actual),
        "false_positives": as_float(predicted & ~actual),
        "false_negatives": as_float(~predicted & actual),
    }


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, and 0 when nothing was counted (scikit-learn's default)."""
    return numerator / denominator if denominator else 0.0


def metrics_from_counts(
    correct: float,
    true_positives: float,
    false_positives: float,
    false_negatives: float,
    count: float,
) -> dict[str, float]:
    """Accuracy, precision, recall and F1 from counts summed over a split."""
    return {
        "accuracy": correct / count,
        "precision": _ratio(true_positives, true_positives + false_positives),
        "recall": _ratio(true_positives, true_positives + false_negatives),
        "f1": _ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives),
    }


def _counts_at_thresholds(labels: np.ndarray, scores: np.ndarray):
    """True and false positives `[distinct scores]` (int64) as the threshold descends past
    each distinct score: examples scoring at least the threshold are predicted positive."""
    order = np.argsort(scores, kind="stable")[::-1]
    scores, labels = scores[order], labels[order] > 0.5
    last_of_each_score = np.append(np.flatnonzero(np.diff(scores)), len(scores) - 1)
    true_positives = np.cumsum(labels, dtype=np.int64)[last_of_each_score]
    false_positives = last_of_each_score + 1 - true_positives
    return true_positives, false_positives


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve for labels `[examples]` (0/1) and scores `[examples]`.

    The trapezoids between thresholds are added in integers (a tie of a positive and a
    negative counts one half), so the area is exact before the one final division. NaN
    when the split lacks positives or negatives.
    """
    true_positives, false_positives = _counts_at_thresholds(labels, scores)
    positives, negatives = int(true_positives[-1]), int(false_positives[-1])
    if positives == 0 or negatives == 0:
        return float("nan")
    true_positives = np.append(0, true_positives)
    false_positives = np.append(0, false_positives)
    twice_area = np.sum(np.diff(false_positives) * (true_positives[1:] + true_positives[:-1]))
    return int(twice_area) / (2 * positives * negatives)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Σ (recall_k - recall_(k-1)) · precision_k over the distinct score thresholds, for
    labels `[examples]` (0/1) and scores `[examples]`; NaN when the split has no positives."""
    true_positives, false_positives = _counts_at_thresholds(labels, scores)
    positives = int(true_positives[-1])
    if positives == 0:
        return float("nan")
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / positives
    terms = np.diff(np.append(0.0, recall)) * precision
    # Added from the lowest threshold up, the order scikit-learn's average_precision_score
    # uses, so the two round alike.
    return float(np.sum(terms[::-1]))
