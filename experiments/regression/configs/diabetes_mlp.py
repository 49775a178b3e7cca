"""A one-hidden-layer MLP (100 units, as scikit-learn's MLPRegressor) on the diabetes data."""

import ml_collections

from experiments.regression.configs import diabetes_linear


def get_config() -> ml_collections.ConfigDict:
    config = diabetes_linear.get_config()
    config.model = ml_collections.ConfigDict({"name": "mlp", "hidden_sizes": (100,)})
    config.learning_rate = 0.001
    config.weight_decay = 1e-4  # scikit-learn's default alpha
    config.num_train_steps = 600  # ~55 epochs: longer training overfits the 353 examples
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 600
    return config
