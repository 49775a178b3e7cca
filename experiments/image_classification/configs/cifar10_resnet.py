"""ResNet-18 on CIFAR-10 with momentum SGD, random crops (4 pixels of padding) and horizontal
flips (needs tfds `cifar10` prepared in data_dir)."""

import ml_collections

from research.core.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "image_classification"
    config.dataset = "cifar10"
    config.classes = ()  # a subset of the labels: label classes[i] becomes i; () for all
    config.train_examples_per_class = 0  # the first N training examples of each class; 0: all
    config.validation_examples = 0  # > 0: the last N training examples are the evaluation split
    config.model = ml_collections.ConfigDict(
        {"name": "resnet", "stage_sizes": (2, 2, 2, 2), "width": 64}
    )
    config.augmentation.crop_padding = 4
    config.augmentation.horizontal_flip = True
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.optimizer = "nesterov"
    config.momentum = 0.9
    config.learning_rate = 0.1
    config.weight_decay = 5e-4
    config.schedule = "warmup_cosine"
    config.warmup_steps = 500
    config.num_train_steps = 40000
    config.eval_every_steps = 2000
    config.log_every_steps = 200
    config.checkpoint_every_steps = 2000
    # YNNPACK off: Eigen's multi-threaded convolutions, 8-13% faster steps for this config on
    # a 2-core CPU (benchmarks/NOTES.md); launch.py sets it before the backend starts.
    config.xla_flags = "--xla_cpu_experimental_ynn_fusion_type="
    return config
