"""The library: everything a run needs that is not one task's data, model, loss or metrics.

It knows no task and imports nothing from `experiments/`. By concern:

- `research.core`: the training loop and its contracts (config, Task, data batches and
  training sources, steps, optimizers, evaluation, the trainer), and the text tools that
  the text tasks share (`text`: reserved token ids, UTF-8 lines, SentencePiece).
- `research.runtime`: where a run executes and persists: the device mesh over every host
  (`parallel`, the only module that knows about devices and processes), the workdir,
  checkpoints, preemption and reproduction.
- `research.deploy`: export, load, predict and serve a trained model.
- `research.compare`: sweeps over configs and reports that compare runs.
- `research.errors`: the one-sentence errors every command prints for bad input.
"""
