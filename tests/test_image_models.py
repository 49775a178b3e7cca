"""The image classification models' building blocks against Flax's reference ops."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from experiments.image_classification.models.cnn import max_pool


@pytest.mark.parametrize(
    "shape, window",
    [((3, 40, 5), (2,)), ((3, 41, 5), (2,)), ((2, 28, 28, 4), (2, 2)), ((2, 9, 7, 3), (3, 2))],
)
def test_max_pool_equals_flax_max_pool_in_value_and_gradient(shape, window):
    inputs = jax.random.normal(jax.random.key(0), shape)
    cotangent = jax.random.normal(jax.random.key(1), nn.max_pool(inputs, window, window).shape)

    def ours(x):
        return (max_pool(x, window) * cotangent).sum()

    def flax(x):
        return (nn.max_pool(x, window, window) * cotangent).sum()

    np.testing.assert_array_equal(max_pool(inputs, window), nn.max_pool(inputs, window, window))
    # Random normal inputs have no ties, so both gradients route each cotangent to the one
    # maximum of its window.
    np.testing.assert_array_equal(jax.grad(ours)(inputs), jax.grad(flax)(inputs))
