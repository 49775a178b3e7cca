"""Logistic regression on scikit-learn's breast cancer data (80/20 split, random_state=42)."""

import ml_collections

from research.core.config import base_config

NUM_TRAIN_EXAMPLES = 455


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "regression"
    config.loss = "binary_cross_entropy"
    config.dataset = "breast_cancer"
    config.model = ml_collections.ConfigDict({"name": "mlp", "hidden_sizes": ()})
    # The whole training split in every step: full-batch gradient descent.
    config.batch_size = NUM_TRAIN_EXAMPLES
    config.eval_batch_size = 128
    config.optimizer = "adam"
    config.learning_rate = 0.5
    config.schedule = "warmup_cosine"
    config.warmup_steps = 20
    # The L2 strength λ: the run minimizes mean log loss + λ/2 |w|² (bias unpenalized), which
    # is scikit-learn's LogisticRegression objective with C = 1 / (λ n); λ = 1/n is its C = 1.
    config.weight_decay = 1.0 / NUM_TRAIN_EXAMPLES
    config.num_train_steps = 1000
    config.eval_every_steps = 250
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    return config
