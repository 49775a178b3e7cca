"""Checks a resolved experiment config before anything is compiled or written."""

import math
import re

import ml_collections

from research.core import data, optimizers, parameters
from research.errors import UserError

DTYPE_NAMES = ("float32", "bfloat16", "float16")

# Every experiment config has these keys, with these types.
REQUIRED_KEYS = {
    "task": str,
    "seed": int,
    "batch_size": int,
    "learning_rate": float,
    "optimizer": str,
    "num_train_steps": int,
    "eval_every_steps": int,
    "log_every_steps": int,
    "checkpoint_every_steps": int,
    "data_dir": str,
}

POSITIVE_INTEGERS = (
    "batch_size",
    "num_train_steps",
    "eval_every_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "eval_batch_size",
    "keep_checkpoints",
    "grad_accum_steps",
    "steps_per_dispatch",
)
NON_NEGATIVE_INTEGERS = (
    "seed",
    "warmup_steps",
    "average_last_checkpoints",
    "input_workers",
    "batch_groups",
)
# Numbers that must lie in [low, high] (None: unbounded); every number must be finite.
RANGES = {
    "weight_decay": (0.0, None),
    "grad_clip_norm": (0.0, None),
    "momentum": (0.0, 1.0),
    "decay_factor": (0.0, 1.0),
    "adam_beta2": (0.0, 1.0),
    "label_smoothing": (0.0, 1.0),
    "dropout_rate": (0.0, 1.0),
    "attention_dropout_rate": (0.0, 1.0),
}


class ConfigError(UserError, ValueError):
    """A config value a user must change; the message names the key and the fix."""


def _type_name(expected: type) -> str:
    return {int: "an integer", float: "a number", str: "a string"}[expected]


def _numbers(config: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted key, value) of every number in the config, nested configs included."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def _check_numbers(config: ml_collections.ConfigDict) -> None:
    for key, value in _numbers(config):
        if not math.isfinite(value):
            raise ConfigError(f"config.{key} is {value}; set --config.{key} to a finite number.")
        low, high = RANGES.get(key.rsplit(".", 1)[-1], (None, None))
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"{low} or more"
            raise ConfigError(f"config.{key} is {value}; set --config.{key} {bounds}.")


