"""A small Transformer on SCAN: `scan_transformer.py:split=simple|length|addprim_jump|...`."""

import ml_collections

from research.config import base_config


def parse_split(argument: str | None) -> str:
    """`split=<name>` (or just `<name>`) -> name; SCAN's `simple` split by default."""
    if not argument:
        return "simple"
    return argument.split("=", 1)[1] if argument.startswith("split=") else argument


def get_config(argument: str | None = None) -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "seq2seq"
    config.dataset = "scan"
    config.scan_split = parse_split(argument)
    config.source_language = "commands"
    config.target_language = "actions"
    config.eval_splits = ()  # () = every split besides train
    config.tokenizer = ml_collections.ConfigDict(
        {
            "type": "word",
            "vocab_size": 0,  # sentencepiece only
            "model_type": "unigram",
            "cache_dir": "~/.cache/research/sentencepiece",
            "max_training_sentences": 2_000_000,
            # Characters SentencePiece must cover; 0.9995 is usual for Chinese and Japanese.
            "character_coverage": 1.0,
        }
    )
    config.max_input_length = 10  # at most 9 words + EOS
    config.max_target_length = 49  # at most 48 actions + EOS
    # Padded lengths of length-bucketed batches, e.g. (8, 16, 24, 32); () pads every batch to
    # the maximum lengths above.
    config.bucket_boundaries = ()
    config.model = ml_collections.ConfigDict(
        {
            "name": "transformer",
            "num_layers": 2,
            "width": 128,
            "num_heads": 4,
            "mlp_width": 256,
            "dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "pre_layer_norm": True,
            "share_embeddings": False,
            "positions": "sinusoidal",
            "max_length": 64,
        }
    )
    config.label_smoothing = 0.0
    config.bleu_tokenizer = ""  # sacreBLEU's; "" = zh for Chinese targets, 13a otherwise
    config.decode = ml_collections.ConfigDict(
        {"beam_size": 1, "length_penalty": 0.6, "max_length": 49}
    )
    config.batch_size = 128
    config.eval_batch_size = 512
    config.optimizer = "adamw"
    config.learning_rate = 1e-3
    config.weight_decay = 0.01
    config.grad_clip_norm = 1.0
    config.schedule = "warmup_cosine"
    config.warmup_steps = 500
    config.num_train_steps = 4000
    config.eval_every_steps = 2000
    config.log_every_steps = 100
    config.checkpoint_every_steps = 1000
    return config
