"""What every language-modeling config shares; each config file sets its tokenizer and model."""

import ml_collections

from experiments.language_modeling import corpora
from research.core.config import base_config


def transformer(
    num_layers: int = 4,
    width: int = 256,
    num_heads: int = 4,
    mlp_width: int = 1024,
    *,
    dropout_rate: float = 0.1,
    positions: str = "learned",
    max_length: int = 256,
) -> ml_collections.ConfigDict:
    """The `config.model` block of a pre-LN decoder-only Transformer with tied embeddings."""
    return ml_collections.ConfigDict(
        {
            "name": "transformer",
            "num_layers": num_layers,
            "width": width,
            "num_heads": num_heads,
            "mlp_width": mlp_width,
            "dropout_rate": dropout_rate,
            "attention_dropout_rate": 0.0,
            "positions": positions,  # "learned" or "rotary"
            "max_length": max_length,  # learned positions
            "tie_embeddings": True,
        }
    )


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.task = "language_modeling"
    # train.txt, valid.txt, test.txt (optionally .gz), one document or sentence a line:
    # `python -m experiments.language_modeling.corpora prepare_kjv` writes the default.
    config.data_dir = corpora.KJV_DIR
    config.eval_splits = ("valid", "test")
    config.max_train_bytes = 0  # > 0: train on the first lines of train.txt up to this size
    config.tokenizer = ml_collections.ConfigDict(
        {
            "type": "characters",  # characters, bytes or sentencepiece
            "path": "",  # a saved tokenizer (e.g. RUN/artifacts/tokenizer) instead of learning one
            "vocab_size": 0,  # sentencepiece only
            "model_type": "unigram",
            "cache_dir": "~/.cache/research/sentencepiece",
            "max_training_sentences": 2_000_000,
            "character_coverage": 1.0,
        }
    )
    config.sequence_length = 128  # predicted tokens per window (the model's context)
    # 0: evaluated windows side by side, so a window's first tokens are scored with little
    # context; S > 0: a window every S tokens scoring its last S, so every token but those of
    # the first window sees at least sequence_length - S earlier ones (evaluation costs
    # sequence_length / S times as much).
    config.eval_stride = 0
    config.bucket_boundaries = ()
    config.reference_ngram_order = 7  # the character n-gram reported beside the model; 0: none
    # Generated at every evaluation into examples.jsonl (split "samples").
    config.samples = ml_collections.ConfigDict(
        {
            "prompts": ("And God said", "The LORD is my shepherd", "Jesus answered and said"),
            "num_samples": 2,  # per prompt; 0: none
            "max_new_tokens": 100,
            "temperature": 0.8,
            "top_k": 0,
            "top_p": 0.95,
        }
    )
    config.optimizer = "adamw"
    config.learning_rate = 2e-3
    config.schedule = "warmup_cosine"
    config.warmup_steps = 50
    config.weight_decay = 0.01
    config.grad_clip_norm = 1.0
    config.batch_size = 32
    config.eval_batch_size = 64
    config.log_every_steps = 50
    return config
