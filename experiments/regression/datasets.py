"""Offline tensorflow-datasets builders for regression: two synthetic problems, sklearn diabetes
and sklearn breast cancer (a binary target, for logistic regression).

All data is generated from fixed seeds or read from scikit-learn's bundled files; nothing downloads.
"""

import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split

from research.core import data

LINEAR_NUM_FEATURES = 8
LINEAR_NOISE_STD = 0.1
LINEAR_SEED = 0
NONLINEAR_SEED = 1
NONLINEAR_NOISE_STD = 0.05
NONLINEAR_INPUT_RANGE = (-2.0, 2.0)
SYNTHETIC_SPLIT_SIZES = {"train": 1024, "test": 256}
# Distinct seeds per split so train and test draws are independent but reproducible.
SYNTHETIC_SPLIT_SEEDS = {"train": 1, "test": 2}
DIABETES_NUM_FEATURES = 10
DIABETES_TEST_SIZE = 0.2
DIABETES_SPLIT_SEED = 42
BREAST_CANCER_NUM_FEATURES = 30
BREAST_CANCER_TEST_SIZE = 0.2
BREAST_CANCER_SPLIT_SEED = 42


def linear_true_parameters() -> tuple[np.ndarray, float]:
    """The fixed ground truth: theta [LINEAR_NUM_FEATURES] float64 and bias, both drawn N(0, 1)."""
    generator = np.random.default_rng(LINEAR_SEED)
    theta = generator.standard_normal(LINEAR_NUM_FEATURES)
    bias = float(generator.standard_normal())
    return theta, bias


def linear_split_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """features [N, 8] float32 ~ N(0, 1); target [N] float32 = features @ theta + bias + noise."""
    theta, bias = linear_true_parameters()
    generator = np.random.default_rng([LINEAR_SEED, SYNTHETIC_SPLIT_SEEDS[split]])
    num_examples = SYNTHETIC_SPLIT_SIZES[split]
    features = generator.standard_normal((num_examples, LINEAR_NUM_FEATURES))
    noise = LINEAR_NOISE_STD * generator.standard_normal(num_examples)
    target = features @ theta + bias + noise
    return features.astype(np.float32), target.astype(np.float32)


def nonlinear_function(x: np.ndarray) -> np.ndarray:
    """The noiseless nonlinear target f(x) = sin(3x) + 0.3 x^2, elementwise."""
    return np.sin(3.0 * x) + 0.3 * x**2


def nonlinear_split_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """features [N, 1] float32 ~ U[-2, 2] and target [N] float32 = f(x) + N(0, 0.05^2) noise."""
    generator = np.random.default_rng([NONLINEAR_SEED, SYNTHETIC_SPLIT_SEEDS[split]])
    num_examples = SYNTHETIC_SPLIT_SIZES[split]
    x = generator.uniform(*NONLINEAR_INPUT_RANGE, size=num_examples)
    target = nonlinear_function(x) + NONLINEAR_NOISE_STD * generator.standard_normal(num_examples)
    return x[:, None].astype(np.float32), target.astype(np.float32)


def diabetes_split_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sklearn diabetes (scaled features [N, 10], raw target [N]), 80/20 split, random_state 42."""
    features, target = load_diabetes(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        features, target, test_size=DIABETES_TEST_SIZE, random_state=DIABETES_SPLIT_SEED
    )
    return {"train": (train_x, train_y), "test": (test_x, test_y)}


def breast_cancer_split_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sklearn breast cancer (raw features [N, 30], target [N] 1 = benign), 80/20, seed 42."""
    features, target = load_breast_cancer(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        features, target, test_size=BREAST_CANCER_TEST_SIZE, random_state=BREAST_CANCER_SPLIT_SEED
    )
    return {"train": (train_x, train_y), "test": (test_x, test_y)}


def _regression_features(num_features: int) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "features": tfds.features.Tensor(shape=(num_features,), dtype=np.float32),
            "target": tfds.features.Scalar(dtype=np.float32),
        }
    )


def _generate_regression_examples(features: np.ndarray, target: np.ndarray):
    """Yields (index, example) pairs for features [N, D] and target [N], in array order."""
    for index, (row, value) in enumerate(zip(features, target, strict=True)):
        yield index, {"features": row.astype(np.float32), "target": np.float32(value)}


class _OfflineRegressionBuilder(
    data.GeneratedLocally, tfds.core.GeneratorBasedBuilder, skip_registration=True
):
    """Shared plumbing: subclasses define DESCRIPTION, NUM_FEATURES and _split_arrays."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION = ""
    NUM_FEATURES = 0

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=_regression_features(self.NUM_FEATURES),
            supervised_keys=("features", "target"),
            # Stored order equals generation order, so splits compare exactly to the source arrays.
            disable_shuffling=True,
        )

    def _split_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Everything is generated or bundled locally.
        return {
            split: self._generate_examples(features, target)
            for split, (features, target) in self._split_arrays().items()
        }

    def _generate_examples(self, features: np.ndarray, target: np.ndarray):
        return _generate_regression_examples(features, target)


class LinearSynthetic(_OfflineRegressionBuilder):
    """y = x . theta + bias + N(0, 0.1^2), x ~ N(0, I_8); theta, bias: linear_true_parameters()."""

    DESCRIPTION = (
        "Synthetic linear regression: 8 standard-normal features, target = features @ theta + bias "
        "+ Gaussian noise (std 0.1), fixed seeds; 1024 train / 256 test examples."
    )
    NUM_FEATURES = LINEAR_NUM_FEATURES

    def _split_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {split: linear_split_arrays(split) for split in SYNTHETIC_SPLIT_SIZES}


class NonlinearSynthetic(_OfflineRegressionBuilder):
    """y = sin(3x) + 0.3 x^2 + N(0, 0.05^2), x ~ U[-2, 2]: a wiggly 1-D curve."""

    DESCRIPTION = (
        "Synthetic 1-D nonlinear regression: x ~ Uniform[-2, 2], target = sin(3x) + 0.3 x^2 "
        "+ Gaussian noise (std 0.05), fixed seeds; 1024 train / 256 test examples."
    )
    NUM_FEATURES = 1

    def _split_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {split: nonlinear_split_arrays(split) for split in SYNTHETIC_SPLIT_SIZES}


class Diabetes(_OfflineRegressionBuilder):
    """scikit-learn's bundled diabetes data (442 x 10), train_test_split(0.2, random_state=42)."""

    DESCRIPTION = (
        "Diabetes (Efron et al. 2004) as bundled with scikit-learn: 10 mean-centred, scaled "
        "baseline features and a disease-progression target; train_test_split(test_size=0.2, "
        "random_state=42) gives 353 train / 89 test examples in that order."
    )
    NUM_FEATURES = DIABETES_NUM_FEATURES

    def _split_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return diabetes_split_arrays()


class BreastCancer(_OfflineRegressionBuilder):
    """scikit-learn's breast cancer data (569 x 30), train_test_split(0.2, random_state=42)."""

    DESCRIPTION = (
        "Breast Cancer Wisconsin (Diagnostic) as bundled with scikit-learn: 30 raw features of "
        "cell nuclei and a binary target (1 = benign, 0 = malignant, scikit-learn's coding); "
        "train_test_split(test_size=0.2, random_state=42) gives 455 train / 114 test examples."
    )
    NUM_FEATURES = BREAST_CANCER_NUM_FEATURES

    def _split_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return breast_cancer_split_arrays()
