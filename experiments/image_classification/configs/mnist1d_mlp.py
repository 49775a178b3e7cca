"""A two-hidden-layer MLP with dropout on MNIST-1D (published MLP: 68% test accuracy)."""

import ml_collections

from experiments.image_classification.configs import mnist1d_cnn


def get_config() -> ml_collections.ConfigDict:
    config = mnist1d_cnn.get_config()
    config.model = ml_collections.ConfigDict(
        {"name": "mlp", "hidden_sizes": (512, 512), "dropout_rate": 0.5}
    )
    config.weight_decay = 0.05
    return config