def validate(config: ml_collections.ConfigDict, device_count: int) -> None:
    """Raises `ConfigError` naming the first bad key and how to fix it."""
    for key, expected in REQUIRED_KEYS.items():
        if key not in config:
            raise ConfigError(f"The config has no key '{key}'; add `config.{key} = ...` to it.")
        value = config[key]
        valid = isinstance(value, expected) and not isinstance(value, bool)
        if expected is float:
            valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not valid:
            raise ConfigError(
                f"config.{key} must be {_type_name(expected)}, not {value!r}; "
                f"set it with --config.{key}=<{_type_name(expected)}>."
            )
    for key in POSITIVE_INTEGERS:
        if key in config and config[key] <= 0:
            raise ConfigError(
                f"config.{key} is {config[key]} but must be a positive integer; "
                f"set --config.{key} to 1 or more."
            )
    for key in NON_NEGATIVE_INTEGERS:
        if key in config and config[key] < 0:
            raise ConfigError(f"config.{key} is {config[key]}; set --config.{key} to 0 or more.")
    averaged = config.average_last_checkpoints
    if averaged > config.keep_checkpoints:
        raise ConfigError(
            f"config.average_last_checkpoints={averaged} exceeds the {config.keep_checkpoints} "
            f"checkpoints kept; set --config.keep_checkpoints to {averaged} or more."
        )
    if not 0 <= config.ema_decay < 1:
        raise ConfigError(
            f"config.ema_decay is {config.ema_decay}; set it in [0, 1), for example 0.999 "
            "(0 turns the moving averages off)."
        )
    if config.ema_decay > 0 and averaged > 1:
        raise ConfigError(
            f"config.ema_decay={config.ema_decay} and config.average_last_checkpoints="
            f"{averaged} both smooth the final parameters; set one of them to 0."
        )
    _check_numbers(config)
    if config.learning_rate <= 0:
        raise ConfigError(
            f"config.learning_rate is {config.learning_rate} but must be positive; "
            "set --config.learning_rate to a value such as 0.001."
        )
    for key in ("batch_size", "eval_batch_size"):
        if key in config and config[key] % device_count:
            raise ConfigError(
                f"config.{key}={config[key]} is not divisible by the {device_count} devices; "
                f"set --config.{key} to a multiple of {device_count}."
            )
    if config.optimizer not in optimizers.OPTIMIZERS:
        raise ConfigError(
            f"config.optimizer '{config.optimizer}' is unknown; "
            f"choose one of {', '.join(optimizers.OPTIMIZERS)}."
        )
    schedule = config.schedule
    if schedule not in optimizers.SCHEDULES:
        raise ConfigError(
            f"config.schedule '{schedule}' is unknown; "
            f"choose one of {', '.join(optimizers.SCHEDULES)}."
        )
    for key in ("weight_decay", "grad_clip_norm"):
        if config[key] < 0:
            raise ConfigError(f"config.{key} is {config[key]}; set it to 0 (off) or more.")
    _check_scaling(config, device_count)
    boundaries = config.decay_boundaries
    if schedule == "step" and not all(0 < fraction < 1 for fraction in boundaries):
        raise ConfigError(
            "config.decay_boundaries must be fractions of num_train_steps between 0 and 1; "
            "set them like --config.decay_boundaries='(0.5, 0.75)'."
        )
    _check_pattern_syntax(config)


def _patterns(config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """{key: its regular expressions} of the keys that select parameters by path."""
    return {
        "frozen": tuple(config.frozen),
        "init.reinitialize": tuple(config.init.reinitialize),
        "learning_rate_multipliers": tuple(
            pair[0] if isinstance(pair, list | tuple) and pair else pair
            for pair in config.learning_rate_multipliers
        ),
    }


def _check_pattern_syntax(config: ml_collections.ConfigDict) -> None:
    for key, value in (("frozen", config.frozen), ("init.reinitialize", config.init.reinitialize)):
        if isinstance(value, str):
            raise ConfigError(
                f"config.{key} is the string {value!r}; make it a tuple of regular "
                f"expressions, like --config.{key}='(\"{value}\",)'."
            )
    for pair in config.learning_rate_multipliers:
        valid = isinstance(pair, list | tuple) and len(pair) == 2 and isinstance(pair[0], str)
        factor = pair[1] if valid else None
        if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 0):
            raise ConfigError(
                f"config.learning_rate_multipliers holds {pair!r}; give (regular expression, "
                "positive factor) pairs like --config.learning_rate_multipliers="
                "'((\"Dense_1/.*\", 10.0),)' (use config.frozen for a factor of 0)."
            )
    for key, patterns in _patterns(config).items():
        for pattern in patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as error:
                raise ConfigError(
                    f"config.{key} holds {pattern!r}, which is not a regular expression "
                    f"({error}); fix it, for example 'Dense_1/.*'."
                ) from None


