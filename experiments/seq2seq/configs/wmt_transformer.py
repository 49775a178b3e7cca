"""A Transformer (base-sized) on WMT German -> English through tfds, prepared in data_dir.

`wmt_transformer.py:wmt17` picks wmt17_translate/de-en; the default is wmt14_translate/de-en.
"""

import ml_collections

from experiments.seq2seq.configs import _base


def get_config(argument: str | None = None) -> ml_collections.ConfigDict:
    config = _base.get_config()
    config.dataset = f"{argument or 'wmt14'}_translate/de-en"
    config.data_dir = "~/tensorflow_datasets"
    config.source_language = "de"
    config.target_language = "en"
    config.eval_splits = ("valid", "test")
    config.tokenizer.type = "sentencepiece"
    config.tokenizer.vocab_size = 32000
    config.tokenizer.max_training_sentences = 2_000_000  # SentencePiece holds them in memory
    config.max_input_length = 128
    config.max_target_length = 128
    config.bucket_boundaries = tuple(range(8, 129, 8))
    config.model = _base.transformer(
        num_layers=6, width=512, num_heads=8, mlp_width=2048, dropout_rate=0.2,
        share_embeddings=True, max_length=128,
    )  # fmt: skip
    config.label_smoothing = 0.1
    config.decode = ml_collections.ConfigDict(
        {"beam_size": 4, "length_penalty": 0.6, "max_length": 128}
    )
    config.batch_size = 256
    config.eval_batch_size = 256
    config.learning_rate = 7e-4
    config.adam_beta2 = 0.98
    config.weight_decay = 0.0001
    config.warmup_steps = 4000
    config.num_train_steps = 100000
    config.eval_every_steps = 10000
    config.checkpoint_every_steps = 2000
    config.keep_checkpoints = 8
    return config
