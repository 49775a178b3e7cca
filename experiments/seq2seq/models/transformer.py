"""Transformer encoder-decoder (Vaswani et al. 2017) with a fixed-size key/value decoding cache."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.seq2seq.decoding import shift_right
from research.core.text import PAD_ID

# {"index": [batch], "layers": per decoder layer {"keys", "values"}: [batch, length, heads,
# head_width]}; every leaf leads with the batch, so beam search can expand and reorder it.
Cache = dict[str, Any]


def sinusoidal_position_embeddings(positions: jax.Array, width: int) -> jax.Array:
    """Sines and cosines of geometric frequencies: `[batch, length]` -> `[batch, length, width]`."""
    half_width = width // 2
    frequencies = jnp.exp(-jnp.log(10_000.0) * jnp.arange(half_width) / half_width)
    angles = positions[..., None].astype(jnp.float32) * frequencies
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class PositionEmbedding(nn.Module):
    """Position vectors `[batch, length, width]` for integer `positions [batch, length]`."""

    kind: str  # "sinusoidal" or "learned"
    max_length: int
    width: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, positions: jax.Array) -> jax.Array:
        if self.kind == "sinusoidal":
            return sinusoidal_position_embeddings(positions, self.width).astype(self.dtype)
        if positions.shape[-1] > self.max_length:
            raise ValueError(
                f"A sequence of {positions.shape[-1]} tokens exceeds the {self.max_length} "
                "learned positions; raise the model's max_length or shorten the data."
            )
        table = self.param(
            "embedding",
            nn.initializers.normal(stddev=0.02),
            (self.max_length, self.width),
            self.param_dtype,
        )
        return table[positions].astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention of `queries [batch, q, width]` over `memory [batch, m, width]`.

    With a layer `cache`, the keys and values of this call's single position are written at
    `cache_index [batch]` and the queries attend over the whole cache (the mask hides the
    positions not yet written); returns `(output [batch, q, width], new cache or None)`.
    """

    num_heads: int
    width: int
    attention_dropout_rate: float
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        queries: jax.Array,
        memory: jax.Array,
        mask: jax.Array,
        *,
        train: bool,
        cache: dict[str, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        head_width = self.width // self.num_heads
        dense = lambda features, name, **kwargs: nn.DenseGeneral(
            features, dtype=self.dtype, param_dtype=self.param_dtype, name=name, **kwargs
        )
        query = dense((self.num_heads, head_width), "query")(queries)
        key = dense((self.num_heads, head_width), "key")(memory)
        value = dense((self.num_heads, head_width), "value")(memory)
        if cache is not None:
            cache_length = cache["keys"].shape[1]
            at_index = jnp.arange(cache_length)[None, :] == cache_index[:, None]
            at_index = at_index[:, :, None, None]
            key = jnp.where(at_index, key, cache["keys"])
            value = jnp.where(at_index, value, cache["values"])
            cache = {"keys": key, "values": value}
        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key) / jnp.sqrt(head_width)
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        # The softmax in float32: its sum loses too much in bfloat16 or float16.
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.attention_dropout_rate)(weights, deterministic=not train)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        return dense(self.width, "output", axis=(-2, -1))(attended), cache


class MLP(nn.Module):
    """The position-wise feed-forward block: `[batch, length, width]` -> same shape."""

    width: int
    mlp_width: int
    dropout_rate: float
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden: jax.Array, *, train: bool) -> jax.Array:
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        hidden = nn.relu(nn.Dense(self.mlp_width, **dtypes)(hidden))
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=not train)
        return nn.Dense(self.width, **dtypes)(hidden)


def _before_sublayer(hidden, norm, pre_layer_norm):
    return norm(hidden) if pre_layer_norm else hidden


def _after_residual(hidden, norm, pre_layer_norm):
    return hidden if pre_layer_norm else norm(hidden)


class EncoderLayer(nn.Module):
    """Self-attention and MLP, each residual, normalized before (pre-LN) or after (post-LN)."""

    width: int
    num_heads: int
    mlp_width: int
    dropout_rate: float
    attention_dropout_rate: float
    pre_layer_norm: bool
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
        """`hidden [batch, length, width]`, `mask [batch, 1, 1, length]` -> same as hidden."""
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        norm = nn.LayerNorm(name="attention_norm", **dtypes)
        normed = _before_sublayer(hidden, norm, self.pre_layer_norm)
        update, _ = MultiHeadAttention(
            self.num_heads, self.width, self.attention_dropout_rate, name="attention", **dtypes
        )(normed, normed, mask, train=train)
        hidden = _after_residual(hidden + dropout(update), norm, self.pre_layer_norm)
        norm = nn.LayerNorm(name="mlp_norm", **dtypes)
        normed = _before_sublayer(hidden, norm, self.pre_layer_norm)
        mlp = MLP(self.width, self.mlp_width, self.dropout_rate, name="mlp", **dtypes)
        update = mlp(normed, train=train)
        return _after_residual(hidden + dropout(update), norm, self.pre_layer_norm)


