"""ResNet with basic blocks and batch normalization, for small images such as 28x28 or 32x32
(CIFAR-style stem: a 3x3 convolution at full resolution, or with `stem_strides=2` at half)."""

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
    width: int = 64  # of the first stage; each later stage doubles it
    widths: Sequence[int] = ()  # each stage's width, in place of `width` doubling; () for that
    # 2: the stem convolution halves height and width, so every stage runs on a quarter of
    # the positions (a quarter of the multiply-adds for the same widths).
    stem_strides: int = 1
    # Evaluation averages the logits of each image and its mirror image (test-time
    # augmentation for models trained with horizontal flips); training sees images as given.
    mirror_average: bool = False
    # Evaluation also averages over the image moved one pixel up, down, left and right (zeros
    # fill the edge it leaves): five views, ten with `mirror_average`.
    shift_average: bool = False
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        stages = len(self.stage_sizes)
        widths = tuple(self.widths) or tuple(self.width * 2**stage for stage in range(stages))
        if len(widths) != len(self.stage_sizes):
            raise ValueError(
                f"ResNet widths {widths} name {len(widths)} stages but stage_sizes "
                f"{tuple(self.stage_sizes)} has {stages}; give one width per stage."
            )
        views = 1
        if self.mirror_average and not train:  # one pass over all views: each module once
            images, views = jnp.concatenate([images, images[:, :, ::-1]]), views * 2
        if self.shift_average and not train:
            images, views = jnp.concatenate([images, *_one_pixel_shifts(images)]), views * 5
        stem = nn.Conv(widths[0], (3, 3), self.stem_strides, use_bias=False, **dtypes)
        hidden = stem(images)
        norm = nn.BatchNorm(use_running_average=not train, momentum=0.9, **dtypes)
        hidden = nn.relu(norm(hidden))
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                hidden = BasicBlock(widths[stage], strides, **dtypes)(hidden, train=train)
        hidden = hidden.mean(axis=(1, 2))
        logits = nn.Dense(self.num_classes, **dtypes)(hidden)
        return jnp.mean(jnp.stack(jnp.split(logits, views)), axis=0) if views > 1 else logits


def _one_pixel_shifts(images: jax.Array) -> list[jax.Array]:
    """`images` `[batch, height, width, channels]` moved one pixel down, up, right and left."""
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = images.shape[1:3]
    return [
        padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
    ]
