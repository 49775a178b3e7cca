"""Token conventions and model-agnostic greedy and beam-search decoding with fixed shapes.

A model plugs in through a step function `(state, last_tokens [n]) -> (logits [n, vocab], state)`
whose state is a pytree of arrays with leading dimension n; `decode` builds it for a model.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.core.text import BOS_ID, EOS_ID, PAD_ID

State = Any  # a pytree whose leaves have leading dimension batch (times beam in beam search)
StepFn = Callable[[State, jax.Array], tuple[jax.Array, State]]


def shift_right(targets: jax.Array) -> jax.Array:
    """Teacher-forcing decoder inputs: `targets [batch, length]` shifted right behind BOS."""
    return jnp.pad(targets, ((0, 0), (1, 0)), constant_values=BOS_ID)[:, :-1]


def length_penalty_factor(lengths: jax.Array, alpha: float) -> jax.Array:
    """GNMT's ((5 + length) / 6)^alpha; a hypothesis is ranked by log-probability / this."""
    return ((5.0 + lengths) / 6.0) ** alpha


def greedy_decode(
    step_fn: StepFn,
    initial_state: State,
    batch_size: int,
    max_length: int,
    *,
    eos_id: int = EOS_ID,
) -> tuple[jax.Array, jax.Array]:
    """Picks the most likely token at every step until EOS or `max_length`.

    Returns `tokens [batch, max_length]` (EOS included, PAD after) and the log-probability of
    each sequence `[batch]`. Stops early once every sequence has emitted EOS.
    """

    def keep_going(carry):
        step, _, _, finished, _, _ = carry
        return (step < max_length) & ~jnp.all(finished)

    def decode_one_token(carry):
        step, tokens, log_probs, finished, last_tokens, state = carry
        logits, state = step_fn(state, last_tokens)
        token_log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        next_tokens = jnp.argmax(token_log_probs, axis=-1).astype(jnp.int32)
        next_tokens = jnp.where(finished, PAD_ID, next_tokens)
        chosen_log_probs = jnp.take_along_axis(token_log_probs, next_tokens[:, None], axis=-1)
        log_probs = log_probs + jnp.where(finished, 0.0, chosen_log_probs[:, 0])
        tokens = tokens.at[:, step].set(next_tokens)
        finished = finished | (next_tokens == eos_id)
        return step + 1, tokens, log_probs, finished, next_tokens, state

    carry = (
        jnp.zeros((), jnp.int32),
        jnp.full((batch_size, max_length), PAD_ID, jnp.int32),
        jnp.zeros((batch_size,), jnp.float32),
        jnp.zeros((batch_size,), bool),
        jnp.full((batch_size,), BOS_ID, jnp.int32),
        initial_state,
    )
    _, tokens, log_probs, _, _, _ = jax.lax.while_loop(keep_going, decode_one_token, carry)
    return tokens, log_probs


