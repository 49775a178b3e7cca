"""A multilayer perceptron classifier."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    """Flattens inputs `[batch, ...]` and returns logits `[batch, num_classes]`."""

    num_classes: int
    hidden_sizes: Sequence[int] = (100, 100)
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        hidden = inputs.reshape(inputs.shape[0], -1)
        for size in self.hidden_sizes:
            hidden = nn.relu(nn.Dense(size, **dtypes)(hidden))
            hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
        return nn.Dense(self.num_classes, **dtypes)(hidden)
