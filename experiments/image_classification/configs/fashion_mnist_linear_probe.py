"""Linear probe: fashion_mnist_finetune.py with every layer but the new head frozen."""

import ml_collections

from experiments.image_classification.configs import fashion_mnist_finetune


def get_config() -> ml_collections.ConfigDict:
    config = fashion_mnist_finetune.get_config()
    config.frozen = ("Conv_.*", "Dense_0/.*")  # the convolutions and the hidden dense layer
    return config
