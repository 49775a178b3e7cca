"""A one-hidden-layer MLP (100 units, as scikit-learn's MLPRegressor) on the diabetes data."""

import ml_collections

from experiments.regression.configs import diabetes_linear


def get_config() -> ml_collections.ConfigDict:
    config = diabetes_linear.get_config()
    config.model = ml_collections.ConfigDict({"hidden_sizes": (100,)})
    config.learning_rate = 0.003
    config.weight_decay = 1e-4
    config.num_train_steps = 3000
    return config
