"""A GPT-style character Transformer (4 layers, width 128, context 128) on the KJV Bible."""

import ml_collections

from experiments.language_modeling.configs import _base


def get_config() -> ml_collections.ConfigDict:
    config = _base.get_config()
    config.tokenizer.type = "characters"
    config.sequence_length = 128
    config.model = _base.transformer(num_layers=4, width=128, num_heads=4, mlp_width=512,
                                     max_length=128)  # fmt: skip
    # Sized for one hour on two otherwise idle AMD EPYC cores (about 1.4 steps/s, estimated from
    # the CPU time of a step): 5,000 steps of 4,096 characters, about 5 passes over the
    # train split, the cosine decaying to 0 at the end.
    config.warmup_steps = 200
    config.num_train_steps = 5_000
    config.eval_every_steps = 2_500
    config.checkpoint_every_steps = 1_000
    config.log_every_steps = 250
    return config
