"""The train state and the pure train and evaluation steps, jit-compiled over global arrays
(the trainer lays them out on its device mesh; nothing here knows about devices)."""

import functools
from collections.abc import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.core import data, precision
from research.core.task import Batch, Task

Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; the optimizer itself is static."""

    step: jax.Array
    params: flax.core.FrozenDict | dict  # float32 master weights, whatever the compute dtype
    model_state: dict  # non-trained collections such as batch_stats; {} for most models
    opt_state: optax.OptState
    loss_scale: precision.LossScale = flax.struct.field(default_factory=dict)  # float16 only
    # With `config.ema_decay` > 0: {"params", "model_state"}, exponential moving averages of
    # both, which evaluation, prediction and export use in their place (`evaluated`); else {}.
    ema: dict = flax.struct.field(default_factory=dict)


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    task: Task,
    example_batch: Batch,
    optimizer,
    *,
    loss_scaling: bool = False,
    ema: bool = False,
) -> TrainState:
    """Initializes parameters from `rng` on an example batch (on the host's default device).

    Parameters are kept in float32 whatever the model's `param_dtype` (they are cast to it
    for each step), so updates smaller than that dtype's resolution are not lost. With `ema`,
    the moving averages start at the initial parameters and model state.
    """
    params_rng, dropout_rng = jax.random.split(rng)
    variables = model.init(
        {"params": params_rng, "dropout": dropout_rng},
        *task.model_inputs(example_batch),
        train=False,
    )
    variables = dict(variables)
    params = precision.cast_floating(variables.pop("params"), jnp.float32)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=variables,
        opt_state=optimizer.init(params),
        loss_scale=precision.initial_loss_scale() if loss_scaling else {},
        ema={"params": params, "model_state": variables} if ema else {},
    )


def evaluated(state: TrainState) -> TrainState:
    """The state evaluation, prediction and export use: with moving averages (`ema`), those
    in place of the parameters and model state; otherwise `state` itself."""
    if not state.ema:
        return state
    return state.replace(params=state.ema["params"], model_state=state.ema["model_state"])


def _moving_average(average, value, decay: float):
    """decay x `average` + (1 - decay) x `value` for floating leaves; others take `value`."""

    def mix(old, new):
        if not jnp.issubdtype(new.dtype, jnp.floating):
            return new
        return (old * decay + new * (1 - decay)).astype(new.dtype)

    return jax.tree.map(mix, average, value)


def _apply(model, params, model_state, batch, task, *, train, rng=None):
    """Runs the model; returns (outputs, updated model_state)."""
    variables = {"params": params, **model_state}
    inputs = task.model_inputs(batch)
    rngs = {"dropout": rng} if rng is not None else {}
    if train and model_state:
        return model.apply(variables, *inputs, train=True, rngs=rngs, mutable=list(model_state))
    return model.apply(variables, *inputs, train=train, rngs=rngs), model_state


def _model_params(params, model: nn.Module):
    """The float32 master parameters as the model's `param_dtype` (float32 if it has none)."""
    return precision.cast_floating(params, getattr(model, "param_dtype", jnp.float32))


def _forward(params, model_state, batch, rng, *, model, task):
    """(per-example loss sums, weights, float32 outputs, model_state) of one training pass."""
    outputs, new_model_state = _apply(
        model, _model_params(params, model), model_state, batch, task, train=True, rng=rng
    )
    outputs = precision.cast_floating(outputs, jnp.float32)  # the loss is computed in float32
    loss_sums, weights = task.loss(outputs, batch)
    return loss_sums, weights, outputs, precision.cast_like(new_model_state, model_state)


def _slice_gradients(params, model_state, batch, rng, scale, rows, *, model, task):
    """(grads, (loss sum, weight sum, metric sums, model_state)) of `batch` `[n, ...]`: the
    gradients of `scale` x loss sum / `rows`."""

    def loss_fn(params):
        loss_sums, weights, outputs, new_model_state = _forward(
            params, model_state, batch, rng, model=model, task=task
        )
        total = loss_sums.sum()
        # Divided by the static row count only to keep float16 gradients in range.
        scaled = total / rows if scale is None else total / rows * scale
        sums = jax.tree.map(jnp.sum, task.metric_sums(outputs, batch))
        return scaled, (total, weights.sum(), sums, new_model_state)

    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, aux


