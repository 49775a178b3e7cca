"""The MNIST-1D CNN with three labels per signal from its digit: ≥ 5, even, in {0, 6, 8, 9}."""

import ml_collections

from experiments.image_classification.configs import mnist1d_cnn


def get_config() -> ml_collections.ConfigDict:
    config = mnist1d_cnn.get_config()
    config.loss = "binary_cross_entropy"  # one sigmoid per label
    config.labels = "digit_attributes"  # experiments/image_classification/multi_label.py
    return config
