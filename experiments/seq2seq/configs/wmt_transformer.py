"""A Transformer (base-sized) on WMT German -> English through tfds, prepared in data_dir.

`wmt_transformer.py:wmt17` picks wmt17_translate/de-en; the default is wmt14_translate/de-en.
"""

import ml_collections

from experiments.seq2seq.configs import translate_folder_transformer


def get_config(argument: str | None = None) -> ml_collections.ConfigDict:
    config = translate_folder_transformer.get_config()
    year = argument or "wmt14"
    config.dataset = f"{year}_translate/de-en"
    config.data_dir = "~/tensorflow_datasets"
    config.eval_splits = ("valid", "test")
    config.tokenizer.vocab_size = 32000
    config.tokenizer.max_training_sentences = 2_000_000  # SentencePiece holds them in memory
    config.max_input_length = 128
    config.max_target_length = 128
    config.model.num_layers = 6
    config.model.width = 512
    config.model.num_heads = 8
    config.model.mlp_width = 2048
    config.model.max_length = 128
    config.decode.max_length = 128
    config.batch_size = 256
    config.learning_rate = 7e-4
    config.warmup_steps = 4000
    config.num_train_steps = 100000
    config.eval_every_steps = 10000
    config.checkpoint_every_steps = 2000
    return config
