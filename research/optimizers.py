"""Optimizers and learning-rate schedules from a config, all through optax."""

import jax
import ml_collections
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "adagrad")
SCHEDULES = ("constant", "warmup_cosine", "step")


def effective_warmup_steps(config: ml_collections.ConfigDict) -> int:
    """`config.warmup_steps`, or a tenth of the run when the run is not longer than them."""
    warmup_steps = config.get("warmup_steps", 0)
    if warmup_steps >= config.num_train_steps:
        return config.num_train_steps // 10
    return warmup_steps


def create_learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """`config.schedule`: constant, warmup_cosine (linear warmup, cosine to 0) or step.

    Every schedule starts with `config.warmup_steps` of linear warmup from 0 (a tenth of the
    run when the run is too short for them, so a short trial keeps the config's shape). The step
    schedule multiplies the rate by `config.decay_factor` at each of `config.decay_boundaries`
    (fractions of `num_train_steps`).
    """
    schedule = config.get("schedule", "constant")
    peak = config.learning_rate
    warmup_steps = effective_warmup_steps(config)
    if schedule == "warmup_cosine" and warmup_steps == 0:
        return optax.cosine_decay_schedule(peak, decay_steps=config.num_train_steps)
    if schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup_steps,
            decay_steps=config.num_train_steps,
            end_value=0.0,
        )
    if schedule == "step":
        boundaries = {
            int(fraction * config.num_train_steps): config.decay_factor
            for fraction in config.decay_boundaries
        }
        after_warmup = optax.piecewise_constant_schedule(peak, boundaries)
    else:
        assert schedule == "constant", schedule
        after_warmup = optax.constant_schedule(peak)
    if warmup_steps == 0:
        return after_warmup
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, after_warmup], [warmup_steps])


def _is_matrix(params):
    """Weight decay applies to kernels and embeddings, not to biases or norm scales."""
    return jax.tree.map(lambda leaf: leaf.ndim > 1, params)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """`config.optimizer` with the schedule, `weight_decay` and `grad_clip_norm` (0 = off)."""
    learning_rate = create_learning_rate_schedule(config)
    name = config.optimizer
    weight_decay = config.get("weight_decay", 0.0)
    momentum = config.get("momentum", 0.9)
    if name == "sgd":
        optimizer = optax.sgd(learning_rate)
    elif name in ("momentum", "nesterov"):
        optimizer = optax.sgd(learning_rate, momentum=momentum, nesterov=name == "nesterov")
    elif name == "adam":
        optimizer = optax.adam(learning_rate, b2=config.get("adam_beta2", 0.999))
    elif name == "adamw":
        optimizer = optax.adamw(
            learning_rate,
            b2=config.get("adam_beta2", 0.999),
            weight_decay=weight_decay,
            mask=_is_matrix,
        )
    else:
        assert name == "adagrad", name
        optimizer = optax.adagrad(learning_rate)
    chain = []
    if config.get("grad_clip_norm", 0.0) > 0:
        chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if weight_decay > 0 and name != "adamw":  # coupled L2, as in classic SGD weight decay
        chain.append(optax.add_decayed_weights(weight_decay, mask=_is_matrix))
    return optax.chain(*chain, optimizer)
