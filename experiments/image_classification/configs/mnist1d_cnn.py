"""A 1-D CNN on MNIST-1D (the default experiment of `python launch.py`)."""

import ml_collections

from research.core.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "image_classification"
    config.dataset = "mnist1d"
    config.classes = ()  # a subset of the labels: label classes[i] becomes i; () for all
    config.train_examples_per_class = 0  # the first N training examples of each class; 0: all
    config.validation_examples = 0  # > 0: the last N training examples are the evaluation split
    config.model = ml_collections.ConfigDict(
        {
            "name": "cnn",
            "features": (32, 32, 32),
            "kernel_size": (5,),
            "strides": (1,),
            "pool_size": (2,),
            "dense_sizes": (256,),
            "dropout_rate": 0.3,
        }
    )
    config.batch_size = 100
    config.eval_batch_size = 500
    config.optimizer = "adamw"
    config.learning_rate = 3e-3
    config.weight_decay = 0.05
    config.schedule = "warmup_cosine"
    config.warmup_steps = 100
    config.num_train_steps = 6000
    config.eval_every_steps = 1000
    config.log_every_steps = 200
    config.checkpoint_every_steps = 1000
    return config
