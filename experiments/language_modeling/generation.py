"""Text generation with a cache: greedy, temperature, top-k and top-p (nucleus) sampling.

The prompt runs through the model once (`decode=True` fills the cache); each new token then
costs one position. The samples are a pure function of the parameters, prompt and key.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.core.text import BOS_ID, PAD_ID
from research.errors import UserError

INT32 = np.iinfo(np.int32)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_k 0 and top_p 1.0 keep every token."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


class SamplingError(UserError, ValueError):
    """A sampling setting outside its range: the message names it and the range."""


def check_sampling(temperature, top_k, top_p, seed, *, prefix: str = "") -> None:
    """Refuses a setting that sampling would ignore or break on, in one sentence without a
    final period (`prefix` is what names a setting: "--" for flags)."""
    float32_max = float(np.finfo(np.float32).max)
    if not (math.isfinite(temperature) and 0 <= temperature <= float32_max):
        raise SamplingError(
            f"{prefix}temperature must be a finite number, 0 (greedy) or more, not {temperature}"
        )
    if not 0 < top_p <= 1:  # also refuses NaN
        raise SamplingError(f"{prefix}top_p must be in (0, 1] (1 keeps every token), not {top_p}")
    if not 0 <= top_k <= INT32.max:
        raise SamplingError(
            f"{prefix}top_k must be a whole number from 0 (every token) to {INT32.max}, not {top_k}"
        )
    if not INT32.min <= seed <= INT32.max:
        raise SamplingError(f"{prefix}seed must be within {INT32.min} and {INT32.max}, not {seed}")


def initialize_cache(model: nn.Module, batch_size: int, max_length: int) -> dict:
    """An empty cache for `max_length` positions of `batch_size` sequences."""
    tokens = jnp.zeros((batch_size, max_length), jnp.int32)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), tokens, train=False, decode=True)
    )["cache"]
    return jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)


def continue_sequences(model, params, cache, tokens) -> tuple[jax.Array, dict]:
    """Feeds `tokens [batch, length]` after the cached ones: (logits `[batch, length, vocab]`,
    the cache holding them too)."""
    logits, updated = model.apply(
        {"params": params, "cache": cache}, tokens, train=False, decode=True, mutable=["cache"]
    )
    return logits, updated["cache"]


def filter_logits(logits, temperature, top_k, top_p) -> jax.Array:
    """`logits [batch, vocab]` over each row's `temperature [batch]` (> 0), with the tokens
    outside the row's `top_k [batch]` most probable (0: none cut) or its nucleus `top_p [batch]`
    (1.0: none cut) at -inf."""
    logits = logits / temperature[:, None]
    descending = jnp.sort(logits, axis=-1)[:, ::-1]
    kth_largest = jnp.take_along_axis(
        descending, jnp.clip(top_k - 1, 0, logits.shape[-1] - 1)[:, None], axis=-1
    )
    cut_by_k = (top_k > 0)[:, None]
    logits = jnp.where(cut_by_k & (logits < kth_largest), -jnp.inf, logits)
    descending = jnp.where(cut_by_k & (descending < kth_largest), -jnp.inf, descending)
    # Keep the most probable tokens up to the first whose cumulative probability reaches
    # top_p (the token that crosses it included).
    probabilities = jax.nn.softmax(descending, axis=-1)
    before = jnp.cumsum(probabilities, axis=-1) - probabilities
    kept = jnp.sum(before < top_p[:, None], axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(descending, kept - 1, axis=-1)
    threshold = jnp.where(top_p[:, None] < 1.0, threshold, -jnp.inf)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def _without_special_tokens(logits: jax.Array) -> jax.Array:
    return logits.astype(jnp.float32).at[:, jnp.array([PAD_ID, BOS_ID])].set(-jnp.inf)


def sample_logits(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """One token per row of `logits [batch, vocab]`: `[batch]` ids, never PAD or BOS."""
    logits = _without_special_tokens(logits)
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1)
    batch = logits.shape[0]
    logits = filter_logits(
        logits,
        jnp.full((batch,), sampling.temperature, jnp.float32),
        jnp.full((batch,), sampling.top_k, jnp.int32),
        jnp.full((batch,), sampling.top_p, jnp.float32),
    )
    return jax.random.categorical(rng, logits, axis=-1)


def sample_rows(logits, keys, temperature, top_k, top_p) -> jax.Array:
    """`[batch]` ids from `logits [batch, vocab]`, each row with its own PRNG key
    (`keys [batch, 2]`) and settings (`[batch]` each; temperature 0 is greedy)."""
    logits = _without_special_tokens(logits)
    greedy = temperature == 0
    filtered = filter_logits(logits, jnp.where(greedy, 1.0, temperature), top_k, top_p)
    sampled = jax.vmap(jax.random.categorical)(keys, filtered)
    return jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled)


def check_length(model: nn.Module, total_length: int) -> None:
    """Raises ValueError when a model with learned positions cannot reach `total_length`."""
    if getattr(model, "positions", None) == "learned" and total_length > model.max_length:
        raise ValueError(
            f"BOS, the prompt and the new tokens make {total_length} positions but the model "
            f"has {model.max_length} learned positions; ask for fewer new tokens or a shorter "
            "prompt."
        )


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling"))
def generate(
    model: nn.Module,
    params,
    prompts: jax.Array,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    sampling: Sampling,
) -> jax.Array:
    """Continuations `[batch, max_new_tokens]` of `prompts [batch, prompt_length]` (BOS first)."""
    batch_size, prompt_length = prompts.shape
    cache = initialize_cache(model, batch_size, prompt_length + max_new_tokens)
    logits, cache = continue_sequences(model, params, cache, prompts)

    def step(carry, step_rng):
        cache, last_logits = carry
        token = sample_logits(last_logits, step_rng, sampling)
        logits, cache = continue_sequences(model, params, cache, token[:, None])
        return (cache, logits[:, 0]), token

    rngs = jax.random.split(rng, max_new_tokens)
    _, tokens = jax.lax.scan(step, (cache, logits[:, -1]), rngs)
    return tokens.T


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def generate_rows(
    model: nn.Module,
    params,
    prompts: jax.Array,
    lengths: jax.Array,
    seeds: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    *,
    max_new_tokens: int,
) -> jax.Array:
    """Continuations `[batch, max_new_tokens]` of prompts of different lengths, each row on
    its own: `prompts [batch, prompt_length]` (BOS first, PAD after `lengths [batch]`), and per
    row a seed and sampling settings (`[batch]` each, as `sample_rows` takes them).

    One position per step for every row: a row copies its prompt while it lasts and samples
    after it, so rows of any lengths share one batch (what a server needs). Row b's token at
    position t is drawn with `fold_in(PRNGKey(seeds[b]), t)`, whatever else is in the batch.
    """
    batch_size, prompt_length = prompts.shape
    total_length = prompt_length + max_new_tokens
    keys = jax.vmap(jax.random.PRNGKey)(seeds)
    sequences = jnp.zeros((batch_size, total_length), jnp.int32).at[:, :prompt_length].set(prompts)

    def step(carry, position):
        cache, sequences = carry
        token = jax.lax.dynamic_index_in_dim(sequences, position, axis=1, keepdims=False)
        logits, cache = continue_sequences(model, params, cache, token[:, None])
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, position + 1)
        sampled = sample_rows(logits[:, 0], step_keys, temperature, top_k, top_p)
        following = jax.lax.dynamic_index_in_dim(sequences, position + 1, axis=1, keepdims=False)
        chosen = jnp.where(position + 1 < lengths, following, sampled.astype(jnp.int32))
        sequences = jax.lax.dynamic_update_index_in_dim(sequences, chosen, position + 1, axis=1)
        return (cache, sequences), None

    cache = initialize_cache(model, batch_size, total_length)
    (_, sequences), _ = jax.lax.scan(step, (cache, sequences), jnp.arange(total_length - 1))
    positions = lengths[:, None] + jnp.arange(max_new_tokens)[None, :]
    return jnp.take_along_axis(sequences, positions, axis=1)


def generate_without_cache(model, params, prompts, *, max_new_tokens: int) -> jax.Array:
    """Greedy continuations computed the slow way, the whole prefix again for every token
    (the reference the cached `generate` must equal): `[batch, max_new_tokens]`.

    The sequences live in one buffer of the final length; causal attention makes the logits
    at a position independent of the (zero) positions after it, so one compilation serves.
    """
    batch_size, prompt_length = prompts.shape

    @jax.jit
    def extend(sequences, length):
        logits = model.apply({"params": params}, sequences, train=False)
        last = jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False)
        token = sample_logits(last, None, Sampling(temperature=0.0)).astype(sequences.dtype)
        return jax.lax.dynamic_update_slice(sequences, token[:, None], (0, length))

    sequences = jnp.zeros((batch_size, prompt_length + max_new_tokens), prompts.dtype)
    sequences = sequences.at[:, :prompt_length].set(prompts)
    for length in range(prompt_length, prompt_length + max_new_tokens):
        sequences = extend(sequences, length)
    return sequences[:, prompt_length:]
