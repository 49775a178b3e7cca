"""Pretraining for fine-tuning: the Fashion-MNIST CNN on classes 0-4, all 30,000 of their images."""

import ml_collections

from experiments.image_classification.configs import fashion_mnist_small_cnn


def get_config() -> ml_collections.ConfigDict:
    config = fashion_mnist_small_cnn.get_config()
    config.classes = (0, 1, 2, 3, 4)  # T-shirt/top, trouser, pullover, dress, coat
    config.num_train_steps = 500  # 2.1 epochs at batch 128
    config.warmup_steps = 50
    config.eval_every_steps = 250
    config.log_every_steps = 50
    config.checkpoint_every_steps = 250
    return config
