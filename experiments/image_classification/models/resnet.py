"""ResNet with basic blocks and batch normalization, for 32x32 images (CIFAR-style stem)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection: `[b, h, w, c]` -> `[b, h/s, w/s, f]`."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, **dtypes)
        conv = lambda *args: nn.Conv(*args, use_bias=False, **dtypes)
        hidden = conv(self.features, (3, 3), self.strides)(inputs)
        hidden = nn.relu(norm()(hidden))
        hidden = conv(self.features, (3, 3))(hidden)
        hidden = norm()(hidden)
        shortcut = inputs
        if inputs.shape[-1] != self.features or self.strides != 1:
            shortcut = conv(self.features, (1, 1), self.strides)(inputs)
            shortcut = norm()(shortcut)
        return nn.relu(hidden + shortcut)


class ResNet(nn.Module):
    """ResNet-18 by default (`stage_sizes=(2, 2, 2, 2)`); logits `[batch, num_classes]`."""

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        hidden = nn.Conv(self.width, (3, 3), use_bias=False, **dtypes)(images)
        norm = nn.BatchNorm(use_running_average=not train, momentum=0.9, **dtypes)
        hidden = nn.relu(norm(hidden))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                hidden = BasicBlock(self.width * 2**stage, strides, **dtypes)(hidden, train=train)
        hidden = hidden.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, **dtypes)(hidden)
