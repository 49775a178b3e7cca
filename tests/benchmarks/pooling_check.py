"""The proposed max-pooling change, measured on the real fashion_mnist_cnn train step.

    .venv/bin/python tests/benchmarks/pooling_check.py

Times the trainer's pmapped step (as `measure.bare_step`) for the config as it is (`nn.max_pool`,
a `reduce_window` whose gradient is a scatter), with `nn.max_pool` replaced by a reshape and
`max` over each 2x2 window (same values: non-overlapping windows, even sizes), with average
pooling, and without dropout. Prints ms per step and checks that both max poolings agree.
"""

import os
import sys
from unittest import mock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests.benchmarks import measure, suite  # noqa: E402


def max_pool_by_reshape(inputs, window_shape, strides=None, padding="VALID"):
    """`nn.max_pool` for windows equal to strides that divide the spatial sizes."""
    assert tuple(strides) == tuple(window_shape) and padding == "VALID"
    batch, *spatial, channels = inputs.shape
    assert all(size % window == 0 for size, window in zip(spatial, window_shape, strict=True))
    split = [batch]
    for size, window in zip(spatial, window_shape, strict=True):
        split += [size // window, window]
    window_axes = tuple(range(2, 2 * len(spatial) + 1, 2))
    return inputs.reshape(*split, channels).max(axis=window_axes)


def main() -> None:
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 32))
    assert np.array_equal(nn.max_pool(x, (2, 2), (2, 2)), max_pool_by_reshape(x, (2, 2), (2, 2)))
    benchmark = suite.BY_NAME["fashion_mnist_cnn"]
    variants = {
        "config as is (nn.max_pool)": ({}, False),
        "max pooling by reshape": ({}, True),
        "avg pooling (nn.avg_pool)": ({"pooling": "avg"}, False),
        "no dropout, nn.max_pool": ({"dropout_rate": 0.0}, False),
        "no dropout, max by reshape": ({"dropout_rate": 0.0}, True),
    }
    base = suite.load_config(benchmark, quick=False)
    dataset, source = suite.load_dataset(benchmark, base, suite.get_task(base), "/tmp")
    for name, (model_overrides, reshape) in variants.items():
        config = suite.load_config(benchmark, quick=False)
        for key, value in model_overrides.items():
            config.model[key] = value
        task = suite.get_task(config)
        replacement = max_pool_by_reshape if reshape else nn.max_pool
        with mock.patch.object(nn, "max_pool", replacement):
            step = measure.bare_step(config, task, dataset)
            per_step, cores = measure.cores_used(lambda step=step: step["time"](1.0))
        print(
            f"{name:<30} {1e3 * min(per_step):7.1f} ms/step ({source} data, {cores:.2f} cores)",
            flush=True,
        )


if __name__ == "__main__":
    main()
