"""Text generation with a cache: greedy, temperature, top-k and top-p (nucleus) sampling.

The prompt runs through the model once (`decode=True` fills the cache); each new token then
costs one position. The samples are a pure function of the parameters, prompt and key.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.seq2seq.tokens import BOS_ID, PAD_ID


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_k 0 and top_p 1.0 keep every token."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


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


def sample_logits(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """One token per row of `logits [batch, vocab]`: `[batch]` ids, never PAD or BOS."""
    logits = logits.astype(jnp.float32).at[:, jnp.array([PAD_ID, BOS_ID])].set(-jnp.inf)
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth_largest = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        # Keep the most probable tokens up to the first whose cumulative probability
        # reaches top_p (the token that crosses it included).
        descending = jnp.sort(logits, axis=-1)[:, ::-1]
        probabilities = jax.nn.softmax(descending, axis=-1)
        before = jnp.cumsum(probabilities, axis=-1) - probabilities
        kept = jnp.sum(before < sampling.top_p, axis=-1, keepdims=True)
        threshold = jnp.take_along_axis(descending, kept - 1, axis=-1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1)


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
