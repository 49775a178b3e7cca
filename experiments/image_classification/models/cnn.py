"""A plain convolutional classifier for 1-D signals or 2-D images."""

from collections.abc import Sequence

import flax.linen as nn
import jax


class CNN(nn.Module):
    """Convolutions (each optionally followed by pooling), then dense layers.

    Inputs are `[batch, length, channels]` (1-D, `kernel_size` of length 1) or
    `[batch, height, width, channels]` (2-D); returns logits `[batch, num_classes]`.
    """

    num_classes: int
    features: Sequence[int] = (32, 64)
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: str = "SAME"
    pool_size: Sequence[int] = (2, 2)  # () for no pooling
    pooling: str = "max"
    dense_sizes: Sequence[int] = (256,)
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        hidden = inputs
        pool = nn.max_pool if self.pooling == "max" else nn.avg_pool
        for features in self.features:
            hidden = nn.Conv(
                features, tuple(self.kernel_size), tuple(self.strides), padding=self.padding
            )(hidden)
            hidden = nn.relu(hidden)
            if self.pool_size:
                hidden = pool(hidden, tuple(self.pool_size), tuple(self.pool_size))
        hidden = hidden.reshape(hidden.shape[0], -1)
        for size in self.dense_sizes:
            hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
            hidden = nn.relu(nn.Dense(size)(hidden))
        hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
        return nn.Dense(self.num_classes)(hidden)
