"""A GPT-style Transformer over a 2,000-piece SentencePiece vocabulary of the King James Bible."""

import ml_collections

from experiments.language_modeling.configs import _base


def get_config() -> ml_collections.ConfigDict:
    config = _base.get_config()
    config.tokenizer.type = "sentencepiece"
    config.tokenizer.vocab_size = 2000
    config.sequence_length = 64  # about 240 characters
    # Each test token is scored once, after at least 48 tokens of context (4x evaluation cost).
    config.eval_stride = 16
    config.model = _base.transformer(num_layers=4, width=128, num_heads=4, mlp_width=512,
                                     positions="rotary", max_length=64)  # fmt: skip
    config.samples.max_new_tokens = 40
    # Sized for one hour on two otherwise idle AMD EPYC cores (about 3 steps/s): 10,000 steps of
    # 2,048 tokens, about 20 passes over the 1M-token train split, the cosine decaying to 0 at
    # the end. At this budget a model of about a million parameters fits the compute best.
    config.warmup_steps = 200
    config.num_train_steps = 10_000
    config.eval_every_steps = 2_500
    config.checkpoint_every_steps = 1_000
    config.log_every_steps = 250
    return config
