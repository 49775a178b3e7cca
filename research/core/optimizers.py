"""Optimizers and learning-rate schedules from a config, all through optax; frozen parameters
and per-parameter learning-rate multipliers select parameters by regular expressions over paths.
"""

import jax
import ml_collections
import optax

from research.core import parameters

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "adagrad")
SCHEDULES = ("constant", "warmup_cosine", "step")
FROZEN = "frozen"  # the group of parameters that receive no updates


def effective_warmup_steps(config: ml_collections.ConfigDict) -> int:
    """`config.warmup_steps`, or a tenth of the run when the run is not longer than them."""
    warmup_steps = config.warmup_steps
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
    schedule = config.schedule
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


def _base_optimizer(
    config: ml_collections.ConfigDict, learning_rate
) -> optax.GradientTransformation:
    name = config.optimizer
    weight_decay = config.weight_decay
    momentum = config.momentum
    if name == "sgd":
        optimizer = optax.sgd(learning_rate)
    elif name in ("momentum", "nesterov"):
        optimizer = optax.sgd(learning_rate, momentum=momentum, nesterov=name == "nesterov")
    elif name == "adam":
        optimizer = optax.adam(learning_rate, b2=config.adam_beta2)
    elif name == "adamw":
        optimizer = optax.adamw(
            learning_rate,
            b2=config.adam_beta2,
            weight_decay=weight_decay,
            mask=_is_matrix,
        )
    else:
        assert name == "adagrad", name
        optimizer = optax.adagrad(learning_rate)
    return optimizer


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """`config.optimizer` with the schedule, `weight_decay` and `grad_clip_norm` (0 = off).

    With `config.frozen` or `config.learning_rate_multipliers`, an `optax.multi_transform`
    gives each group of parameters its own copy of the optimizer (the learning rate times the
    group's factor) and frozen parameters `set_to_zero`, which keeps no state for them. Clipping
    uses the global norm of the gradients of the parameters that train.
    """
    schedule = create_learning_rate_schedule(config)
    weight_decay = config.weight_decay
    chain = []
    if config.grad_clip_norm > 0:
        clip = optax.clip_by_global_norm(config.grad_clip_norm)
        chain.append(optax.masked(clip, _trains(config)) if config.frozen else clip)
    if weight_decay > 0 and config.optimizer != "adamw":  # coupled L2, as in classic SGD
        chain.append(optax.add_decayed_weights(weight_decay, mask=_is_matrix))
    if not config.frozen and not config.learning_rate_multipliers:
        return optax.chain(*chain, _base_optimizer(config, schedule))
    transforms = {FROZEN: optax.set_to_zero()}
    for factor in {1.0, *(factor for _, factor in multipliers(config))}:
        scaled = schedule if factor == 1.0 else _scaled(schedule, factor)
        transforms[_group_label(factor)] = _base_optimizer(config, scaled)
    labels = lambda params: parameter_groups(config, params)  # noqa: E731
    return optax.chain(*chain, optax.multi_transform(transforms, labels))


def _scaled(schedule: optax.Schedule, factor: float) -> optax.Schedule:
    return lambda step: schedule(step) * factor


def _trains(config: ml_collections.ConfigDict):
    """The mask of the parameters that are not frozen."""
    return lambda params: jax.tree.map(
        lambda group: group != FROZEN, parameter_groups(config, params)
    )


def _group_label(factor: float) -> str:
    return f"learning_rate_x{factor!r}"


def multipliers(config: ml_collections.ConfigDict) -> list[tuple[str, float]]:
    """`config.learning_rate_multipliers` as (regular expression, factor) pairs."""
    return [(str(pattern), float(factor)) for pattern, factor in config.learning_rate_multipliers]


def parameter_groups(config: ml_collections.ConfigDict, params):
    """A tree like `params` naming each parameter's group: frozen, or its learning-rate factor.

    A parameter whose path `config.frozen` matches is frozen; otherwise the pattern of
    `config.learning_rate_multipliers` that matches it gives its factor (1 when none does).
    `research.core.config.check_parameter_patterns` refuses patterns that overlap.
    """
    frozen = tuple(config.frozen)
    factors = dict(multipliers(config))

    def group(path, _):
        name = parameters.path_name(path)
        if parameters.matches(frozen, name):
            return FROZEN
        pattern = parameters.first_match(factors, name)
        return _group_label(1.0 if pattern is None else factors[pattern])

    return jax.tree_util.tree_map_with_path(group, params)
