"""Regression models: a linear model and a multilayer perceptron (no hidden layers = linear)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    """Maps features `[batch, features]` to a prediction `[batch]`.

    The output is scaled by the training targets' mean and standard deviation, so the layers
    work at unit scale while the loss is computed in the target's own units.
    """

    hidden_sizes: Sequence[int] = ()
    target_mean: float = 0.0
    target_std: float = 1.0
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
        del train  # no dropout or normalization layers
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        hidden = features
        for size in self.hidden_sizes:
            hidden = nn.relu(nn.Dense(size, **dtypes)(hidden))
        # Scaled to the target's units in float32: bfloat16 would round a prediction of 150
        # to a multiple of 1.
        prediction = nn.Dense(1, **dtypes)(hidden)[:, 0].astype(jnp.float32)
        return self.target_mean + self.target_std * prediction
