"""A two-hidden-layer MLP with dropout on MNIST-1D (published MLP: 68% test accuracy)."""

import ml_collections

from experiments.image_classification.configs import mnist1d_cnn


def get_config() -> ml_collections.ConfigDict:
    config = mnist1d_cnn.get_config()
    config.model = ml_collections.ConfigDict(
        {"name": "mlp", "hidden_sizes": (512, 512), "dropout_rate": 0.5}
    )
    config.weight_decay = 0.05
    # The same bits on 1, 2, 4 or 8 devices (docs/reproducibility.md): 8 blocks of 16 rows,
    # their gradients added in a fixed order.
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.batch_groups = 8
    return config
