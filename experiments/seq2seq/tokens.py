"""The reserved token ids every seq2seq tokenizer, model and decoder agrees on."""

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
NUM_RESERVED_IDS = 4
