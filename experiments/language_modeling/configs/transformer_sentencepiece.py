"""A GPT-style Transformer over a 2,000-piece SentencePiece vocabulary of the King James Bible."""

import ml_collections

from experiments.language_modeling.configs import _base


def get_config() -> ml_collections.ConfigDict:
    config = _base.get_config()
    config.tokenizer.type = "sentencepiece"
    config.tokenizer.vocab_size = 2000
    config.sequence_length = 64  # about 250 characters
    config.model = _base.transformer(num_layers=4, width=128, num_heads=4, mlp_width=512,
                                     positions="rotary", max_length=64)  # fmt: skip
    config.samples.max_new_tokens = 40
    # Sized for about 15 minutes on two shared CPU cores; evaluated once, at the end.
    config.num_train_steps = 600
    config.eval_every_steps = 600
    config.checkpoint_every_steps = 200
    return config