def _gradients(
    state: TrainState, batch: Batch, rng, scale, *, model, task, micro_batches: int, unroll: bool
):
    """(loss, grads, model_state, metric sums) of the global batch `[rows, ...]`.

    The loss is the weighted mean over the global batch (weights: tokens, or 1 per example);
    gradients are of `scale` times the loss. With `micro_batches` > 1 (gradient
    accumulation) they are computed over that many slices in turn: slice i holds rows i,
    i + micro_batches, ..., so every device holds its share of every slice. Loss sums,
    weights and gradients are added over the slices and divided by the total weight once.
    Batch statistics (batch norm) are updated slice after slice. `unroll` writes the slices
    side by side in the program instead of a `lax.scan` (faster for convolutions on CPU).
    """
    rows = jax.tree.leaves(batch)[0].shape[0]
    slices = jax.tree.map(
        lambda leaf: jnp.swapaxes(
            leaf.reshape(rows // micro_batches, micro_batches, *leaf.shape[1:]), 0, 1
        ),
        batch,
    )

    def one_slice(model_state, index):
        key = rng if micro_batches == 1 else jax.random.fold_in(rng, index)
        micro_batch = jax.tree.map(lambda leaf: leaf[index], slices)
        return _slice_gradients(
            state.params, model_state, micro_batch, key, scale, rows, model=model, task=task
        )

    add = lambda a, b: jax.tree.map(jnp.add, a, b)

    def accumulate(carry, index):
        grads, (total, weight, sums, model_state) = carry
        more_grads, (more_total, more_weight, more_sums, model_state) = one_slice(
            model_state, index
        )
        return (add(grads, more_grads), (total + more_total, weight + more_weight,
                add(sums, more_sums), model_state)), None  # fmt: skip

    carry = one_slice(state.model_state, 0)
    if unroll:
        for index in range(1, micro_batches):
            carry, _ = accumulate(carry, index)
    elif micro_batches > 1:
        carry, _ = jax.lax.scan(accumulate, carry, jnp.arange(1, micro_batches))
    grads, (total, weight, sums, model_state) = carry
    grads = jax.tree.map(lambda g: g * (rows / weight), grads)
    return total / weight, grads, model_state, sums


def _grouped_gradients(state: TrainState, batch: Batch, rng, scale, *, model, task, block_sums):
    """`_gradients` computed block by block (`block_sums`: the trainer's
    `parallel.block_sums`, blocks of consecutive rows, dropout keys folded with the block's
    index) and added in a fixed order: the same bits on any device count."""
    rows = jax.tree.leaves(batch)[0].shape[0]

    def one_block(shared, block, index):
        params, key, scale = shared
        grads, (total, weight, sums, _) = _slice_gradients(
            params, {}, block, jax.random.fold_in(key, index), scale, rows, model=model, task=task
        )
        return grads, total, weight, sums

    grads, total, weight, sums = block_sums(one_block)((state.params, rng, scale), batch)
    grads = jax.tree.map(lambda g: g * (rows / weight), grads)
    return total / weight, grads, state.model_state, sums


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
    grad_accum_steps: int = 1,
    grad_accum_unroll: bool = False,
    block_sums: Callable | None = None,
    ema_decay: float = 0.0,
) -> tuple[TrainState, dict[str, Metrics]]:
    """One optimizer step on the global batch `[rows, ...]`.

    Returns the new state and `{"sums": task metric sums over the global batch,
    "diagnostics": grad_norm, learning_rate, all_finite}`. With `skip_nonfinite`, a step
    whose loss or gradient is not finite leaves the state unchanged. With a loss scale in
    the state (float16), a step with non-finite gradients is skipped and the scale halved;
    it counts as not finite only once the scale is down to 1. `grad_accum_steps` and
    `grad_accum_unroll` say how the gradient is computed (`_gradients`); `block_sums` computes
    it block by block in a fixed order instead (`_grouped_gradients`). With moving averages
    in the state, each step moves them `1 - ema_decay` of the way to the new values.
    """
    # One key for the global batch: dropout masks are drawn for its whole shape, so they do
    # not depend on how many devices share it (JAX's partitionable threefry).
    rng = jax.random.fold_in(rng, state.step)
    scale = state.loss_scale["scale"] if state.loss_scale else None
    if block_sums is not None:
        loss, grads, model_state, sums = _grouped_gradients(
            state, batch, rng, scale, model=model, task=task, block_sums=block_sums
        )
    else:
        loss, grads, model_state, sums = _gradients(
            state, batch, rng, scale, model=model, task=task, micro_batches=grad_accum_steps,
            unroll=grad_accum_unroll,
        )  # fmt: skip
    if scale is not None:
        grads = jax.tree.map(lambda g: g / scale, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    loss_finite = jnp.isfinite(loss)
    grads_finite = jnp.isfinite(grad_norm)
    all_finite = apply_update = loss_finite & grads_finite
    loss_scale = state.loss_scale
    if scale is not None:
        loss_scale = precision.next_loss_scale(state.loss_scale, grads_finite)
        # Overflow is expected while the scale adapts; at scale 1 it is divergence.
        all_finite = loss_finite & (grads_finite | (scale > 1))
    ema = state.ema
    if ema:
        ema = _moving_average(ema, {"params": params, "model_state": model_state}, ema_decay)
    if skip_nonfinite or scale is not None:
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(apply_update, a, b), new, old)
        params = keep(params, state.params)
        opt_state = keep(opt_state, state.opt_state)
        model_state = keep(model_state, state.model_state)
        ema = keep(ema, state.ema)
    diagnostics = {
        "grad_norm": grad_norm,
        "learning_rate": learning_rate_fn(state.step),
        "all_finite": all_finite,
        **({"loss_scale": scale} if scale is not None else {}),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        model_state=model_state,
        opt_state=opt_state,
        loss_scale=loss_scale,
        ema=ema,
    )
    return new_state, {"sums": sums, "diagnostics": diagnostics}


