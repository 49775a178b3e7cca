"""LSTM encoder-decoder with Luong-style attention and input feeding (Luong et al. 2015)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.seq2seq.decoding import shift_right
from research.core.text import PAD_ID

# {"carries": per decoder layer (cell, hidden) each [batch, hidden_size],
#  "attentional": [batch, hidden_size]}; fixed-size, so it serves as the decoding cache.
DecoderState = dict[str, Any]


def _orthogonal_float32(key, shape, dtype=jnp.float32):
    """Orthogonal initialization computed in float32 (its QR has no bfloat16 kernel)."""
    return nn.initializers.orthogonal()(key, shape, jnp.float32).astype(dtype)


class Encoder(nn.Module):
    """Stacked (optionally bidirectional) LSTMs over `embedded [batch, length, embedding_size]`.

    Returns `[batch, length, hidden_size * directions]`. Each sequence is read only up to its
    length, so the backward direction starts at its last real token and padding changes
    nothing at real positions.
    """

    hidden_size: int
    num_layers: int
    dropout_rate: float
    bidirectional: bool
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, embedded: jax.Array, lengths: jax.Array, *, train: bool) -> jax.Array:
        hidden = embedded
        cell = lambda name: nn.OptimizedLSTMCell(
            self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
            recurrent_kernel_init=_orthogonal_float32, name=name,
        )  # fmt: skip
        for layer in range(self.num_layers):
            if layer > 0:
                hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=not train)
            forward = nn.RNN(cell(f"forward_lstm_{layer}"))
            if self.bidirectional:
                backward = nn.RNN(cell(f"backward_lstm_{layer}"))
                hidden = nn.Bidirectional(forward, backward)(hidden, seq_lengths=lengths)
            else:
                hidden = forward(hidden, seq_lengths=lengths)
        return hidden


class AttentionDecoderCell(nn.Module):
    """One decoder step: stacked LSTMs fed the token and the previous attentional vector, then
    Luong "general" attention over the encoder outputs and a tanh layer."""

    hidden_size: int
    num_layers: int
    dropout_rate: float
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        state: DecoderState,
        embedded_token: jax.Array,
        encoded: jax.Array,
        source_mask: jax.Array,
        train: bool,
    ) -> tuple[DecoderState, jax.Array]:
        """`embedded_token [batch, embedding_size]`, `encoded [batch, input_length, features]`,
        `source_mask [batch, input_length]` -> (state, attentional vector `[batch, hidden_size]`).
        """
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        recurrent_init = {"recurrent_kernel_init": _orthogonal_float32}
        layer_input = jnp.concatenate([embedded_token, state["attentional"]], axis=-1)
        carries = []
        for layer, carry in enumerate(state["carries"]):
            if layer > 0:
                layer_input = nn.Dropout(self.dropout_rate)(layer_input, deterministic=not train)
            lstm = nn.OptimizedLSTMCell(
                self.hidden_size, name=f"lstm_{layer}", **dtypes, **recurrent_init
            )
            carry, layer_input = lstm(carry, layer_input)
            carries.append(carry)
        top = layer_input
        # score(top, encoded_j) = top^T W encoded_j; projecting the query costs less than
        # projecting every encoder position.
        query = nn.Dense(encoded.shape[-1], use_bias=False, name="attention_query", **dtypes)(top)
        scores = jnp.einsum("bf,bsf->bs", query, encoded)
        scores = jnp.where(source_mask, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(encoded.dtype)
        context = jnp.einsum("bs,bsf->bf", weights, encoded)
        attentional = jnp.tanh(
            nn.Dense(self.hidden_size, use_bias=False, name="attentional", **dtypes)(
                jnp.concatenate([context, top], axis=-1)
            )
        )
        return {"carries": tuple(carries), "attentional": attentional}, attentional


class LSTMSeq2Seq(nn.Module):
    """Attentional LSTM encoder-decoder; same interface as the Transformer.

    The decoder starts from tanh of a linear map of the mean encoder output over real tokens
    (as in dl4mt/Nematus), which works for any encoder direction and depth.
    """

    input_vocab_size: int
    target_vocab_size: int
    embedding_size: int = 256
    hidden_size: int = 256
    num_layers: int = 2
    dropout_rate: float = 0.2
    bidirectional_encoder: bool = True
    dtype: Any = jnp.float32  # computation
    param_dtype: Any = jnp.float32

    def setup(self):
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.input_embedding = nn.Embed(self.input_vocab_size, self.embedding_size, **dtypes)
        self.target_embedding = nn.Embed(self.target_vocab_size, self.embedding_size, **dtypes)
        self.encoder = Encoder(
            self.hidden_size, self.num_layers, self.dropout_rate, self.bidirectional_encoder,
            **dtypes,
        )  # fmt: skip
        self.initial_state_projection = nn.Dense(2 * self.num_layers * self.hidden_size, **dtypes)
        # The decoder runs through time with nn.scan, both for teacher forcing and (for one
        # step) when decoding, so both use the same parameters.
        self.decoder = nn.scan(
            AttentionDecoderCell,
            variable_broadcast="params",
            split_rngs={"params": False, "dropout": True},
            in_axes=(1, nn.broadcast, nn.broadcast, nn.broadcast),
            out_axes=1,
        )(self.hidden_size, self.num_layers, self.dropout_rate, **dtypes)
        self.output_projection = nn.Dense(self.target_vocab_size, **dtypes)
        self.dropout = nn.Dropout(self.dropout_rate)

    def encode(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
        """`inputs [batch, input_length]` -> `[batch, input_length, hidden_size * directions]`."""
        embedded = self.dropout(self.input_embedding(inputs), deterministic=not train)
        lengths = jnp.sum(inputs != PAD_ID, axis=1)
        return self.encoder(embedded, lengths, train=train)

    def initialize_cache(
        self, encoded: jax.Array, inputs: jax.Array, max_length: int | None = None
    ) -> DecoderState:
        """The decoder state before the first token; `max_length` is unused (fixed-size state)."""
        del max_length
        source_mask = (inputs != PAD_ID)[..., None]
        mean_encoded = jnp.sum(encoded * source_mask, axis=1) / jnp.maximum(
            jnp.sum(source_mask, axis=1), 1
        )
        initial = jnp.tanh(self.initial_state_projection(mean_encoded))
        cells_and_hiddens = jnp.split(initial, 2 * self.num_layers, axis=-1)
        carries = tuple(
            (cells_and_hiddens[2 * layer], cells_and_hiddens[2 * layer + 1])
            for layer in range(self.num_layers)
        )
        return {"carries": carries, "attentional": jnp.zeros_like(cells_and_hiddens[0])}

    def _run_decoder(self, encoded, inputs, decoder_inputs, state, train):
        """Decoder over `decoder_inputs [batch, length]` -> (logits `[batch, length, vocab]`,
        state)."""
        embedded = self.dropout(self.target_embedding(decoder_inputs), deterministic=not train)
        state, attentional = self.decoder(state, embedded, encoded, inputs != PAD_ID, train)
        attentional = self.dropout(attentional, deterministic=not train)
        return self.output_projection(attentional), state

    def __call__(self, inputs: jax.Array, targets: jax.Array, *, train: bool) -> jax.Array:
        """Teacher forcing: `inputs [batch, input_length]`, `targets [batch, target_length]`
        -> logits `[batch, target_length, target_vocab_size]` predicting each target token."""
        encoded = self.encode(inputs, train=train)
        state = self.initialize_cache(encoded, inputs)
        logits, _ = self._run_decoder(encoded, inputs, shift_right(targets), state, train)
        return logits

    def decode_step(
        self, encoded: jax.Array, inputs: jax.Array, last_tokens: jax.Array, cache: DecoderState
    ) -> tuple[jax.Array, DecoderState]:
        """One decoding step: `last_tokens [batch]` -> (logits `[batch, target_vocab_size]`,
        state)."""
        logits, cache = self._run_decoder(encoded, inputs, last_tokens[:, None], cache, False)
        return logits[:, 0], cache
