"""A plain convolutional classifier for 1-D signals or 2-D images."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool(inputs: jax.Array, window: Sequence[int]) -> jax.Array:
    """Max over non-overlapping windows (stride = window, VALID padding), as `nn.max_pool`:
    `[batch, *spatial, channels]` -> `[batch, *(spatial // window), channels]`.

    Written as a reshape and a max: the values are those of `nn.max_pool`, but the gradient
    is a compare and select instead of XLA:CPU's slow select-and-scatter, which made the
    Fashion-MNIST CNN step 1.5-1.8x faster on CPU (benchmarks/NOTES.md).
    """
    batch, *spatial, channels = inputs.shape
    kept = tuple(size - size % width for size, width in zip(spatial, window, strict=True))
    cropped = inputs[(slice(None), *(slice(0, size) for size in kept))]
    split = [batch]
    for size, width in zip(kept, window, strict=True):
        split += [size // width, width]
    windows = cropped.reshape(*split, channels)
    return windows.max(axis=tuple(range(2, 2 * len(window) + 1, 2)))


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
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        hidden = inputs
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        for features in self.features:
            hidden = nn.Conv(
                features,
                tuple(self.kernel_size),
                tuple(self.strides),
                padding=self.padding,
                **dtypes,
            )(hidden)
            hidden = nn.relu(hidden)
            if self.pool_size:
                window = tuple(self.pool_size)
                if self.pooling == "max":
                    hidden = max_pool(hidden, window)
                else:
                    hidden = nn.avg_pool(hidden, window, window)
        hidden = hidden.reshape(hidden.shape[0], -1)
        for size in self.dense_sizes:
            hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
            hidden = nn.relu(nn.Dense(size, **dtypes)(hidden))
        hidden = nn.Dropout(self.dropout_rate, deterministic=not train)(hidden)
        return nn.Dense(self.num_classes, **dtypes)(hidden)
