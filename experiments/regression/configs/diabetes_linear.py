"""Linear regression on scikit-learn's diabetes data (80/20 split, random_state=42)."""

import ml_collections

from experiments.regression.configs import linear_synthetic


def get_config() -> ml_collections.ConfigDict:
    config = linear_synthetic.get_config()
    config.dataset = "diabetes"
    config.batch_size = 32
    config.eval_batch_size = 96
    return config
