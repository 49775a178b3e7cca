"""A GPT-style character Transformer (4 layers, width 128, context 128) on the KJV Bible."""

import ml_collections

from experiments.language_modeling.configs import _base


def get_config() -> ml_collections.ConfigDict:
    config = _base.get_config()
    config.tokenizer.type = "characters"
    config.sequence_length = 128
    config.model = _base.transformer(num_layers=4, width=128, num_heads=4, mlp_width=512,
                                     max_length=128)  # fmt: skip
    # Sized for about 15 minutes on two shared CPU cores; evaluated once, at the end.
    config.num_train_steps = 600
    config.eval_every_steps = 600
    config.checkpoint_every_steps = 200
    return config