def check_parameter_patterns(config: ml_collections.ConfigDict, params, model_state) -> None:
    """Refuses a pattern that matches no parameter and a parameter two settings claim.

    Patterns match whole paths within a collection: "Dense_1/kernel" for a parameter,
    "BatchNorm_0/mean" for the `batch_stats` entry of that layer (`init.reinitialize` only).
    """
    names = parameters.paths(params)
    state_names = [path.split("/", 1)[-1] for path in parameters.paths(model_state)]
    patterns = _patterns(config)
    for key, selected in patterns.items():
        candidates = names + state_names if key == "init.reinitialize" else names
        for pattern in selected:
            if not any(re.fullmatch(pattern, name) for name in candidates):
                shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
                raise ConfigError(
                    f"config.{key} holds {pattern!r}, which matches no parameter of this model "
                    f"(its parameters are {shown}); fix or remove the pattern."
                )
    if patterns["frozen"] and all(
        parameters.first_match(patterns["frozen"], name) is not None for name in names
    ):
        raise ConfigError(
            f"config.frozen {patterns['frozen']!r} freezes every parameter of this model, so "
            "nothing would train; leave at least one parameter out (for example the head)."
        )
    for name in names:
        frozen = parameters.first_match(patterns["frozen"], name)
        claims = [f"config.frozen {frozen!r}"] if frozen is not None else []
        claims += [
            f"config.learning_rate_multipliers {pattern!r}"
            for pattern in patterns["learning_rate_multipliers"]
            if re.fullmatch(pattern, name)
        ]
        if len(claims) > 1:
            raise ConfigError(
                f"Parameter {name} is matched by both {claims[0]} and {claims[1]}; change the "
                "patterns so that each parameter is frozen or given one factor."
            )


def _check_batch_groups(config: ml_collections.ConfigDict, device_count: int) -> None:
    """Blocks of whole rows, whole blocks on every device, one copy of the parameters each."""
    groups = config.batch_groups
    if not groups:
        return
    if config.batch_size % groups or groups % device_count:
        raise ConfigError(
            f"config.batch_groups={groups} must divide config.batch_size={config.batch_size} "
            f"and be a multiple of the {device_count} devices; set --config.batch_groups to "
            "such a number (for example the largest device count you will run on), or 0."
        )
    if config.grad_accum_steps > 1 or config.mesh.get("fsdp", 1) != 1:
        raise ConfigError(
            "config.batch_groups computes gradients block by block with the parameters on "
            "every device; set --config.grad_accum_steps=1 and --config.mesh.fsdp=1 with it."
        )


