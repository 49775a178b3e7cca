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
    # Sized for one hour on two otherwise idle AMD EPYC cores (about 1.7 steps/s, estimated from
    # the CPU time of a step): 6,000 steps of 4,096 characters, about 7 passes over the
    # train split, the cosine decaying to 0 at the end.
    config.warmup_steps = 200
    config.num_train_steps = 6_000
    config.eval_every_steps = 3_000
    config.checkpoint_every_steps = 1_000
    config.log_every_steps = 250
    return config
