"""A multilayer perceptron classifier."""

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """Flattens inputs `[batch, ...]` and returns logits `[batch, num_classes]`."""

    num_classes: int
    hidden_sizes: Sequence[int] = (100, 100)
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        hidden = inputs.reshape(inputs.shape[0], -1)
        for size in self.hidden_sizes:
            hidden = nn.relu(nn.Dense(size)(hidden))
            hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
        return nn.Dense(self.num_classes)(hidden)