def _check_scaling(config: ml_collections.ConfigDict, device_count: int) -> None:
    """Mixed precision, gradient accumulation, steps per dispatch and XLA flags."""
    for key in ("dtype", "param_dtype"):
        if config[key] not in DTYPE_NAMES:
            raise ConfigError(
                f"config.{key} '{config[key]}' is unknown; choose one of {', '.join(DTYPE_NAMES)}."
            )
    micro_batches = config.grad_accum_steps
    if config.batch_size % (device_count * micro_batches):
        raise ConfigError(
            f"config.batch_size={config.batch_size} does not split into "
            f"config.grad_accum_steps={micro_batches} micro-batches on each of the "
            f"{device_count} devices; set --config.batch_size to a multiple of "
            f"{device_count * micro_batches}."
        )
    _check_batch_groups(config, device_count)
    per_dispatch = config.steps_per_dispatch
    for key in ("num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        if config[key] % per_dispatch:
            raise ConfigError(
                f"config.{key}={config[key]} is not a multiple of "
                f"config.steps_per_dispatch={per_dispatch}; set --config.{key} to a multiple "
                "of it or lower --config.steps_per_dispatch."
            )
    order = config.train_order
    if order not in data.TRAIN_ORDERS:
        raise ConfigError(
            f"config.train_order '{order}' is unknown; choose one of "
            f"{', '.join(data.TRAIN_ORDERS)}."
        )
    flags = config.xla_flags
    if not isinstance(flags, str) or any(not f.startswith("--") for f in flags.split()):
        raise ConfigError(
            f"config.xla_flags={flags!r} must be XLA flags separated by spaces, each starting "
            "with '--'; set it like --config.xla_flags='--xla_cpu_use_thunk_runtime=true'."
        )


def base_config() -> ml_collections.ConfigDict:
    """The keys every experiment has, with defaults that experiment configs override."""
    config = ml_collections.ConfigDict()
    config.task = ""
    config.seed = 0
    config.batch_size = 128
    config.eval_batch_size = 1024
    config.learning_rate = 1e-3
    config.optimizer = "adam"
    config.adam_beta2 = 0.999  # adam and adamw
    config.schedule = "constant"
    config.warmup_steps = 0
    config.decay_boundaries = (0.5, 0.75)  # for schedule "step", fractions of num_train_steps
    config.decay_factor = 0.1
    config.momentum = 0.9
    config.weight_decay = 0.0
    config.grad_clip_norm = 0.0
    config.skip_nonfinite_steps = False
    config.num_train_steps = 1000
    config.eval_every_steps = 500
    config.log_every_steps = 100
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 3
    config.average_last_checkpoints = 0  # > 1: also evaluate the mean of the last N checkpoints
    # > 0: evaluate, predict and export with exponential moving averages of the parameters and
    # model state (batch statistics), each step moving them (1 - ema_decay) of the way.
    config.ema_decay = 0.0
    config.data_dir = "~/tensorflow_datasets"
    # Sequence tasks: batches padded to the nearest of these lengths; () pads to the maximum.
    config.bucket_boundaries = ()
    # Image tasks (research/core/augmentation.py): random crops after zero padding, flips,
    # random erasing.
    config.augmentation = ml_collections.ConfigDict(
        {"crop_padding": 0, "horizontal_flip": False, "erase_probability": 0.0}
    )
    # Regular expressions over parameter paths such as "Dense_1/kernel" (docs/finetuning.md).
    config.frozen = ()  # these parameters receive no updates and keep no optimizer state
    config.learning_rate_multipliers = ()  # ((pattern, factor), ...): factor x learning rate
    config.init = ml_collections.ConfigDict()
    config.init.reinitialize = ()  # with --init_from: initialized fresh, not restored
    # "memory": splits as numpy arrays; "grain": training batches read from ArrayRecord files
    # by `input_workers` Grain processes; "auto": grain only for a split too large to load;
    # "device": the training split copied to every device, batches gathered inside the step.
    config.input_pipeline = "auto"
    config.input_workers = 2
    # How each epoch orders the examples: "numpy" (a PCG64 permutation) or "hash" (a keyed
    # bijection of positions, which with input_pipeline "device" each device computes for its
    # own rows, so no indices cross from the host). Every input path gives the same batches.
    config.train_order = "numpy"
    # Scaling up (docs/scaling.md): compute and parameter dtypes (float32 master weights,
    # loss and optimizer state whatever they are), micro-batches per step, training steps per
    # compiled call, and flags appended to XLA_FLAGS before the backend starts.
    config.dtype = "float32"
    config.param_dtype = "float32"
    config.grad_accum_steps = 1
    config.grad_accum_unroll = False  # unrolled instead of lax.scan: faster convolutions on CPU
    # > 0: the gradient is computed over this many blocks of consecutive rows and added in a
    # fixed order, so that any device count dividing it gives the same bits (docs/scaling.md).
    config.batch_groups = 0
    config.steps_per_dispatch = 1
    config.steps_per_dispatch_unroll = True  # False: lax.scan, one compilation of the step
    config.xla_flags = ""
    # The device mesh (docs/scaling.md): a batch's rows are split over data x fsdp
    # devices; with fsdp > 1 the train state's large arrays are split over fsdp devices too
    # (fully sharded data parallelism). -1 takes the devices the other axis leaves.
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    return config


def with_defaults(config: ml_collections.ConfigDict | dict) -> ml_collections.ConfigDict:
    """`config` merged onto `base_config()`: every key the library reads is present, with its
    default where `config` (for example a config.json recorded before the key existed) lacks
    it. Keys `config` adds (a task's own) are kept; nested blocks are merged key by key."""
    merged = base_config().to_dict()

    def merge(into: dict, values: dict) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
    merge(merged, values)
    return ml_collections.ConfigDict(merged)
