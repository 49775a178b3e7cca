"""ResNet with basic blocks and batch normalization, for 32x32 images (CIFAR-style stem)."""

from collections.abc import Sequence

import flax.linen as nn
import jax


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection: `[b, h, w, c]` -> `[b, h/s, w/s, f]`."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
        hidden = nn.Conv(self.features, (3, 3), self.strides, use_bias=False)(inputs)
        hidden = nn.relu(norm()(hidden))
        hidden = nn.Conv(self.features, (3, 3), use_bias=False)(hidden)
        hidden = norm()(hidden)
        shortcut = inputs
        if inputs.shape[-1] != self.features or self.strides != 1:
            shortcut = nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(inputs)
            shortcut = norm()(shortcut)
        return nn.relu(hidden + shortcut)


class ResNet(nn.Module):
    """ResNet-18 by default (`stage_sizes=(2, 2, 2, 2)`); logits `[batch, num_classes]`."""

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    width: int = 64

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        hidden = nn.Conv(self.width, (3, 3), use_bias=False)(images)
        hidden = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(hidden))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                hidden = BasicBlock(self.width * 2**stage, strides)(hidden, train=train)
        hidden = hidden.mean(axis=(1, 2))
        return nn.Dense(self.num_classes)(hidden)
