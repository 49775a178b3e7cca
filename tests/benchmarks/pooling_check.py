"""Max pooling by reshape (`models/cnn.max_pool`) against `nn.max_pool`, on the real
fashion_mnist_cnn train step.

    .venv/bin/python tests/benchmarks/pooling_check.py

Times the trainer's pmapped step (as `measure.bare_step`) for the config as it is (the
library's `max_pool`: a reshape and a `max` over each window), with `nn.max_pool` in its place
(a `reduce_window` whose gradient is a scatter), with average pooling, and without dropout.
Prints ms per step.
"""

import os
import sys
from unittest import mock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

import flax.linen as nn  # noqa: E402

from experiments.image_classification.models import cnn  # noqa: E402
from tests.benchmarks import measure, suite  # noqa: E402


def flax_max_pool(inputs, window):
    return nn.max_pool(inputs, window, window)


def main() -> None:
    benchmark = suite.BY_NAME["fashion_mnist_cnn"]
    variants = {
        "nn.max_pool": ({}, False),
        "max pooling by reshape (as is)": ({}, True),
        "avg pooling (nn.avg_pool)": ({"pooling": "avg"}, True),
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
        replacement = cnn.max_pool if reshape else flax_max_pool
        with mock.patch.object(cnn, "max_pool", replacement):
            step = measure.bare_step(config, task, dataset)
            per_step, cores = measure.cores_used(lambda step=step: step["time"](1.0))
        print(
            f"{name:<30} {1e3 * min(per_step):7.1f} ms/step ({source} data, {cores:.2f} cores)",
            flush=True,
        )


if __name__ == "__main__":
    main()