def beam_search(
    step_fn: StepFn,
    initial_state: State,
    batch_size: int,
    max_length: int,
    *,
    beam_size: int,
    length_penalty: float = 0.6,
    eos_id: int = EOS_ID,
) -> tuple[jax.Array, jax.Array]:
    """Keeps the `beam_size` best hypotheses per example, finished ones included.

    A hypothesis is ranked by its log-probability divided by `length_penalty_factor` of its
    length (tokens up to and including EOS; a hypothesis cut off at `max_length` counts as
    `max_length` long). A finished hypothesis keeps its beam slot and score and is extended only
    by PAD, so it competes with the alive ones until something ranks above it; with
    `beam_size=1` this is exactly greedy decoding. The state is repeated to `batch * beam` rows.

    Returns the best `tokens [batch, max_length]` (EOS included, PAD after) and its
    log-probability `[batch]` (without the length penalty).
    """
    state = jax.tree.map(lambda leaf: jnp.repeat(leaf, beam_size, axis=0), initial_state)
    # All beams start identical, so only the first may expand; the others start dead (-inf).
    first_beam_only = jnp.where(jnp.arange(beam_size) == 0, 0.0, -jnp.inf)

    def keep_going(carry):
        step, _, log_probs, _, finished, _, _ = carry
        dead = log_probs == -jnp.inf
        return (step < max_length) & ~jnp.all(finished | dead)

    def decode_one_token(carry):
        step, tokens, log_probs, lengths, finished, last_tokens, state = carry
        logits, state = step_fn(state, last_tokens.reshape(-1))
        vocab_size = logits.shape[-1]
        token_log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        token_log_probs = token_log_probs.reshape(batch_size, beam_size, vocab_size)
        only_pad = jnp.where(jnp.arange(vocab_size) == PAD_ID, 0.0, -jnp.inf)
        token_log_probs = jnp.where(finished[..., None], only_pad, token_log_probs)
        candidate_log_probs = log_probs[..., None] + token_log_probs  # [batch, beam, vocab]
        candidate_lengths = jnp.where(finished, lengths, step + 1)[..., None]
        ranking = candidate_log_probs / length_penalty_factor(candidate_lengths, length_penalty)

        flat_ranking = ranking.reshape(batch_size, beam_size * vocab_size)
        _, best = jax.lax.top_k(flat_ranking, beam_size)  # [batch, beam], best first
        parent_beams, next_tokens = best // vocab_size, (best % vocab_size).astype(jnp.int32)

        batch_rows = jnp.arange(batch_size)[:, None]
        log_probs = candidate_log_probs.reshape(batch_size, -1)[batch_rows, best]
        parent_finished = finished[batch_rows, parent_beams]
        lengths = jnp.where(parent_finished, lengths[batch_rows, parent_beams], step + 1)
        finished = parent_finished | (next_tokens == eos_id)
        tokens = tokens[batch_rows, parent_beams]
        tokens = tokens.at[:, :, step].set(next_tokens)
        parent_rows = (batch_rows * beam_size + parent_beams).reshape(-1)
        state = jax.tree.map(lambda leaf: leaf[parent_rows], state)
        return step + 1, tokens, log_probs, lengths, finished, next_tokens, state

    carry = (
        jnp.zeros((), jnp.int32),
        jnp.full((batch_size, beam_size, max_length), PAD_ID, jnp.int32),
        jnp.broadcast_to(first_beam_only, (batch_size, beam_size)),
        jnp.zeros((batch_size, beam_size), jnp.int32),
        jnp.zeros((batch_size, beam_size), bool),
        jnp.full((batch_size, beam_size), BOS_ID, jnp.int32),
        state,
    )
    _, tokens, log_probs, _, _, _, _ = jax.lax.while_loop(keep_going, decode_one_token, carry)
    # top_k sorts every step's survivors, so the first beam ranks best.
    return tokens[:, 0], log_probs[:, 0]


def decode(
    model: nn.Module,
    variables: dict,
    inputs: jax.Array,
    *,
    max_length: int,
    beam_size: int = 1,
    length_penalty: float = 0.6,
) -> tuple[jax.Array, jax.Array]:
    """Translates `inputs [batch, input_length]` with a model of `experiments.seq2seq.models`.

    Greedy when `beam_size == 1`, else beam search. The model needs `encode`,
    `initialize_cache` and `decode_step`. Jit it with `model`, `max_length` and `beam_size`
    static. Returns `tokens [batch, max_length]` and their log-probabilities `[batch]`.
    """
    encoded = model.apply(variables, inputs, method=model.encode)
    cache = model.apply(variables, encoded, inputs, max_length, method=model.initialize_cache)
    # Encoder outputs ride in the state so beam search expands them along with the cache.
    state = {"encoded": encoded, "inputs": inputs, "cache": cache}

    def step_fn(state, last_tokens):
        logits, cache = model.apply(
            variables,
            state["encoded"],
            state["inputs"],
            last_tokens,
            state["cache"],
            method=model.decode_step,
        )
        return logits, {**state, "cache": cache}

    batch_size = inputs.shape[0]
    if beam_size == 1:
        return greedy_decode(step_fn, state, batch_size, max_length)
    return beam_search(
        step_fn,
        state,
        batch_size,
        max_length,
        beam_size=beam_size,
        length_penalty=length_penalty,
    )
