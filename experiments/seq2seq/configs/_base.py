"""What every seq2seq config shares; each config file sets its data, model and schedule."""

import ml_collections

from research.core.config import base_config


def transformer(
    num_layers: int,
    width: int,
    num_heads: int,
    mlp_width: int,
    *,
    dropout_rate: float = 0.1,
    share_embeddings: bool = False,
    max_length: int = 64,
) -> ml_collections.ConfigDict:
    """The `config.model` block of a pre-LN Transformer with sinusoidal positions."""
    return ml_collections.ConfigDict(
        {
            "name": "transformer",
            "num_layers": num_layers,
            "width": width,
            "num_heads": num_heads,
            "mlp_width": mlp_width,
            "dropout_rate": dropout_rate,
            "attention_dropout_rate": 0.1,
            "pre_layer_norm": True,
            "share_embeddings": share_embeddings,
            "positions": "sinusoidal",
            "max_length": max_length,
        }
    )


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "seq2seq"
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
    # Padded lengths of length-bucketed batches, e.g. (8, 16, 24, 32); () pads every batch to
    # max_input_length and max_target_length.
    config.bucket_boundaries = ()
    config.label_smoothing = 0.0
    config.bleu_tokenizer = ""  # sacreBLEU's; "" = zh for Chinese targets, 13a otherwise
    config.optimizer = "adamw"
    config.learning_rate = 1e-3
    config.schedule = "warmup_cosine"
    config.grad_clip_norm = 1.0
    config.log_every_steps = 100
    return config
