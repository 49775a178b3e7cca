"""A two-layer character LSTM (embedding 64, hidden 256) on the King James Bible."""

import ml_collections

from experiments.language_modeling.configs import _base


def get_config() -> ml_collections.ConfigDict:
    config = _base.get_config()
    config.tokenizer.type = "characters"
    config.sequence_length = 128
    config.model = ml_collections.ConfigDict(
        {
            "name": "lstm",
            "embedding_size": 64,
            "hidden_size": 256,
            "num_layers": 2,
            "dropout_rate": 0.1,
            "tie_embeddings": False,
        }
    )
    # Sized for about 15 minutes on two shared CPU cores; evaluated once, at the end.
    config.num_train_steps = 400
    config.eval_every_steps = 400
    config.checkpoint_every_steps = 200
    return config
