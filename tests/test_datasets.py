"""Tests for the offline tfds builders: split sizes, dtypes, and agreement with their sources."""

import gzip
import os
import random

import numpy as np
import pytest
import tensorflow_datasets as tfds
from mnist1d.data import get_dataset_args, make_dataset
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split

from experiments.image_classification import datasets as image_datasets
from experiments.regression import datasets as regression_datasets

DIABETES_REFERENCE_TEST_MSE = 2900.2


def prepare_and_load(builder_class, data_dir) -> dict[str, dict[str, np.ndarray]]:
    """Prepares builder_class into data_dir and returns {split: {feature: array [N, ...]}}."""
    builder = builder_class(data_dir=str(data_dir))
    builder.download_and_prepare()
    return {
        split: tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        for split in builder.info.splits
    }


def least_squares_with_bias(features: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Closed-form OLS in float64; returns [weights..., bias] of shape [D + 1]."""
    design = np.hstack([features.astype(np.float64), np.ones((len(features), 1))])
    solution, *_ = np.linalg.lstsq(design, target.astype(np.float64), rcond=None)
    return solution


def test_mnist1d_generation_restores_global_rngs():
    np.random.seed(123)
    random.seed(123)
    expected_numpy_draw, expected_python_draw = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    image_datasets.generate_mnist1d()
    # Checked on the generator alone: tfds' download_and_prepare itself advances numpy's RNG.
    assert np.random.rand() == expected_numpy_draw
    assert random.random() == expected_python_draw


def test_mnist1d_matches_package_output(tmp_path):
    data = prepare_and_load(image_datasets.Mnist1d, tmp_path)
    numpy_state = np.random.get_state()
    reference = make_dataset(get_dataset_args())
    np.random.set_state(numpy_state)
    for split, signal_key, label_key, size in [
        ("train", "x", "y", 4000),
        ("test", "x_test", "y_test", 1000),
    ]:
        signals, labels = data[split]["signal"], data[split]["label"]
        assert signals.shape == (size, 40) and signals.dtype == np.float32
        assert labels.shape == (size,) and labels.dtype == np.int64
        np.testing.assert_array_equal(signals, reference[signal_key].astype(np.float32))
        np.testing.assert_array_equal(labels, reference[label_key])


def test_linear_synthetic_recovers_parameters_and_is_deterministic(tmp_path):
    data = prepare_and_load(regression_datasets.LinearSynthetic, tmp_path / "first")
    again = prepare_and_load(regression_datasets.LinearSynthetic, tmp_path / "second")
    num_features = regression_datasets.LINEAR_NUM_FEATURES
    for split, size in [("train", 1024), ("test", 256)]:
        assert data[split]["features"].shape == (size, num_features)
        assert data[split]["features"].dtype == np.float32
        assert data[split]["target"].shape == (size,) and data[split]["target"].dtype == np.float32
        for key in ("features", "target"):
            np.testing.assert_array_equal(data[split][key], again[split][key])

    train, test = data["train"], data["test"]
    solution = least_squares_with_bias(train["features"], train["target"])
    theta, bias = regression_datasets.linear_true_parameters()
    # Standard errors of the OLS estimate: noise_std * sqrt(diag((A^T A)^-1)).
    design = np.hstack([train["features"].astype(np.float64), np.ones((1024, 1))])
    standard_errors = regression_datasets.LINEAR_NOISE_STD * np.sqrt(
        np.diag(np.linalg.inv(design.T @ design))
    )
    errors = np.abs(solution - np.append(theta, bias))
    assert np.all(errors < 3 * standard_errors), errors / standard_errors

    predictions = test["features"].astype(np.float64) @ solution[:-1] + solution[-1]
    test_mse = np.mean((predictions - test["target"]) ** 2)
    assert test_mse == pytest.approx(regression_datasets.LINEAR_NOISE_STD**2, rel=0.2)


def test_nonlinear_synthetic_follows_documented_function(tmp_path):
    data = prepare_and_load(regression_datasets.NonlinearSynthetic, tmp_path)
    residuals = []
    for split, size in [("train", 1024), ("test", 256)]:
        features, target = data[split]["features"], data[split]["target"]
        assert features.shape == (size, 1) and features.dtype == np.float32
        assert target.shape == (size,) and target.dtype == np.float32
        assert features.min() >= -2.0 and features.max() <= 2.0
        x = features[:, 0].astype(np.float64)
        residuals.append(target - regression_datasets.nonlinear_function(x))
    residuals = np.concatenate(residuals)
    noise_std = regression_datasets.NONLINEAR_NOISE_STD
    # 5 sigma over 1280 Gaussian draws is exceeded with probability ~1e-3; seeds are fixed anyway.
    assert np.abs(residuals).max() < 5 * noise_std
    assert residuals.std() == pytest.approx(noise_std, rel=0.1)
    assert abs(residuals.mean()) < 4 * noise_std / np.sqrt(len(residuals))


def test_diabetes_matches_sklearn_split_and_ols_reference(tmp_path):
    assert "diabetes" not in tfds.list_builders(with_community_datasets=False) or (
        tfds.builder_cls("diabetes") is regression_datasets.Diabetes
    )
    data = prepare_and_load(regression_datasets.Diabetes, tmp_path)
    features, target = load_diabetes(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        features, target, test_size=0.2, random_state=42
    )
    for split, expected_x, expected_y in [("train", train_x, train_y), ("test", test_x, test_y)]:
        assert data[split]["features"].shape == (len(expected_x), 10)
        assert data[split]["features"].dtype == np.float32
        assert data[split]["target"].dtype == np.float32
        np.testing.assert_array_equal(data[split]["features"], expected_x.astype(np.float32))
        np.testing.assert_array_equal(data[split]["target"], expected_y.astype(np.float32))
    assert len(data["train"]["target"]) == 353 and len(data["test"]["target"]) == 89

    model = LinearRegression().fit(data["train"]["features"], data["train"]["target"])
    predictions = model.predict(data["test"]["features"]).astype(np.float64)
    test_mse = np.mean((predictions - data["test"]["target"]) ** 2)
    assert test_mse == pytest.approx(DIABETES_REFERENCE_TEST_MSE, rel=1e-3)


def test_prepare_fashion_mnist_missing_directory_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        image_datasets.prepare_fashion_mnist(str(tmp_path / "data"), str(tmp_path / "missing"))


@pytest.mark.skipif(
    not os.path.isdir(image_datasets.DEBIAN_FASHION_MNIST_DIR),
    reason="Debian package dataset-fashion-mnist is not installed (no IDX files to read)",
)
def test_prepare_fashion_mnist_from_debian_files(tmp_path):
    image_datasets.prepare_fashion_mnist(str(tmp_path))
    # Loaded through tfds' own registered builder, as downstream code does.
    builder = tfds.builder("fashion_mnist", data_dir=str(tmp_path))
    assert builder.info.splits["train"].num_examples == 60_000
    assert builder.info.splits["test"].num_examples == 10_000
    test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
    assert test["image"].shape == (10_000, 28, 28, 1) and test["image"].dtype == np.uint8
    assert test["label"].shape == (10_000,)

    idx_dir = image_datasets.DEBIAN_FASHION_MNIST_DIR
    with gzip.open(os.path.join(idx_dir, "t10k-labels-idx1-ubyte.gz")) as labels_file:
        idx_labels = np.frombuffer(labels_file.read()[8:], dtype=np.uint8)
    with gzip.open(os.path.join(idx_dir, "t10k-images-idx3-ubyte.gz")) as images_file:
        idx_images = np.frombuffer(images_file.read()[16:], dtype=np.uint8).reshape(-1, 28, 28, 1)
    # tfds stores examples in hashed-key order (as its own builder does), so match by image bytes.
    first_matches = np.flatnonzero((test["image"] == idx_images[0]).all(axis=(1, 2, 3)))
    assert len(first_matches) >= 1
    assert np.all(test["label"][first_matches] == idx_labels[0])
    loaded_pairs = sorted(
        zip((image.tobytes() for image in test["image"]), test["label"], strict=True)
    )
    idx_pairs = sorted(zip((image.tobytes() for image in idx_images), idx_labels, strict=True))
    assert loaded_pairs == idx_pairs


def test_validation_examples_are_the_last_training_examples_and_replace_the_test_split(data_dir):
    from helpers import load_config

    import experiments
    from research.core.config import ConfigError

    config = load_config(
        "experiments/image_classification/configs/mnist1d_mlp.py", data_dir=data_dir
    )
    whole = experiments.get_task(config).load_data("")
    config.validation_examples = 500
    held = experiments.get_task(config).load_data("")
    count = len(whole.train["label"])
    assert list(held.eval_splits) == ["validation"]
    assert len(held.train["label"]) == count - 500
    # The rows are the raw training rows, prepared with statistics of the first count - 500.
    raw = whole.train.records.read(slice(None))
    assert np.array_equal(held.eval_splits["validation"].records.read(slice(None))["signal"],
                          raw["signal"][count - 500:])  # fmt: skip
    first = raw["signal"][: count - 500].astype(np.float64)
    np.testing.assert_allclose(held.info["input_mean"], [first.mean()], rtol=1e-12)
    assert held.info["input_mean"] != whole.info["input_mean"]
    config.validation_examples = count
    with pytest.raises(ConfigError, match=f"validation_examples={count} leaves no training"):
        experiments.get_task(config).load_data("")
