"""A Transformer on a folder of parallel text (default: Multi30k German -> English).

`data_dir` is the folder holding `train.<lang>`, `val.<lang>` and `test*.<lang>` (optionally
gzipped), by default where `python -m experiments.seq2seq.multi30k` prepares Multi30k; a
SentencePiece vocabulary shared by both languages is trained on its train split.
"""

import ml_collections

from experiments.seq2seq import multi30k
from experiments.seq2seq.configs import _base


def get_config() -> ml_collections.ConfigDict:
    config = _base.get_config()
    config.dataset = "folder"
    config.data_dir = multi30k.DEFAULT_DIR  # python -m experiments.seq2seq.multi30k fills it
    config.source_language = "de"
    config.target_language = "en"
    config.eval_splits = ("valid", "test_2016_flickr", "test_2017_flickr")
    config.tokenizer.type = "sentencepiece"
    config.tokenizer.vocab_size = 8000
    config.max_input_length = 64
    config.max_target_length = 64
    # Batches padded to the nearest of these lengths (Multi30k sentences average 16 pieces).
    config.bucket_boundaries = tuple(range(4, 33, 2)) + tuple(range(36, 65, 4))
    # 29,000 sentence pairs: regularize more than on large data.
    config.model = _base.transformer(
        num_layers=3, width=256, num_heads=4, mlp_width=1024, dropout_rate=0.2,
        share_embeddings=True,
    )  # fmt: skip
    config.label_smoothing = 0.1
    config.decode = ml_collections.ConfigDict(
        {"beam_size": 4, "length_penalty": 0.6, "max_length": 64}
    )
    config.batch_size = 128
    config.eval_batch_size = 256
    config.adam_beta2 = 0.98
    config.weight_decay = 0.0001
    config.warmup_steps = 400
    config.num_train_steps = 4000  # 17.7 epochs of 226 batches
    config.eval_every_steps = 2000
    config.checkpoint_every_steps = 250
    config.keep_checkpoints = 8  # the last eight can be averaged
    return config
