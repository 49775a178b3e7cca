"""A small Transformer on SCAN: `scan_transformer.py:split=simple|length|addprim_jump|...`."""

import ml_collections

from experiments.seq2seq.configs import _base


def parse_split(argument: str | None) -> str:
    """`split=<name>` (or just `<name>`) -> name; SCAN's `simple` split by default."""
    if not argument:
        return "simple"
    return argument.split("=", 1)[1] if argument.startswith("split=") else argument


def get_config(argument: str | None = None) -> ml_collections.ConfigDict:
    config = _base.get_config()
    config.dataset = "scan"
    config.scan_split = parse_split(argument)
    config.source_language = "commands"
    config.target_language = "actions"
    config.max_input_length = 10  # at most 9 words + EOS
    config.max_target_length = 49  # at most 48 actions + EOS
    config.model = _base.transformer(num_layers=2, width=128, num_heads=4, mlp_width=256)
    config.decode = ml_collections.ConfigDict(
        {"beam_size": 1, "length_penalty": 0.6, "max_length": 49}
    )
    config.batch_size = 128
    config.eval_batch_size = 512
    config.weight_decay = 0.01
    config.warmup_steps = 500
    config.num_train_steps = 4000
    config.eval_every_steps = 2000
    config.checkpoint_every_steps = 1000
    return config