class DecoderLayer(nn.Module):
    """Causal self-attention (optionally cached), cross-attention to the encoder, and MLP."""

    width: int
    num_heads: int
    mlp_width: int
    dropout_rate: float
    attention_dropout_rate: float
    pre_layer_norm: bool
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        hidden: jax.Array,
        encoded: jax.Array,
        self_attention_mask: jax.Array,
        cross_attention_mask: jax.Array,
        *,
        train: bool,
        cache: dict[str, jax.Array] | None = None,
        cache_index: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        """`hidden [batch, length, width]`, `encoded [batch, input_length, width]`, masks
        `[batch, 1, length, keys]` -> (hidden, new layer cache or None)."""
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        attention = lambda name: MultiHeadAttention(
            self.num_heads, self.width, self.attention_dropout_rate, name=name, **dtypes
        )
        norm = nn.LayerNorm(name="self_attention_norm", **dtypes)
        normed = _before_sublayer(hidden, norm, self.pre_layer_norm)
        update, cache = attention("self_attention")(
            normed, normed, self_attention_mask, train=train, cache=cache, cache_index=cache_index
        )
        hidden = _after_residual(hidden + dropout(update), norm, self.pre_layer_norm)
        norm = nn.LayerNorm(name="cross_attention_norm", **dtypes)
        normed = _before_sublayer(hidden, norm, self.pre_layer_norm)
        update, _ = attention("cross_attention")(normed, encoded, cross_attention_mask, train=train)
        hidden = _after_residual(hidden + dropout(update), norm, self.pre_layer_norm)
        norm = nn.LayerNorm(name="mlp_norm", **dtypes)
        normed = _before_sublayer(hidden, norm, self.pre_layer_norm)
        mlp = MLP(self.width, self.mlp_width, self.dropout_rate, name="mlp", **dtypes)
        update = mlp(normed, train=train)
        return _after_residual(hidden + dropout(update), norm, self.pre_layer_norm), cache


def _padding_mask(inputs: jax.Array) -> jax.Array:
    """Which keys may be attended: `inputs [batch, length]` -> `[batch, 1, 1, length]`."""
    return (inputs != PAD_ID)[:, None, None, :]


