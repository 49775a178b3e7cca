"""`config.ema_decay`: moving averages of the parameters and batch statistics, which
evaluation, prediction, export and fine-tuning use, while training itself is unchanged."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.core import config as config_lib
from research.core import steps
from research.core.task import Task
from research.runtime import checkpoints
from tests.helpers import REPO_ROOT, load_config

DECAY = 0.75
NUM_STEPS = 6


class NormedModel(nn.Module):
    """A Dense layer, batch norm (state to average) and a Dense output: `[b, 3]` -> `[b, 2]`."""

    @nn.compact
    def __call__(self, inputs, *, train):
        hidden = nn.Dense(4)(inputs)
        hidden = nn.BatchNorm(use_running_average=not train, momentum=0.5)(hidden)
        return nn.Dense(2)(jnp.tanh(hidden))


def _squared_error(outputs, batch):
    return ((outputs - batch["targets"]) ** 2).sum(-1), jnp.ones(outputs.shape[0])


TASK = Task(
    load_data=None,
    create_model=None,
    model_inputs=lambda batch: (batch["inputs"],),
    loss=_squared_error,
    metric_sums=lambda outputs, batch: {"loss": _squared_error(outputs, batch)[0]},
    summarize=lambda sums: sums,
)
OPTIMIZER = optax.sgd(0.1, momentum=0.9)
MODEL = NormedModel()


def _batches():
    rng = np.random.default_rng(0)
    return [
        {
            "inputs": rng.normal(size=(8, 3)).astype(np.float32),
            "targets": rng.normal(size=(8, 2)).astype(np.float32),
            "mask": np.ones(8, np.float32),
        }
        for _ in range(NUM_STEPS)
    ]


def _train(ema_decay: float):
    """The states after each of NUM_STEPS steps."""
    batches = _batches()
    state = steps.create_train_state(
        jax.random.PRNGKey(0), MODEL, TASK, {k: v[:1] for k, v in batches[0].items()},
        OPTIMIZER, ema=ema_decay > 0,
    )  # fmt: skip
    step = jax.jit(
        functools.partial(
            steps.train_step, model=MODEL, task=TASK, optimizer=OPTIMIZER,
            learning_rate_fn=lambda step: 0.1, ema_decay=ema_decay,
        )
    )  # fmt: skip
    states = [state]
    for batch in batches:
        state, _ = step(state, batch, jax.random.PRNGKey(1))
        states.append(state)
    return states


def test_moving_averages_follow_the_recurrence_and_leave_training_unchanged():
    plain, averaged = _train(0.0), _train(DECAY)
    assert plain[-1].ema == {}
    for without, with_ema in zip(plain, averaged, strict=True):  # training: the same bits
        jax.tree.map(np.testing.assert_array_equal, without.params, with_ema.params)
        jax.tree.map(np.testing.assert_array_equal, without.model_state, with_ema.model_state)
    # The recurrence in float64 over the trained values, from the initial ones.
    values = lambda state: {"params": state.params, "model_state": state.model_state}
    expected = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), values(plain[0]))
    for state in plain[1:]:
        expected = jax.tree.map(
            lambda average, new: DECAY * average + (1 - DECAY) * np.asarray(new, np.float64),
            expected, values(state),
        )  # fmt: skip
    final = averaged[-1].ema
    jax.tree.map(
        lambda got, want: np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7),
        final, expected,
    )  # fmt: skip
    # The averages differ from the last values: the test would see them confused.
    assert not np.allclose(
        final["params"]["Dense_0"]["kernel"], plain[-1].params["Dense_0"]["kernel"]
    )
    assert not np.allclose(
        final["model_state"]["batch_stats"]["BatchNorm_0"]["mean"],
        plain[-1].model_state["batch_stats"]["BatchNorm_0"]["mean"],
    )


def test_evaluation_and_prediction_use_the_moving_averages():
    state = _train(DECAY)[-1]
    swapped = state.replace(
        params=state.ema["params"], model_state=state.ema["model_state"], ema={}
    )
    batch = _batches()[0]
    evaluate = jax.jit(functools.partial(steps.eval_step, model=MODEL, task=TASK))
    np.testing.assert_array_equal(evaluate(state, batch)["loss"], evaluate(swapped, batch)["loss"])
    assert evaluate(state, batch)["loss"] != evaluate(state.replace(ema={}), batch)["loss"]


def test_fine_tuning_from_a_run_with_averages_starts_from_them(tmp_path):
    source = _train(DECAY)[-1]
    directory = str(tmp_path / "checkpoints")
    checkpointer = checkpoints.Checkpointer(directory, 1)
    checkpointer.save(NUM_STEPS, source)
    checkpointer.wait()
    for fresh in _train(0.0)[0], _train(DECAY)[0]:  # a new run without and with averages
        restored, report = checkpoints.restore_model_from(directory, fresh, (), None)
        jax.tree.map(np.testing.assert_array_equal, restored.params, source.ema["params"])
        jax.tree.map(np.testing.assert_array_equal, restored.model_state, source.ema["model_state"])
        if fresh.ema:  # its own averages start where it starts
            jax.tree.map(np.testing.assert_array_equal, restored.ema["params"], restored.params)
        # 2 kernels, 2 biases, scale and bias; mean and var.
        assert len(report.restored) == 8 and report.unused == []


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"ema_decay": 1.0}, "config.ema_decay is 1.0; set it in [0, 1)"),
        ({"ema_decay": -0.5}, "config.ema_decay is -0.5; set it in [0, 1)"),
        (
            {"ema_decay": 0.999, "average_last_checkpoints": 2},
            "config.ema_decay=0.999 and config.average_last_checkpoints=2 both smooth",
        ),
    ],
)
def test_bad_moving_average_settings_are_one_sentence(overrides, words):
    config = load_config(
        f"{REPO_ROOT}/experiments/image_classification/configs/mnist1d_mlp.py", **overrides
    )
    with pytest.raises(config_lib.ConfigError, match=re.escape(words)):
        config_lib.validate(config, 1)
