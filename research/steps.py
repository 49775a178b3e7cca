"""The train state and the pure train and evaluation steps (run under `parallel.pmap`)."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research import data, parallel
from research.task import Batch, Task

Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; the optimizer itself is static."""

    step: jax.Array
    params: flax.core.FrozenDict | dict
    model_state: dict  # non-trained collections such as batch_stats; {} for most models
    opt_state: optax.OptState


def create_train_state(
    rng: jax.Array, model: nn.Module, task: Task, example_batch: Batch, optimizer
) -> TrainState:
    """Initializes parameters from `rng` on an example batch (on the host's default device)."""
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init(
        {"params": params_rng, "dropout": dropout_rng},
        *task.model_inputs(example_batch),
        train=False,
    )
    variables = dict(variables)
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=variables,
        opt_state=optimizer.init(params),
    )


def _apply(model, params, model_state, batch, task, *, train, rng=None):
    """Runs the model; returns (outputs, updated model_state)."""
    variables = {"params": params, **model_state}
    inputs = task.model_inputs(batch)
    rngs = {"dropout": rng} if rng is not None else {}
    if train and model_state:
        return model.apply(variables, *inputs, train=True, rngs=rngs, mutable=list(model_state))
    return model.apply(variables, *inputs, train=train, rngs=rngs), model_state


def train_step(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    model: nn.Module,
    task: Task,
    optimizer: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    skip_nonfinite: bool = False,
) -> tuple[TrainState, dict[str, Metrics]]:
    """One optimizer step on this device's shard of the global batch.

    Each device's loss is normalised by the mean per-device weight, so averaging gradients
    with `pmean` gives exactly the gradient of the weighted mean loss over the global batch,
    even when devices hold different weights (tokens). Returns the new state and
    `{"sums": task metric sums over the global batch, "diagnostics": grad_norm,
    learning_rate, all_finite}`. With
    `skip_nonfinite`, a step whose loss or gradient is not finite leaves the state unchanged.
    """
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), parallel.device_index())
    device_count = parallel.sum_over_devices(1)

    def loss_fn(params):
        outputs, model_state = _apply(
            model, params, state.model_state, batch, task, train=True, rng=rng
        )
        loss_sums, weights = task.loss(outputs, batch)
        mean_weight = parallel.sum_over_devices(weights.sum()) / device_count
        return loss_sums.sum() / mean_weight, (outputs, model_state)

    (loss, (outputs, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.mean_over_devices(grads)
    model_state = parallel.mean_over_devices(model_state)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    all_finite = jnp.isfinite(parallel.mean_over_devices(loss)) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(all_finite, a, b), new, old)
        params = keep(params, state.params)
        opt_state = keep(opt_state, state.opt_state)
        model_state = keep(model_state, state.model_state)
    sums = jax.tree.map(jnp.sum, task.metric_sums(outputs, batch))
    diagnostics = {
        "grad_norm": grad_norm,
        "learning_rate": learning_rate_fn(state.step),
        "all_finite": all_finite,
    }
    new_state = state.replace(
        step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state
    )
    return new_state, {"sums": parallel.sum_over_devices(sums), "diagnostics": diagnostics}


def eval_step(state: TrainState, batch: Batch, *, model: nn.Module, task: Task) -> Metrics:
    """Metric sums over this batch of every device and host, padding masked out."""
    outputs, _ = _apply(model, state.params, state.model_state, batch, task, train=False)
    mask = batch[data.MASK_KEY]
    sums = {
        name: (values * mask).sum() for name, values in task.metric_sums(outputs, batch).items()
    }
    return parallel.sum_over_devices(sums)


def predict_step(state: TrainState, batch: Batch, *, model: nn.Module, task: Task) -> jax.Array:
    """The task's predictions (for example decoded tokens) for this device's batch."""
    return task.predict(model, {"params": state.params, **state.model_state}, batch)