class Transformer(nn.Module):
    """Encoder-decoder Transformer; `__call__` is teacher-forced, `decode_step` is cached.

    With `share_embeddings`, one table embeds source and target tokens and projects to logits.
    """

    input_vocab_size: int
    target_vocab_size: int
    num_layers: int = 3
    width: int = 256
    num_heads: int = 4
    mlp_width: int = 1024
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    pre_layer_norm: bool = True
    share_embeddings: bool = False
    positions: str = "sinusoidal"  # or "learned"
    max_length: int = 256
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    def setup(self):
        if self.share_embeddings and self.input_vocab_size != self.target_vocab_size:
            raise ValueError(
                "share_embeddings needs equal vocabularies, got input_vocab_size="
                f"{self.input_vocab_size} and target_vocab_size={self.target_vocab_size}."
            )
        if self.positions not in ("sinusoidal", "learned"):
            raise ValueError(
                f"positions must be 'sinusoidal' or 'learned', got {self.positions!r}."
            )
        if self.width % self.num_heads or self.width % 2:
            raise ValueError(f"width {self.width} must be even and divisible by num_heads.")
        # Scaled up by sqrt(width) when embedding, so entries are O(1) there and logits are O(1)
        # when the table doubles as the output projection.
        embedding_init = nn.initializers.normal(stddev=self.width**-0.5)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.target_embedding = nn.Embed(
            self.target_vocab_size, self.width, embedding_init=embedding_init, **dtypes
        )
        if self.share_embeddings:
            self.input_embedding = self.target_embedding
        else:
            self.input_embedding = nn.Embed(
                self.input_vocab_size, self.width, embedding_init=embedding_init, **dtypes
            )
            self.output_projection = nn.Dense(self.target_vocab_size, **dtypes)
        positions = lambda: PositionEmbedding(self.positions, self.max_length, self.width, **dtypes)
        self.input_positions = positions()
        self.target_positions = positions()
        layer_fields = dict(
            **dtypes,
            width=self.width,
            num_heads=self.num_heads,
            mlp_width=self.mlp_width,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            pre_layer_norm=self.pre_layer_norm,
        )
        self.encoder_layers = [EncoderLayer(**layer_fields) for _ in range(self.num_layers)]
        self.decoder_layers = [DecoderLayer(**layer_fields) for _ in range(self.num_layers)]
        # Pre-LN leaves the residual stream unnormalized, so each stack ends with a LayerNorm.
        if self.pre_layer_norm:
            self.encoder_norm = nn.LayerNorm(**dtypes)
            self.decoder_norm = nn.LayerNorm(**dtypes)
        self.embedding_dropout = nn.Dropout(self.dropout_rate)

    def _embed(self, embedding, position_embedding, tokens, positions, train):
        hidden = embedding(tokens) * jnp.sqrt(self.width) + position_embedding(positions)
        return self.embedding_dropout(hidden, deterministic=not train)

    def encode(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        """`inputs [batch, input_length]` -> `encoded [batch, input_length, width]`."""
        positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
        hidden = self._embed(self.input_embedding, self.input_positions, inputs, positions, train)
        mask = _padding_mask(inputs)
        for layer in self.encoder_layers:
            hidden = layer(hidden, mask, train=train)
        return self.encoder_norm(hidden) if self.pre_layer_norm else hidden

    def _decode(self, encoded, inputs, tokens, positions, self_attention_mask, train, cache=None):
        """Decoder stack on `tokens [batch, length]` -> (logits, new per-layer caches)."""
        hidden = self._embed(self.target_embedding, self.target_positions, tokens, positions, train)
        cross_attention_mask = _padding_mask(inputs)
        index = None if cache is None else cache["index"]
        new_layer_caches = []
        for layer_number, layer in enumerate(self.decoder_layers):
            layer_cache = None if cache is None else cache["layers"][layer_number]
            hidden, layer_cache = layer(
                hidden,
                encoded,
                self_attention_mask,
                cross_attention_mask,
                train=train,
                cache=layer_cache,
                cache_index=index,
            )
            new_layer_caches.append(layer_cache)
        if self.pre_layer_norm:
            hidden = self.decoder_norm(hidden)
        if self.share_embeddings:
            return self.target_embedding.attend(hidden), tuple(new_layer_caches)
        return self.output_projection(hidden), tuple(new_layer_caches)

    def __call__(self, inputs: jax.Array, targets: jax.Array, *, train: bool) -> jax.Array:
        """Teacher forcing: `inputs [batch, input_length]`, `targets [batch, target_length]`
        -> logits `[batch, target_length, target_vocab_size]` predicting each target token."""
        encoded = self.encode(inputs, train=train)
        positions = jnp.broadcast_to(jnp.arange(targets.shape[1]), targets.shape)
        causal_mask = positions[:, None, :, None] >= positions[:, None, None, :]
        logits, _ = self._decode(
            encoded, inputs, shift_right(targets), positions, causal_mask, train
        )
        return logits

    def initialize_cache(self, encoded: jax.Array, inputs: jax.Array, max_length: int) -> Cache:
        """An empty cache for decoding up to `max_length` tokens for `encoded.shape[0]` examples.

        Every leaf has the batch as leading dimension: `index [batch]` (the next position) and
        per layer `keys`, `values` `[batch, max_length, num_heads, width // num_heads]`.
        """
        if self.positions == "learned" and max_length > self.max_length:
            raise ValueError(
                f"Cannot decode {max_length} tokens with {self.max_length} learned positions; "
                "lower the decode length or raise the model's max_length."
            )
        batch_size = encoded.shape[0]
        shape = (batch_size, max_length, self.num_heads, self.width // self.num_heads)
        layer = lambda: {
            "keys": jnp.zeros(shape, encoded.dtype),
            "values": jnp.zeros(shape, encoded.dtype),
        }
        return {
            "index": jnp.zeros((batch_size,), jnp.int32),
            "layers": tuple(layer() for _ in range(self.num_layers)),
        }

    def decode_step(
        self, encoded: jax.Array, inputs: jax.Array, last_tokens: jax.Array, cache: Cache
    ) -> tuple[jax.Array, Cache]:
        """One decoding step: `encoded [batch, input_length, width]`, `inputs [batch,
        input_length]`, `last_tokens [batch]` -> (logits `[batch, target_vocab_size]`, cache)."""
        index = cache["index"]
        cache_length = cache["layers"][0]["keys"].shape[1]
        written = jnp.arange(cache_length)[None, :] <= index[:, None]
        self_attention_mask = written[:, None, None, :]
        logits, layer_caches = self._decode(
            encoded, inputs, last_tokens[:, None], index[:, None], self_attention_mask, False, cache
        )
        return logits[:, 0], {"index": index + 1, "layers": layer_caches}
