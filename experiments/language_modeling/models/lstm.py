"""A stacked-LSTM language model; with `decode=True` its state is carried in the "cache"."""

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


class LSTMLM(nn.Module):
    """`__call__(tokens [batch, length])` -> logits `[batch, length, vocab_size]` (float32).

    Embedding, `num_layers` LSTMs with dropout between them, and an output layer that is
    either its own Dense or the embedding table (`tie_embeddings`; a Dense projection maps the
    hidden state to the embedding size when the two differ). With `decode=True` each call
    starts from the (cell, hidden) state the previous call ended in.
    """

    vocab_size: int
    embedding_size: int = 256
    hidden_size: int = 512
    num_layers: int = 2
    dropout_rate: float = 0.2
    tie_embeddings: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, *, train: bool, decode: bool = False) -> jax.Array:
        types = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        embed = nn.Embed(self.vocab_size, self.embedding_size, **types, name="token_embedding")
        hidden = dropout(embed(tokens))
        batch_size = tokens.shape[0]
        for number in range(self.num_layers):
            zeros = lambda: (
                jnp.zeros((batch_size, self.hidden_size), self.dtype),
                jnp.zeros((batch_size, self.hidden_size), self.dtype),
            )
            carry = zeros()
            if decode:
                # The first call (model.init) only sizes the state; later calls carry it on.
                initialized = self.has_variable("cache", f"state_{number}")
                state = self.variable("cache", f"state_{number}", zeros)
                carry = state.value
            cell = nn.OptimizedLSTMCell(self.hidden_size, **types, name=f"lstm_{number}")
            carry, hidden = nn.RNN(cell, return_carry=True, name=f"rnn_{number}")(
                hidden, initial_carry=carry
            )
            if decode and initialized:
                state.value = carry
            hidden = dropout(hidden)
        if self.tie_embeddings:
            if self.hidden_size != self.embedding_size:
                hidden = nn.Dense(self.embedding_size, **types, name="projection")(hidden)
            logits = embed.attend(hidden)
        else:
            logits = nn.Dense(self.vocab_size, **types, name="output")(hidden)
        return logits.astype(jnp.float32)
