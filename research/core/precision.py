"""Mixed precision: compute and parameter dtypes from a config, and dynamic loss scaling.

Master parameters, the loss and the optimizer state stay float32; the model computes in
`config.dtype` on parameters cast to `config.param_dtype`.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Dynamic loss scaling (float16 only): start high, halve at every non-finite gradient (that
# step is skipped), double after this many finite steps in a row.
INITIAL_LOSS_SCALE = 2.0**15
LOSS_SCALE_GROWTH_INTERVAL = 2000

LossScale = dict[str, jax.Array]  # {"scale": float32 [], "finite_steps": int32 []}, or {}


def model_dtypes(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The `dtype` and `param_dtype` fields every model takes, from the config's names."""
    return {
        "dtype": DTYPES[config.dtype],
        "param_dtype": DTYPES[config.param_dtype],
    }


def uses_loss_scaling(config: ml_collections.ConfigDict) -> bool:
    """float16 needs it: small gradients underflow its 5-bit exponent."""
    return config.dtype == "float16"


def record(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What run.json says about the run's numerics and the XLA flags its config asked for."""
    return {
        "precision": {
            "dtype": config.dtype,
            "param_dtype": config.param_dtype,
            "master_weights_loss_and_optimizer_state": "float32",
            "loss_scaling": "dynamic" if uses_loss_scaling(config) else "none",
        },
        "config_xla_flags": config.xla_flags,
    }


def cast_floating(tree: Any, dtype) -> Any:
    """Every floating-point leaf of `tree` as `dtype`; other leaves (integers) unchanged."""

    def cast(leaf):
        if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != dtype:
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


def cast_like(tree: Any, reference: Any) -> Any:
    """`tree` with each leaf cast to the dtype of the matching leaf of `reference`."""
    return jax.tree.map(lambda leaf, like: leaf.astype(like.dtype), tree, reference)


def initial_loss_scale() -> LossScale:
    return {
        "scale": jnp.asarray(INITIAL_LOSS_SCALE, jnp.float32),
        "finite_steps": jnp.zeros((), jnp.int32),
    }


def next_loss_scale(loss_scale: LossScale, grads_finite: jax.Array) -> LossScale:
    """Halves the scale (not below 1) after non-finite gradients; doubles it after
    `LOSS_SCALE_GROWTH_INTERVAL` finite steps in a row."""
    finite_steps = jnp.where(grads_finite, loss_scale["finite_steps"] + 1, 0)
    grow = finite_steps >= LOSS_SCALE_GROWTH_INTERVAL
    scale = loss_scale["scale"]
    scale = jnp.where(grads_finite, jnp.where(grow, scale * 2, scale), jnp.maximum(scale / 2, 1))
    return {"scale": scale, "finite_steps": jnp.where(grow, 0, finite_steps)}
