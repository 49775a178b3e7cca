"""The two-convolution CNN of fashion_mnist_small_cnn.py on MNIST (needs tfds `mnist` prepared
in data_dir)."""

import ml_collections

from experiments.image_classification.configs import fashion_mnist_small_cnn


def get_config() -> ml_collections.ConfigDict:
    config = fashion_mnist_small_cnn.get_config()
    config.dataset = "mnist"
    config.num_train_steps = 5000
    return config
