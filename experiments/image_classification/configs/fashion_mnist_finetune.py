"""Fine-tuning: Fashion-MNIST classes 5-9, 100 images each, a new head (--init_from a pretrain)."""

import ml_collections

from experiments.image_classification.configs import fashion_mnist_small_cnn


def get_config() -> ml_collections.ConfigDict:
    """Without --init_from, the same config trains the CNN from scratch (the baseline)."""
    config = fashion_mnist_small_cnn.get_config()
    config.classes = (5, 6, 7, 8, 9)  # sandal, shirt, sneaker, bag, ankle boot
    config.train_examples_per_class = 100
    config.init.reinitialize = ("Dense_1/.*",)  # the head: the classes are new
    config.batch_size = 50
    config.num_train_steps = 300  # 30 epochs of the 500 images
    config.warmup_steps = 30
    config.eval_every_steps = 100
    config.log_every_steps = 50
    config.checkpoint_every_steps = 300
    return config
