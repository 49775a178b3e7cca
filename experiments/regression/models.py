"""Regression models: a linear model and a multilayer perceptron (no hidden layers = linear)."""

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """Maps features `[batch, features]` to a prediction `[batch]`.

    The output is scaled by the training targets' mean and standard deviation, so the layers
    work at unit scale while the loss is computed in the target's own units.
    """

    hidden_sizes: Sequence[int] = ()
    target_mean: float = 0.0
    target_std: float = 1.0

    @nn.compact
    def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
        del train  # no dropout or normalization layers
        hidden = features
        for size in self.hidden_sizes:
            hidden = nn.relu(nn.Dense(size)(hidden))
        prediction = nn.Dense(1)(hidden)[:, 0]
        return self.target_mean + self.target_std * prediction
