"""A two-convolution CNN on Fashion-MNIST, 93.30% in 8.5 minutes (prepare it offline, see
docs/data.md).

The small model that pretraining, fine-tuning and `mnist_cnn.py` build on; the Fashion-MNIST
headline is `fashion_mnist_cnn.py`'s ResNet.
"""

import ml_collections

from research.core.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "image_classification"
    config.dataset = "fashion_mnist"
    config.classes = ()  # a subset of the labels: label classes[i] becomes i; () for all
    config.train_examples_per_class = 0  # the first N training examples of each class; 0: all
    config.validation_examples = 0  # > 0: the last N training examples are the evaluation split
    config.model = ml_collections.ConfigDict(
        {
            "name": "cnn",
            "features": (32, 64),
            "kernel_size": (3, 3),
            "pool_size": (2, 2),
            "dense_sizes": (256,),
            "dropout_rate": 0.3,
        }
    )
    config.label_smoothing = 0.0  # of the training loss's targets; evaluation is unsmoothed
    config.batch_size = 128
    config.eval_batch_size = 1000
    config.optimizer = "adamw"
    config.learning_rate = 2e-3
    config.weight_decay = 1e-4
    config.schedule = "warmup_cosine"
    config.warmup_steps = 200
    config.num_train_steps = 7000
    config.eval_every_steps = 1000
    config.log_every_steps = 200
    config.checkpoint_every_steps = 1000
    # YNNPACK off: Eigen's multi-threaded convolutions, 8-13% faster steps for this config on
    # a 2-core CPU (benchmarks/NOTES.md); launch.py sets it before the backend starts.
    config.xla_flags = "--xla_cpu_experimental_ynn_fusion_type="
    return config
