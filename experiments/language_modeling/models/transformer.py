"""A decoder-only (GPT-style) Transformer language model with a Flax `decode=True` cache.

Pre-LN blocks of causal self-attention and an MLP, learned or rotary positions, and the output
layer tied to the token embedding. With `decode=True` the keys and values of earlier calls
are kept in the "cache" collection, so each new token costs one position, not the prefix.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = jnp.dtype


def rotate(x: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotary position embedding (Su et al. 2021): `x [batch, length, heads, head_width]`
    rotated by angles of `positions [length]`, halves of the head width paired."""
    half = x.shape[-1] // 2
    frequencies = 10_000.0 ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[:, None].astype(jnp.float32) * frequencies  # [length, half]
    sin, cos = jnp.sin(angles)[None, :, None, :], jnp.cos(angles)[None, :, None, :]
    first, second = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head attention of each position over itself and earlier ones."""

    num_heads: int
    width: int
    attention_dropout_rate: float
    rotary: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden, positions, *, train: bool, decode: bool) -> jax.Array:
        """`hidden [batch, length, width]` at `positions [length]` -> same shape as hidden."""
        head_width = self.width // self.num_heads
        dense = lambda name: nn.DenseGeneral(
            (self.num_heads, head_width), dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        query, key, value = dense("query")(hidden), dense("key")(hidden), dense("value")(hidden)
        if self.rotary:
            query, key = rotate(query, positions), rotate(key, positions)
        if decode:
            # The first call (model.init) only sizes the cache; later calls write into it.
            initialized = self.has_variable("cache", "keys")
            keys = self.variable("cache", "keys", jnp.zeros, key.shape, key.dtype)
            values = self.variable("cache", "values", jnp.zeros, value.shape, value.dtype)
            if initialized:
                start = (0, positions[0], 0, 0)
                keys.value = lax.dynamic_update_slice(keys.value, key, start)
                values.value = lax.dynamic_update_slice(values.value, value, start)
                key, value = keys.value, values.value
        mask = jnp.arange(key.shape[1])[None, :] <= positions[:, None]  # [queries, keys]
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32)
        logits = jnp.where(mask, logits / jnp.sqrt(head_width), jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.attention_dropout_rate)(weights, deterministic=not train)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        return nn.DenseGeneral(
            self.width,
            axis=(-2, -1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="output",
        )(attended)


class Block(nn.Module):
    """x + attention(LN(x)), then x + MLP(LN(x))."""

    width: int
    num_heads: int
    mlp_width: int
    dropout_rate: float
    attention_dropout_rate: float
    rotary: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden, positions, *, train: bool, decode: bool) -> jax.Array:
        types = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        update = CausalSelfAttention(
            self.num_heads, self.width, self.attention_dropout_rate, self.rotary, **types,
            name="attention",
        )(nn.LayerNorm(**types, name="attention_norm")(hidden), positions, train=train,
          decode=decode)  # fmt: skip
        hidden = hidden + dropout(update)
        update = nn.LayerNorm(**types, name="mlp_norm")(hidden)
        update = nn.gelu(nn.Dense(self.mlp_width, **types, name="mlp_in")(update))
        update = nn.Dense(self.width, **types, name="mlp_out")(dropout(update))
        return hidden + dropout(update)


class TransformerLM(nn.Module):
    """`__call__(tokens [batch, length])` -> logits `[batch, length, vocab_size]` (float32)
    predicting each next token; with `decode=True` the call continues the cached sequence."""

    vocab_size: int
    num_layers: int = 4
    width: int = 256
    num_heads: int = 4
    mlp_width: int = 1024
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    positions: str = "learned"  # or "rotary"
    max_length: int = 256  # learned positions
    tie_embeddings: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, *, train: bool, decode: bool = False) -> jax.Array:
        if self.positions not in ("learned", "rotary"):
            raise ValueError(f"positions must be 'learned' or 'rotary', not {self.positions!r}.")
        if self.width % self.num_heads or (self.width // self.num_heads) % 2:
            raise ValueError(f"width {self.width} must be num_heads times an even head width.")
        types = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        length = tokens.shape[1]
        start = jnp.zeros((), jnp.int32)
        if decode:
            initialized = self.has_variable("cache", "position")
            position = self.variable("cache", "position", jnp.zeros, (), jnp.int32)
            if initialized:
                start, position.value = position.value, position.value + length
        positions = start + jnp.arange(length)
        # GPT-2's initialization; the table is also the output layer, so no sqrt(width) scale.
        embed = nn.Embed(
            self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02), **types,
            name="token_embedding",
        )  # fmt: skip
        hidden = embed(tokens)
        if self.positions == "learned":
            table = self.param(
                "position_embedding",
                nn.initializers.normal(0.02),
                (self.max_length, self.width),
                self.param_dtype,
            )
            hidden = hidden + jnp.take(table, positions, axis=0).astype(self.dtype)
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=not train)
        for number in range(self.num_layers):
            hidden = Block(
                self.width, self.num_heads, self.mlp_width, self.dropout_rate,
                self.attention_dropout_rate, self.positions == "rotary", **types,
                name=f"block_{number}",
            )(hidden, positions, train=train, decode=decode)  # fmt: skip
        hidden = nn.LayerNorm(**types, name="final_norm")(hidden)
        if self.tie_embeddings:
            logits = embed.attend(hidden)
        else:
            logits = nn.Dense(self.vocab_size, **types, name="output")(hidden)
        return logits.astype(jnp.float32)
