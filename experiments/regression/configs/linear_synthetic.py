"""Linear regression on synthetic data y = Xθ + noise; gradient descent vs. the closed form."""

import ml_collections

from research.core.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "regression"
    config.dataset = "linear_synthetic"
    config.model = ml_collections.ConfigDict({"name": "mlp", "hidden_sizes": ()})
    config.batch_size = 128
    config.eval_batch_size = 256
    config.optimizer = "adam"
    config.learning_rate = 0.05
    config.schedule = "warmup_cosine"
    config.num_train_steps = 2000
    config.eval_every_steps = 500
    config.log_every_steps = 100
    config.checkpoint_every_steps = 1000
    return config
