"""The classic baseline on SCAN: an attentional LSTM, `scan_lstm.py:split=<name>`."""

import ml_collections

from experiments.seq2seq.configs import scan_transformer


def get_config(argument: str | None = None) -> ml_collections.ConfigDict:
    config = scan_transformer.get_config(argument)
    config.model = ml_collections.ConfigDict(
        {
            "name": "lstm",
            "embedding_size": 128,
            "hidden_size": 200,
            "num_layers": 2,
            "dropout_rate": 0.5,
            "bidirectional_encoder": True,
        }
    )
    config.learning_rate = 1e-3
    return config
