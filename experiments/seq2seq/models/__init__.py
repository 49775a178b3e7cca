"""Seq2seq models with one interface: `__call__`, `encode`, `initialize_cache`, `decode_step`."""