def train_steps(
    state: TrainState, batches: Batch, rng: jax.Array, *, unroll: bool, **step_settings
) -> tuple[TrainState, dict[str, Metrics]]:
    """`train_step` over `batches [steps, rows, ...]` in one call; outputs `[steps, ...]`.

    `unroll` writes the steps one after the other in the program instead of a `lax.scan`:
    on CPU, convolutions in a loop body lose their fast kernels (benchmarks/NOTES.md).
    """
    step = functools.partial(train_step, **step_settings)
    if not unroll:
        return jax.lax.scan(lambda carry, batch: step(carry, batch, rng), state, batches)
    outputs = []
    for index in range(jax.tree.leaves(batches)[0].shape[0]):
        state, output = step(state, jax.tree.map(lambda leaf, i=index: leaf[i], batches), rng)
        outputs.append(output)
    return state, jax.tree.map(lambda *leaves: jnp.stack(leaves), *outputs)


def train_step_on_resident_data(
    state: TrainState,
    indices: jax.Array | dict,
    rng: jax.Array,
    train_arrays: Batch,
    *,
    step,
    batch_sharding,
    draw_indices: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[TrainState, dict[str, Metrics]]:
    """`step(state, batch, rng)` on the rows `indices` (`[rows]`, or `[steps, rows]` for
    `train_steps`) of `train_arrays`, the whole training split already on every device: only
    the indices cross from the host. With `draw_indices(state.step)` the devices draw them
    themselves and `indices` is empty: nothing crosses. The batch is laid out as
    `batch_sharding` says, so each device gathers only its own rows."""
    if draw_indices is not None:
        indices = draw_indices(state.step)
    indices = jax.lax.with_sharding_constraint(indices, batch_sharding)
    batch = jax.tree.map(lambda array: array[indices], train_arrays)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return step(state, batch, rng)


def eval_step(state: TrainState, batch: Batch, *, model: nn.Module, task: Task) -> Metrics:
    """Metric sums over the global batch, padding masked out."""
    state = evaluated(state)
    params = _model_params(state.params, model)
    outputs, _ = _apply(model, params, state.model_state, batch, task, train=False)
    outputs = precision.cast_floating(outputs, jnp.float32)
    mask = batch[data.MASK_KEY]
    sums = {
        name: (values * mask).sum() for name, values in task.metric_sums(outputs, batch).items()
    }
    return sums


def predict_step(state: TrainState, batch: Batch, *, model: nn.Module, task: Task) -> jax.Array:
    """The task's predictions (for example decoded tokens) for the global batch."""
    state = evaluated(state)
    params = _model_params(state.params, model)
    return task.predict(model, {"params": params, **state.model_state}, batch)
