"""Schedules and optimizers built from configs match their closed forms."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research.core import optimizers
from research.core.config import base_config


def _config(**values):
    config = base_config()
    config.update(values)
    return config


def test_warmup_cosine_schedule_matches_closed_form():
    config = _config(learning_rate=0.5, schedule="warmup_cosine", warmup_steps=10)
    config.num_train_steps = 110
    schedule = optimizers.create_learning_rate_schedule(config)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.25)
    assert float(schedule(10)) == pytest.approx(0.5)
    # Cosine over the remaining 100 steps: halfway down at step 60.
    assert float(schedule(60)) == pytest.approx(0.25, rel=1e-5)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_decays_at_boundaries():
    config = _config(learning_rate=1.0, schedule="step", decay_boundaries=(0.5, 0.75))
    config.num_train_steps = 100
    config.decay_factor = 0.1
    schedule = optimizers.create_learning_rate_schedule(config)
    assert [float(schedule(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    )


def test_sgd_with_weight_decay_and_clipping_matches_hand_computation():
    config = _config(optimizer="sgd", learning_rate=0.1, weight_decay=0.01, grad_clip_norm=1.0)
    optimizer = optimizers.create_optimizer(config)
    params = {"kernel": jnp.array([[1.0, 2.0]]), "bias": jnp.array([3.0])}
    grads = {"kernel": jnp.array([[3.0, 0.0]]), "bias": jnp.array([4.0])}  # norm 5 -> scale 1/5
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    # The kernel is decayed, the bias is not (decay applies to matrices only).
    expected_kernel = -0.1 * (np.array([[0.6, 0.0]]) + 0.01 * np.array([[1.0, 2.0]]))
    np.testing.assert_allclose(updates["kernel"], expected_kernel, rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], [-0.1 * 0.8], rtol=1e-6)


def test_nesterov_momentum_second_step_matches_hand_computation():
    config = _config(optimizer="nesterov", learning_rate=0.1, momentum=0.9)
    optimizer = optimizers.create_optimizer(config)
    params = {"w": jnp.array([0.0])}
    state = optimizer.init(params)
    gradient = {"w": jnp.array([1.0])}
    first, state = optimizer.update(gradient, state, params)
    second, _ = optimizer.update(gradient, state, params)
    # trace_1 = 1, update_1 = -lr (g + m trace_1); trace_2 = 1.9, update_2 = -lr (g + m trace_2)
    assert float(first["w"][0]) == pytest.approx(-0.1 * (1 + 0.9))
    assert float(second["w"][0]) == pytest.approx(-0.1 * (1 + 0.9 * 1.9))


@pytest.mark.parametrize("name", optimizers.OPTIMIZERS)
def test_every_optimizer_reduces_a_quadratic(name):
    config = _config(optimizer=name, learning_rate=0.3)
    optimizer = optimizers.create_optimizer(config)
    params = {"w": jnp.array([3.0, -2.0])}
    state = optimizer.init(params)
    for _ in range(50):
        grads = {"w": 2 * params["w"]}
        updates, state = optimizer.update(grads, state, params)
        params = {"w": params["w"] + updates["w"]}
    assert float(jnp.sum(params["w"] ** 2)) < 13.0 * math.exp(-1)


def test_warmup_longer_than_the_run_becomes_a_tenth_of_it():
    config = ml_collections.ConfigDict(
        {"learning_rate": 1.0, "schedule": "warmup_cosine", "warmup_steps": 500,
         "num_train_steps": 20}
    )  # fmt: skip
    schedule = optimizers.create_learning_rate_schedule(config)
    assert optimizers.effective_warmup_steps(config) == 2
    assert float(schedule(0)) == 0.0 and float(schedule(2)) == pytest.approx(1.0)
    config.num_train_steps = 1000
    assert optimizers.effective_warmup_steps(config) == 500
